"""Token accounting: exact attribution, marginal savings, injected default system prompts."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona.aer.sections import parse_prompt
from persona.aer.tokens import (
    aer,
    attribute_tokens,
    build_messages,
    count_tokens,
    detect_default_system,
    marginal_savings,
    render_chat,
    require_chat_tokenizer,
    resolve_context_window,
    token_report,
)
from persona.errors import InvalidInput

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DEFAULT = "You are a helpful AI assistant named Tiny, trained by nobody"
# SmolLM2's shape: a default system prompt when the chat does not start with one.
CHATML_DEFAULT = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT + "<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Injects the default for an empty system message too.
CHATML_DEFAULT_EMPTY = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT + "<|im_end|>\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'system' and not message['content'] %}"
    "{{ '<|im_start|>system\n" + DEFAULT + "<|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
)
CHATML_TRIM = CHATML.replace("message['content']", "message['content'] | trim")
CHATML_UPPER = CHATML.replace("message['content']", "message['content'] | upper")

PROMPT = (
    "# Soul\n\n"
    "## Identity\nYour name is Timmy. You are a cheerful assistant.\n\n"
    "## Values\nNever share passwords, keys or secrets.\n\n"
    "## Task\nHelp with questions about the garden and the home.\n"
)


def load(tokenizer_dir: Path, template: str = CHATML) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir: Path) -> Any:
    return load(tiny_tokenizer_dir)


def test_attribution_sums_exactly_to_the_rendered_total(tok: Any) -> None:
    doc = parse_prompt(PROMPT)
    att = attribute_tokens(tok, doc)
    rendered = render_chat(
        tok, [{"role": "system", "content": PROMPT}, {"role": "user", "content": ""}]
    )
    assert att.rendered == rendered
    assert att.total == len(tok(rendered, add_special_tokens=False)["input_ids"])
    assert sum(att.sections.values()) + att.overhead == att.total
    assert list(att.sections) == ["preamble", "identity", "values", "task"]
    # Sections end in a newline and start at a line, so the byte-level pre-tokenizer
    # never merges across them: each count equals tokenizing the section alone.
    for s in doc.sections:
        assert att.sections[s.name] == count_tokens(tok, s.text), s.name
    # overhead is exactly the template's own text
    skeleton = render_chat(
        tok, [{"role": "system", "content": ""}, {"role": "user", "content": ""}]
    )
    assert att.overhead == count_tokens(tok, skeleton)
    assert (
        att.prompt_span is not None and rendered[att.prompt_span[0] : att.prompt_span[1]] == PROMPT
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Identity", "Values", "Style", "Tools", "Memory", "Notes"]),
            st.text(max_size=40),
        ),
        min_size=1,
        max_size=4,
        unique_by=lambda t: t[0],
    )
)
def test_attribution_is_exact_on_arbitrary_text(tok: Any, parts: list[tuple[str, str]]) -> None:
    text = "".join(
        f"## {title}\n{body}" + ("" if body.endswith("\n") else "\n") for title, body in parts
    )
    try:
        doc = parse_prompt(text)
    except InvalidInput:
        return  # bodies that contain their own duplicate '## X' lines
    for drop in [set(), {doc.names[0]}]:
        att = attribute_tokens(tok, doc, drop)
        assert sum(att.sections.values()) + att.overhead == att.total
        assert att.total == count_tokens(tok, att.rendered)
        assert all(v >= 0 for v in att.sections.values()) and att.overhead >= 0


def test_marginal_savings_match_independent_renders(tok: Any) -> None:
    doc = parse_prompt(PROMPT)
    savings = marginal_savings(tok, doc)

    def total(system: str) -> int:
        msgs = build_messages(system, [{"role": "user", "content": ""}])
        return count_tokens(tok, tok.apply_chat_template(msgs, tokenize=False))

    full = total(PROMPT)
    for s in doc.sections:
        without = PROMPT[: s.start] + PROMPT[s.end :]
        assert savings[s.name] == full - total(without)
        assert savings[s.name] == attribute_tokens(tok, doc).sections[s.name]
    assert all(v > 0 for v in savings.values())


def test_default_system_prompt_is_detected_and_measured(tiny_tokenizer_dir: Path) -> None:
    plain = detect_default_system(load(tiny_tokenizer_dir))
    assert plain.when_absent is None and plain.when_empty is None and not plain.injects

    tok = load(tiny_tokenizer_dir, CHATML_DEFAULT)
    found = detect_default_system(tok)
    assert found.when_absent == DEFAULT
    assert found.when_empty is None
    assert found.tokens_when_absent == count_tokens(tok, DEFAULT)

    both = detect_default_system(load(tiny_tokenizer_dir, CHATML_DEFAULT_EMPTY))
    assert both.when_absent == DEFAULT and both.when_empty == DEFAULT


def test_no_prompt_baseline_is_measured_as_the_template_renders_it(
    tiny_tokenizer_dir: Path,
) -> None:
    tok = load(tiny_tokenizer_dir, CHATML_DEFAULT)
    doc = parse_prompt("## Identity\nYou are Timmy.\n")
    ident = count_tokens(tok, "## Identity\nYou are Timmy.\n")
    default = count_tokens(tok, DEFAULT)

    # Dropping the only section sends no system message: the template injects its
    # default, so the saving is the section minus the default (here negative).
    omit = token_report(tok, doc, 1000)
    assert omit.section("identity").tokens == ident
    assert omit.section("identity").saving == ident - default < 0
    assert omit.empty_total == omit.total - ident + default
    assert any("injects a default system prompt" in n and DEFAULT in n for n in omit.notes)

    # Sending an empty system message instead avoids the injection on this template.
    empty = token_report(tok, doc, 1000, empty_system="empty")
    assert empty.section("identity").saving == ident
    assert not any("injects" in n for n in empty.notes)
    assert attribute_tokens(tok, doc, {"identity"}).sections == {}


def test_token_report_aer_and_alignment(tok: Any) -> None:
    doc = parse_prompt(PROMPT)
    rep = token_report(tok, doc, 2048)
    assert rep.c_alignment == rep.section("identity").tokens + rep.section("values").tokens
    assert rep.aer == pytest.approx(1 - rep.c_alignment / 2048)
    assert rep.no_alignment_total == rep.total - rep.c_alignment
    assert any("kinds inferred" in n for n in rep.notes)


def test_trimming_template_is_handled_and_rewriting_one_refused(tiny_tokenizer_dir: Path) -> None:
    text = "\n\n## Identity\nYou are Timmy.\n\n## Values\nNo secrets.\n\n\n"
    doc = parse_prompt(text)
    tok = load(tiny_tokenizer_dir, CHATML_TRIM)
    att = attribute_tokens(tok, doc)
    assert sum(att.sections.values()) + att.overhead == att.total
    assert att.sections["identity"] == count_tokens(tok, doc.section("identity").text)
    assert att.sections["values"] == count_tokens(tok, "## Values\nNo secrets.")
    with pytest.raises(InvalidInput, match="rewrites the system prompt"):
        attribute_tokens(load(tiny_tokenizer_dir, CHATML_UPPER), doc)


def test_tokenizer_requirements(tiny_tokenizer_dir: Path) -> None:
    tok = load(tiny_tokenizer_dir)
    tok.chat_template = None
    with pytest.raises(InvalidInput, match="no chat template"):
        require_chat_tokenizer(tok)
    with pytest.raises(InvalidInput, match="not a fast tokenizer"):
        require_chat_tokenizer(SimpleNamespace(is_fast=False, chat_template="x"))
    bad = load(tiny_tokenizer_dir, "{{ raise_exception('System role not supported') }}")
    with pytest.raises(InvalidInput, match="cannot render"):
        render_chat(bad, [{"role": "system", "content": "x"}])


def test_build_messages_empty_system_policy() -> None:
    turns = [{"role": "user", "content": "hi"}]
    assert build_messages("  \n", turns) == turns
    assert build_messages("  \n", turns, "empty") == [{"role": "system", "content": ""}, *turns]
    assert build_messages("S", turns)[0] == {"role": "system", "content": "S"}


def test_context_window_and_aer() -> None:
    assert resolve_context_window(4096, {"max_position_embeddings": 8192}) == 4096
    assert resolve_context_window(None, {"max_position_embeddings": 8192}) == 8192
    assert resolve_context_window(None, SimpleNamespace(max_position_embeddings=2048)) == 2048

    class Multi:
        def get_text_config(self) -> Any:
            return SimpleNamespace(max_position_embeddings=32768)

    assert resolve_context_window(None, Multi()) == 32768
    # a tokenizer's model_max_length is never consulted
    with pytest.raises(InvalidInput, match="no max_position_embeddings") as info:
        resolve_context_window(None, SimpleNamespace(model_max_length=10**30))
    assert "--context-window" in info.value.hint
    with pytest.raises(InvalidInput):
        resolve_context_window(0, None)
    assert aer(0, 100) == 1.0
    assert aer(25, 100) == pytest.approx(0.75)
    with pytest.raises(InvalidInput):
        aer(1, 0)
