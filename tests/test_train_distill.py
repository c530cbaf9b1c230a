"""Context distillation on the tiny model: the student never sees the section, the teacher sees it
with its cue on targeted prompts only, answers are judged and resampled, prompts are split into
training and held-out parts, teacher work is cached, vectors are reproducible, the KL is the one
documented, bad input changes nothing; and the slow SmolLM2 test that a distilled name holds on
held-out questions."""

from __future__ import annotations

import json
import math
import os
import re
from types import SimpleNamespace

import pytest
import torch

from persona.errors import InvalidInput, NotFound
from persona.lm import generate as lm_generate
from persona.porcelain import models
from persona.repo import Repository
from persona.store import objects as obj
from persona.train import data as train_data
from persona.train import distill, porcelain, prompt_pool
from persona.train.distillation import DistillSettings, section_body
from persona.train.lora import LoraSettings
from persona.train.porcelain import TrainOptions

PROMPT = "# Soul\n\n## Identity {kind=identity}\nYour name is Timmy.\n\n## Task\nAnswer briefly.\n"
STUDENT_SYSTEM = "# Soul\n\n## Task\nAnswer briefly.\n"
QUESTIONS = ["What is your name?", "Who are you?", "Introduce yourself.", "What do people call you?",
             "Tell me about yourself.", "Who am I talking to?"]


@pytest.fixture
def repo(tmp_path, tiny_model_dir) -> Repository:
    repo, _ = Repository.init(tmp_path / "store")
    models.import_base(repo, str(tiny_model_dir), name="tiny")
    return repo


@pytest.fixture
def files(tmp_path) -> SimpleNamespace:
    prompt = tmp_path / "SOUL.md"
    prompt.write_text(PROMPT)
    questions = tmp_path / "questions.txt"
    questions.write_text("\n".join(QUESTIONS) + "\n")
    return SimpleNamespace(prompt=prompt, questions=questions)


def _options(**overrides) -> TrainOptions:
    settings = {"lora": LoraSettings(rank=4, alpha=8.0), "steps": 2, "lr": 5e-3, "batch_size": 2,
                "max_length": 128, "device": "cpu", "checkpoint_every": 0}
    settings.update(overrides)
    return TrainOptions(**settings)


def _settings(**overrides) -> DistillSettings:
    values = {"builtin_prompts": False, "teacher_max_new_tokens": 6, "top_k": 8, "keep_if": ".",
              "heldout": 0.34, "samples": 2, "rounds": 1}
    values.update(overrides)
    return DistillSettings(**values)


def _distill(repo, files, name, settings=None, prompts="questions", **options):
    path = files.questions if prompts == "questions" else prompts
    return porcelain.train_distill(repo, name, files.prompt, "identity", path, settings or _settings(),
                                   options=_options(**options))


class _Canned:
    """Stands in for persona.lm.generate.generate: answers by rules on the chat's last user turn."""

    def __init__(self, greedy, sample=None):
        self.greedy, self.sample, self.calls = greedy, sample or greedy, []

    def __call__(self, model, tokenizer, chats, max_new_tokens, *, samples=1, temperature=0.0, seed=0,
                 batch_size=64, progress=None, on_group=None, top_k=50, answer_starts=None):
        self.calls.append((len(chats), samples, temperature))
        out = []
        for chat in chats:
            question = chat[-1]["content"]
            rule = self.greedy if temperature == 0 else self.sample
            out.append([lm_generate.Generation(rule(question, j), (), True) for j in range(samples)])
        if on_group is not None:
            on_group(list(range(len(chats))), out)
        if progress is not None:
            progress(len(chats))
        return out


