"""Text splitting: short first clause, whole sentences after, bounded pieces."""

from __future__ import annotations

from livekit.plugins.localtts.text import TextSplitter, is_speakable, normalize, split_text


def test_first_piece_is_a_clause_then_sentences() -> None:
    pieces = split_text(
        "Well, I think that this is good, really. And here is a second sentence! Third?"
    )
    assert pieces == [
        "Well, I think that this is good,",
        "really.",
        "And here is a second sentence!",
        "Third?",
    ]


def test_a_clause_shorter_than_the_minimum_is_not_cut() -> None:
    assert split_text("Hi, there. Bye.", first_clause_min_chars=16) == ["Hi, there.", "Bye."]


def test_streamed_tokens_give_the_first_clause_before_the_sentence_ends() -> None:
    splitter = TextSplitter(first_clause_min_chars=16)
    got: list[tuple[int, str]] = []
    words = "Sure thing, let me check the weather, it is sunny today in Paris. Anything else?"
    for i, word in enumerate(words.split(" ")):
        got += [(i, p) for p in splitter.push(word + " ")]
    got += [(-1, p) for p in splitter.flush()]
    assert got[0] == (6, "Sure thing, let me check the weather,")
    assert [p for _, p in got] == [
        "Sure thing, let me check the weather,",
        "it is sunny today in Paris.",
        "Anything else?",
    ]
    # every piece but the last came out before flush
    assert all(i >= 0 for i, _ in got[:-1])


def test_pieces_are_bounded_even_without_punctuation() -> None:
    pieces = split_text("word " * 10_000, max_piece_chars=300)
    assert max(map(len, pieces)) <= 300
    assert sum(p.count("word") for p in pieces) == 10_000


def test_streamed_run_without_punctuation_is_cut_before_flush() -> None:
    splitter = TextSplitter(max_piece_chars=100)
    out: list[str] = []
    for _ in range(100):
        out += splitter.push("word ")
    assert out, "a 500-char run without punctuation must not wait for flush"
    assert max(map(len, out)) <= 100


def test_normalize_drops_control_markup_and_emoji() -> None:
    assert normalize("a\x00b\x07c") == "a b c"
    assert normalize("<speak>Hi <b>there</b>, friend.</speak>") == "Hi there, friend."
    assert normalize("**Bold** move 😀") == "Bold move"
    assert not is_speakable(normalize("😀🎉 ... !!"))


def test_blank_text_gives_no_pieces() -> None:
    assert split_text("") == []
    assert split_text(" \n\t ") == []
    assert split_text("😀") == []


def test_normalize_keeps_comparisons_symbols_and_words() -> None:
    assert normalize("If x < 5 and y > 3, then stop.") == "If x < 5 and y > 3, then stop."
    assert normalize("It is 5 °C, £5 and © 2024.") == "It is 5 °C, £5 and © 2024."
    assert normalize("Hello\u200bworld") == "Hello world"  # zero-width space separates
    assert normalize("I love it ❤️ a lot 👍🏽") == "I love it a lot"  # no stray selectors
    assert normalize('<break time="1s"/>Pause') == "Pause"
