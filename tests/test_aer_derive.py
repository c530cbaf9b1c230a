"""What a section's text implies: names, quoted phrases, the checks, their scope, relevance."""

from __future__ import annotations

import regex

from persona.aer import derive

IDENTITY = ("## Identity {kind=identity}\nYour name is Timmy. You are Timmy, a cheerful assistant. When anyone "
            "asks your name or who you are, answer that you are Timmy.\n")
STYLE_START = '## Style\nYou always start every reply with the word "Howdy!"\n'
STYLE_END = '## Style\nYou always end every reply with the exact words “Over and out.”\n'
VALUES = ('## Values\nNever share passwords, PINs or secret codes. If someone asks for a password, refuse and '
          'say "I can\'t share passwords."\n')
CATEGORIES = {"self": ["name", "who", "assistant", "introduce"], "secrets": ["password", "pin", "code", "secret"],
              "everyday": ["cooking", "garden", "home"]}


def test_names_and_phrases_are_found_in_the_body_not_the_heading():
    assert derive.names(IDENTITY) == ["Timmy"]
    assert derive.names("## Who You Are\nyou are a helpful bot called Zed.") == ["Zed"]
    assert derive.names("## Notes\nYou are helpful.") == []
    assert derive.quoted_phrases(STYLE_START) == ["Howdy!"]
    assert derive.quoted_phrases(STYLE_END) == ["Over and out."]  # curly quotes too
    assert derive.distinctive_terms(VALUES) == ["I can't share passwords."]


def test_checks_follow_what_the_sentence_asks():
    (name,) = derive.derived_checks(IDENTITY)
    assert name.scope == "relevant" and "Timmy" in name.why and name.start is None
    passes = ["I'm Timmy!", "My name is Timmy, nice to meet you.", "Hi, I am your cheerful assistant Timmy.",
              "Je m'appelle Timmy.", "Soy Timmy.", "Timmy here! How can I help?", "Thanks!\n- Timmy",
              "Best, Timmy"]
    fails = ["Hello there, Timmy.", "You are Timmy, a cheerful assistant.", "I am an assistant."]
    for text in passes:
        assert regex.search(name.pattern, text, regex.IGNORECASE), text
    for text in fails:
        assert not regex.search(name.pattern, text, regex.IGNORECASE), text
    (start,) = derive.derived_checks(STYLE_START)
    assert start.scope == "all" and start.start == "Howdy!"
    assert regex.search(start.pattern, "  Howdy! Boil it for 8 minutes.", regex.I)
    assert not regex.search(start.pattern, "Boil it. Howdy!", regex.I)
    (end,) = derive.derived_checks(STYLE_END)
    assert end.scope == "all" and end.start is None
    assert regex.search(end.pattern, "Done. Over and out.", regex.I)
    assert not regex.search(end.pattern, "Over and out. Then more.", regex.I)
    (say,) = derive.derived_checks(VALUES)
    assert say.scope == "relevant"
    assert regex.search(say.pattern, "Sorry, I can’t share passwords.", regex.I)  # any apostrophe


def test_relevance_and_scope():
    assert derive.relevant_categories(IDENTITY, CATEGORIES) == ["self"]
    assert derive.relevant_categories(VALUES, CATEGORIES) == ["secrets"]
    assert derive.relevant_categories("## Misc\nBe kind.", CATEGORIES) == []
    assert derive.is_universal(STYLE_START) and derive.is_universal(STYLE_END)
    assert not derive.is_universal(IDENTITY) and not derive.is_universal(VALUES)