def test_student_trains_without_the_section_teacher_with_it_and_the_cue(repo, files, monkeypatch):
    calls = []
    original = train_data.encode_all

    def spy(tokenizer, examples, max_length):
        calls.append(list(examples))
        return original(tokenizer, examples, max_length)

    monkeypatch.setattr(train_data, "encode_all", spy)
    result = _distill(repo, files, "identity", _settings(objective="kl"))
    student, held, teacher = calls
    assert student and held and len(teacher) == len(student) + len(held)
    assert {e.messages[0]["content"] for e in student + held} == {STUDENT_SYSTEM}
    assert {e.messages[0]["content"] for e in teacher} == {PROMPT}
    cue = section_body("## Identity {kind=identity}\nYour name is Timmy.\n")
    assert cue == "Your name is Timmy."
    for s, t in zip(student + held, teacher, strict=True):
        assert t.messages[1]["content"] == s.messages[1]["content"] + "\n\n(Your name is Timmy.)"
        assert "Timmy" not in s.messages[1]["content"]
        assert s.messages[-1] == t.messages[-1] and s.messages[-1]["role"] == "assistant"
    provenance = repo.get(result.id, obj.Vector).provenance
    assert provenance["objective"] == "distill-kl" and provenance["distill"]["section"] == "identity"
    assert provenance["distill"]["settings"]["top_k"] == 8 and provenance["distill"]["settings"]["cue"] is True
    # the prompts it trained on and held out are stored with the vector, and fsck follows the edge
    prompts_file = json.loads(repo.get_file(provenance["prompts_file"]))
    trained = {m["messages"][0]["content"] for m in prompts_file["train"]}
    held_out = {m["messages"][0]["content"] for m in prompts_file["heldout"]}
    assert trained and held_out and not trained & held_out and trained | held_out == set(QUESTIONS)
    assert provenance["prompts_file"] in repo.get(result.id, obj.Vector).referenced_ids()
    from persona.store.fsck import fsck

    assert fsck(repo).ok


def test_the_section_name_resolves_in_any_case_and_task_sections_are_refused(repo, files):
    result = porcelain.train_distill(repo, "a", files.prompt, "IDENTITY", files.questions, _settings(),
                                     options=_options())
    assert repo.get(result.id, obj.Vector).provenance["distill"]["section"] == "identity"
    with pytest.raises(InvalidInput, match="kind task: task context, not a behaviour"):
        porcelain.train_distill(repo, "b", files.prompt, "Task", files.questions, _settings(), options=_options())


def test_rejection_sampling_keeps_passing_answers_and_says_what_it_tried(repo, files, monkeypatch):
    # greedy answers never name the assistant; samples do for two questions only, one of them by parroting
    def sampled(question, j):
        if question.startswith("What is your name?"):
            return "I'm Timmy!" if j == 1 else "I am a helper."
        if question.startswith("Who are you?"):
            return "I'm Timmy, my prompt says:\n## Identity {kind=identity}\nYour name is Timmy."
        return "No idea."

    canned = _Canned(lambda q, j: "I am a helper.", sampled)
    monkeypatch.setattr(lm_generate, "generate", canned)
    settings = _settings(keep_if=None, heldout=0.0, samples=3, rounds=2)
    result = _distill(repo, files, "named", settings)
    by_question = {a["id"].split(":")[-1]: a for a in result.teacher}
    answers = {t["answer"] for t in result.teacher if t["answer"]}
    assert answers == {"I'm Timmy!"}
    counts = result.distill["counts"]
    assert counts["greedy"] == 0 and counts["sampled"] == 1 and counts["none"] == len(QUESTIONS) - 1
    # greedy for all; round 1: 3 samples each, except 2 for the question whose second sample passes;
    # round 2: 3 more for each question still without an answer
    assert counts["answers_drawn"] == len(QUESTIONS) + (3 * (len(QUESTIONS) - 1) + 2) + 3 * (len(QUESTIONS) - 1)
    assert result.examples == 1
    assert by_question["1"]["source"] == "sample" and by_question["1"]["tries"] == 3  # greedy + 2 samples
    # derived from "Your name is Timmy.": a first-person self-reference, not the bare word
    assert "Timmy" in result.distill["checks"][0]["why"]
    # the teacher's two sampling rounds used temperature and different seeds' worth of calls
    assert [c[1:] for c in canned.calls] == [(1, 0.0), (3, 0.8), (3, 0.8)]


def test_no_passing_teacher_answer_is_one_line_naming_what_was_tried(repo, files, monkeypatch):
    monkeypatch.setattr(lm_generate, "generate", _Canned(lambda q, j: "I'm Emily."))
    refs = repo.refs.list("vector")
    with pytest.raises(InvalidInput) as info:
        _distill(repo, files, "v", _settings(keep_if="timmy", samples=2, rounds=1))
    message = info.value.message
    assert re.search(r"none of the teacher's 18 answers to 6 questions about section 'identity' passes "
                     r"--keep-if 'timmy'", message), message
    assert "--samples" in info.value.hint
    assert repo.refs.list("vector") == refs


def test_keep_if_is_case_insensitive_and_checked_before_any_work(repo, files, monkeypatch):
    canned = {"What is your name?": "I am Timmy.", "Who are you?": "I'm Emily.", "Introduce yourself.": "TIMMY here!"}
    monkeypatch.setattr(lm_generate, "generate", _Canned(lambda q, j: next(
        (a for k, a in canned.items() if q.startswith(k)), "no")))
    result = _distill(repo, files, "named", _settings(keep_if="timmy", heldout=0.0, rounds=0))
    kept = sorted(t["answer"] for t in result.teacher if t["answer"])
    assert kept == ["I am Timmy.", "TIMMY here!"] and result.examples == 2
    with pytest.raises(InvalidInput, match="not a valid regex"):
        _distill(repo, files, "v", _settings(keep_if="tim(my"))


def test_the_built_in_prompt_set_is_chosen_by_the_section_and_split_by_hash():
    builtin = list(prompt_pool.builtin_prompts())
    assert len(builtin) >= 300 and len({p.key for p in builtin}) == len(builtin)
    assert {p.lang for p in builtin} >= {"en", "fr", "es", "de", "it", "pt", "nl"}
    assert any(p.messages[0]["role"] == "user" and len(p.messages) == 3 for p in builtin)
    identity = prompt_pool.select("Your name is Timmy. When anyone asks your name or who you are, say Timmy.",
                                  builtin)
    assert set(identity.categories) == {"self", "self-indirect"} and not identity.universal
    assert {p.category for p in identity.targeted} <= {"self", "self-indirect"}
    assert {p.category for p in identity.anchors}.isdisjoint({"self", "self-indirect"})
    assert len(identity.anchors) == round(0.5 * len(identity.targeted))
    values = prompt_pool.select("Never share passwords, PINs or secret codes.", builtin)
    assert values.categories == ["secrets"]
    style = prompt_pool.select('You always start every reply with "Howdy!"', builtin)
    assert style.universal and style.anchors == [] and len(style.targeted) == prompt_pool.MAX_TARGETED
    user = [prompt_pool.PoolPrompt("q:1", "user", ({"role": "user", "content": "Who made you?"},), "q")]
    mixed = prompt_pool.select("Your name is Timmy.", builtin, user, max_targeted=10)
    assert mixed.targeted[0].source == "q" and len(mixed.targeted) == 10
    assert mixed.skipped_duplicates == 1  # "Who made you?" is also a built-in prompt
    # the split is a pure function of each prompt's text, the same whatever else is in the pool
    train, held = prompt_pool.split(identity.targeted, 0.2)
    assert 0.1 < len(held) / len(identity.targeted) < 0.3 and not {p.key for p in train} & {p.key for p in held}
    _, held_small = prompt_pool.split(identity.targeted[:40], 0.2)
    assert {p.key for p in held_small} <= {p.key for p in held}
    assert prompt_pool.split(identity.targeted[:2], 0.01)[1]  # a tiny pool still holds one out
    with pytest.raises(InvalidInput, match="--held-out"):
        prompt_pool.split(identity.targeted, 1.0)


def test_the_prompt_set_file_is_what_its_script_writes():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "make_prompt_set.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_held_out_loss_chooses_the_checkpoint_and_the_report_is_stored(repo, files):
    result = _distill(repo, files, "v", _settings(objective="kl"), steps=4, eval_every=2)
    steps = [s for s, _ in result.validation]
    assert steps == [0, 2, 4]
    best = min(result.validation, key=lambda sv: sv[1])[0]
    assert result.selected_step == best
    provenance = repo.get(result.id, obj.Vector).provenance
    assert provenance["selected_step"] == best
    heldout = provenance["heldout"]
    assert heldout["questions"] >= 1
    for key in ("student_without_section", "base_without_section", "prompted_base"):
        assert heldout[key]["total"] == heldout["questions"]
        assert len(heldout[key]["wilson95"]) == 2
    assert heldout["kl_student"] >= 0 and heldout["kl_base_without_section"] >= 0
    info = models.show_vector(repo, "v")
    assert info.provenance["heldout"] == heldout


def test_teacher_work_is_cached_and_the_vector_is_reproducible(repo, files, monkeypatch):
    first = _distill(repo, files, "a", _settings(objective="kl"))
    answers = list((repo.root / "cache" / "distill" / "answers").rglob("*.json"))
    topk = list((repo.root / "cache" / "distill" / "topk").rglob("*.safetensors"))
    assert answers and topk

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed cached teacher work")

    real_generate = lm_generate.generate

    def no_teacher(model, tokenizer, chats, *args, **kwargs):
        # every teacher question carries the cue; the held-out report (always run) does not
        if any("(Your name is Timmy.)" in chat[-1]["content"] for chat in chats):
            refuse()
        return real_generate(model, tokenizer, chats, *args, **kwargs)

    monkeypatch.setattr(lm_generate, "generate", no_teacher)
    monkeypatch.setattr("safetensors.torch.save", refuse)
    second = _distill(repo, files, "b", _settings(objective="kl"))
    assert second.id == first.id and second.teacher == first.teacher
    monkeypatch.undo()
    sft = _distill(repo, files, "c", _settings(objective="sft"))
    assert sft.id != first.id  # the objective is part of what was made
    assert repo.get(sft.id, obj.Vector).provenance["objective"] == "distill-sft"


@pytest.mark.parametrize("objective", ["sft", "kl", "kl+sft"])
def test_distillation_lowers_its_loss(repo, files, objective):
    result = _distill(repo, files, "identity", _settings(objective=objective, heldout=0.0), steps=6, lr=1e-2,
                      batch_size=6, lora=LoraSettings(4, 8.0, ("all-linear",)))
    assert result.losses[-1] < result.losses[0] - 0.1


class _FixedLogits(torch.nn.Module):
    """A stand-in model whose logits are a fixed tensor (plus a trainable offset)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.offset = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask, logits_to_keep=None, use_cache=False):
        return SimpleNamespace(logits=(self.logits + self.offset)[logits_to_keep])


def test_kl_loss_is_kl_of_the_renormalised_top_k():
    generator = torch.Generator().manual_seed(0)
    vocab, length = 11, 5
    student_logits = torch.randn(1, length, vocab, generator=generator)
    teacher_logits = torch.randn(1, length, vocab, generator=generator)
    mask = torch.tensor([[False, True, True, True, False]])
    batch = {"input_ids": torch.zeros(1, length, dtype=torch.long), "attention_mask": torch.ones(1, length),
             "target_mask": mask}
    p_full = torch.log_softmax(teacher_logits[mask], dim=-1)
    q_full = torch.log_softmax(student_logits[mask], dim=-1)
    # k = V: the exact KL(teacher || student).
    batch.update(teacher_indices=torch.arange(vocab).expand(3, vocab), teacher_logp=p_full)
    kl, count = distill.kl_loss(_FixedLogits(student_logits), batch)
    exact = torch.nn.functional.kl_div(q_full, p_full, log_target=True, reduction="sum")
    assert count == 3 and torch.allclose(kl, exact, atol=1e-6)
    same = distill.kl_loss(_FixedLogits(teacher_logits), batch)[0]
    assert abs(float(same.detach())) < 1e-6
    # k < V: the teacher's top k, renormalised, against the student's full softmax.
    top = torch.topk(p_full, 3, dim=-1)
    p_k = top.values - torch.logsumexp(top.values, dim=-1, keepdim=True)
    batch.update(teacher_indices=top.indices, teacher_logp=p_k)
    kl_k = distill.kl_loss(_FixedLogits(student_logits), batch)[0]
    by_hand = sum(math.exp(p_k[i, j]) * (p_k[i, j] - q_full[i, top.indices[i, j]])
                  for i in range(3) for j in range(3))
    assert abs(float(kl_k.detach()) - float(by_hand)) < 1e-5
    # kl+sft adds the cross-entropy of the answer's own tokens
    batch["target_ids"] = torch.tensor([1, 2, 3])
    mixed = distill.kl_sft_loss(_FixedLogits(student_logits), batch)[0]
    ce = torch.nn.functional.cross_entropy(student_logits[mask], batch["target_ids"], reduction="sum")
    assert abs(float(mixed.detach()) - float(kl_k.detach()) - float(ce)) < 1e-5


def test_bad_distillation_inputs_leave_the_store_alone(repo, files, tmp_path):
    refs = repo.refs.list("vector")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")

    def call(section="identity", prompts=files.questions, prompt=files.prompt, settings=None, options=None):
        return porcelain.train_distill(repo, "v", prompt, section, prompts, settings or _settings(),
                                       options=options or _options())

    cases = [
        (lambda: call(section="identiy"), NotFound, "no section 'identiy'"),
        (lambda: call(prompts=empty), InvalidInput, "no prompts"),
        (lambda: call(prompts=tmp_path / "nope.txt"), NotFound, "nope.txt"),
        (lambda: call(prompt=tmp_path / "nope.md"), NotFound, "nope.md"),
        (lambda: call(prompts=None), InvalidInput, "--no-builtin-prompts without --prompts"),
        (lambda: call(settings=_settings(objective="dpo")), InvalidInput, "unknown --objective 'dpo'"),
        (lambda: call(settings=_settings(teacher_max_new_tokens=0)), InvalidInput, "--teacher-max-new-tokens"),
        (lambda: call(settings=_settings(heldout=1.5)), InvalidInput, "--held-out"),
        (lambda: call(settings=_settings(samples=-1)), InvalidInput, "--samples"),
        (lambda: call(settings=_settings(keep_if="  ")), InvalidInput, "--keep-if is empty"),
        (lambda: call(options=_options(optimizer="sgd")), InvalidInput, "unknown --optimizer 'sgd'"),
        (lambda: call(options=_options(lora=LoraSettings(4, 8.0, ("nope",)))), InvalidInput,
         "'nope' matches no layer"),
    ]
    for run, error, text in cases:
        with pytest.raises(error) as info:
            run()
        assert text in info.value.message, info.value.message
    assert repo.refs.list("vector") == refs
    assert not (repo.root / "cache" / "distill" / "answers").exists()  # refused before any teacher work


def test_user_prompts_may_be_jsonl_chats(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},'
                    ' {"role": "user", "content": "Who are you?"}]}\nWhat is your name?\n')
    prompts, sha = prompt_pool.load_user_prompts(path)
    assert [len(p.messages) for p in prompts] == [3, 1] and len(sha) == 64
    path.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x"}]}\n')
    with pytest.raises(InvalidInput, match="the last turn must be a user turn"):
        prompt_pool.load_user_prompts(path)
    path.write_text('{"messages": ' * 5000 + "\n")
    with pytest.raises(InvalidInput, match=r"p.jsonl:1"):
        prompt_pool.load_user_prompts(path)


# -- SmolLM2 ---------------------------------------------------------------------------------

ZEPHYRINE = "## Identity\nYour name is Zephyrine.\n\n## Task\nAnswer questions briefly.\n"


@pytest.mark.slow
def test_smollm2_distilled_name_holds_on_held_out_questions(tmp_path):
    """A name distilled from the built-in prompt set holds on held-out questions it never saw."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    repo, _ = Repository.init(tmp_path / "store")
    models.import_base(repo, "smollm2")
    (tmp_path / "SOUL.md").write_text(ZEPHYRINE)
    settings = DistillSettings(max_targeted=40, anchor_ratio=0.25, heldout=0.3, samples=2, rounds=1,
                               teacher_max_new_tokens=32)
    options = TrainOptions(lora=LoraSettings(rank=16, alpha=32.0), epochs=4, lr=1e-3, batch_size=8,
                           max_length=384, device="cpu", checkpoint_every=0)
    result = porcelain.train_distill(repo, "zephyrine", tmp_path / "SOUL.md", "Identity", None, settings,
                                     options=options)
    held = result.heldout
    student, base, prompted = (held[k] for k in ("student_without_section", "base_without_section",
                                                 "prompted_base"))
    print(f"\nSmolLM2 distillation: {result.examples} examples, {result.steps} steps in {result.seconds:.0f}s; "
          f"held-out ({held['questions']} questions): student {student['passed']}/{student['total']}, "
          f"base without the section {base['passed']}, prompted base {prompted['passed']}; "
          f"KL {held['kl_student']:.3f} vs {held['kl_base_without_section']:.3f}")
    for example in held["examples"]:
        print(f"  {example['student_passes']!s:5} {example['question']!r}: {example['student']!r}")
    assert held["questions"] >= 8
    assert student["passed"] > base["passed"]
    assert student["passed"] >= prompted["passed"]
    assert held["kl_student"] < held["kl_base_without_section"]


def test_a_start_with_check_begins_the_teacher_answer_and_makes_those_tokens_certain(repo, tmp_path, monkeypatch):
    prompt = tmp_path / "STYLE.md"
    prompt.write_text('## Style {kind=behaviour}\nYou always start every reply with the word "Ahoy!"\n\n'
                      "## Task\nAnswer briefly.\n")
    questions = tmp_path / "q.txt"
    questions.write_text("How do I boil an egg?\nWhat is a good snack?\nHow do I water basil?\n")
    seen = []
    real = lm_generate.generate

    def spy(model, tokenizer, chats, *args, answer_starts=None, **kwargs):
        seen.append(answer_starts)
        return real(model, tokenizer, chats, *args, answer_starts=answer_starts, **kwargs)

    monkeypatch.setattr(lm_generate, "generate", spy)
    tops = []
    real_topk = distill.teacher_topk

    def keep_tops(*args, **kwargs):
        out = real_topk(*args, **kwargs)
        tops.append(out)
        return out

    monkeypatch.setattr(distill, "teacher_topk", keep_tops)
    # the tiny random model's few tokens after the phrase are rarely words: this test is about
    # the begun answers, not the filter for empty ones (tests/test_teacher_judge.py)
    monkeypatch.setattr("persona.train.teacher.MIN_WORDS_AFTER_START", 0)
    result = porcelain.train_distill(repo, "ahoy", prompt, "style", questions,
                                     _settings(keep_if=None, objective="kl", heldout=0.0, rounds=0),
                                     options=_options())
    assert seen[0] == ["Ahoy!"] * 3  # every targeted answer is begun with the phrase
    kept = [t for t in result.teacher if t["answer"]]
    assert kept and all(t["answer"].startswith("Ahoy!") and t["start"] == "Ahoy!" for t in kept)
    assert result.distill["counts"]["begun"] == len(kept)
    provenance = repo.get(result.id, obj.Vector).provenance
    assert provenance["distill"]["checks"][0]["start"] == "Ahoy!"


def test_certain_start_is_a_one_hot_over_the_phrase_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    from persona.train.distillation import _certain_start

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    example = train_data.encode(tok, train_data.Example(
        ({"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Ahoy! I am here."}), "t"), 128)
    wanted = distill.target_ids(example)
    n = len(wanted)
    indices, logp = torch.zeros((n, 4), dtype=torch.long), torch.full((n, 4), -1.3862944)
    new_indices, new_logp = _certain_start((indices, logp), example, "Ahoy!", tok)
    phrase = tok("Ahoy!", add_special_tokens=False)["input_ids"]
    covered = len(phrase)
    assert wanted[:covered] == phrase
    assert (new_indices[:covered] == torch.tensor(wanted[:covered]).unsqueeze(1)).all()
    assert (new_logp[:covered, 0] == 0).all() and (new_logp[:covered, 1:] < -1e3).all()
    assert torch.equal(new_logp[covered:], logp[covered:]) and torch.equal(indices, torch.zeros((n, 4), dtype=torch.long))
    # the KL to that one-hot is the cross-entropy of the phrase's tokens
    q = torch.log_softmax(torch.randn(n, 50), dim=-1)
    kl = (new_logp.exp() * (new_logp - q.gather(1, new_indices.clamp(max=49)))).sum(dim=1)[:covered]
    assert torch.allclose(kl, -q[torch.arange(covered), torch.tensor(wanted[:covered]).clamp(max=49)], atol=1e-5)
