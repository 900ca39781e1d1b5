"""Text splitting: an early first piece, whole sentences after, bounded pieces, and every
piece knowing the input text it stands for."""

from __future__ import annotations

import pytest
from livekit.plugins.localtts.text import (
    Piece,
    TextSplitter,
    is_speakable,
    normalize,
    normalize_with_offsets,
    split_text,
)

RUN_ON = (
    "The weather today is sunny with a light breeze from the west and it keeps going on and "
    "on until the very end of the afternoon when it finally stops raining across the region."
)


def texts(pieces: list[Piece]) -> list[str]:
    return [p.text for p in pieces]


def streamed(words: list[str], splitter: TextSplitter | None = None) -> list[tuple[int, str]]:
    """(index of the word whose arrival released the piece, piece text); -1: at flush.
    Words arrive as LLM tokens do, each with the space before it."""
    splitter = splitter or TextSplitter()
    got: list[tuple[int, str]] = []
    for i, word in enumerate(words):
        got += [(i, p.text) for p in splitter.push(word if i == 0 else " " + word)]
    return got + [(-1, p.text) for p in splitter.flush()]


def test_first_piece_is_a_clause_then_sentences() -> None:
    pieces = split_text(
        "Well, I think that this is good, really. And here is a second sentence! Third?"
    )
    assert texts(pieces) == [
        "Well, I think that this is good,",
        "really.",
        "And here is a second sentence!",
        "Third?",
    ]


def test_short_first_sentences_are_spoken_whole() -> None:
    assert texts(split_text("Hi, there. Bye.", first_clause_min_chars=16)) == ["Hi, there.", "Bye."]
    assert texts(split_text("Hello from a local voice agent.")) == [
        "Hello from a local voice agent."
    ]


def test_a_run_on_first_sentence_is_cut_after_a_few_words() -> None:
    pieces = texts(split_text(RUN_ON))
    # "The weather today is" would end on an auxiliary: the cut waits one word
    assert pieces[0] == "The weather today is sunny"
    assert " ".join(pieces) == RUN_ON
    assert len(pieces) == 2  # then the rest of the sentence, whole


@pytest.mark.parametrize(
    ("text", "first"),
    [
        # no cut inside a number, after a title or an abbreviation, or before a unit
        ("Dr. Smith paid 3.5 million dollars to the city council for the new stadium downtown.",
         "Dr. Smith paid 3.5 million"),
        ("We found that e.g. the older models and the newer ones both fail in the same way here.",
         "We found that e.g. the older"),
        ("At 3 pm the U.S. team arrived at the stadium with all of their coaches and their fans.",
         "At 3 pm the U.S. team"),
    ],
)  # fmt: skip
def test_no_cut_inside_numbers_abbreviations_or_after_titles(text: str, first: str) -> None:
    pieces = texts(split_text(text))
    assert pieces[0] == first
    assert " ".join(pieces) == text


def test_glued_sentences_are_split_and_spaced() -> None:
    text = "Here is what I found for.Sentence one.Sentence two is here."
    assert texts(split_text(text)) == ["Here is what I found for.", "Sentence one.",
                                       "Sentence two is here."]  # fmt: skip
    assert normalize("It works.Then it stopped!Really") == "It works. Then it stopped! Really"
    # not sentences: decimals, domains, initials, abbreviations
    assert normalize("Pi is 3.14 on example.com, e.g.A and Mr.Smith") == (
        "Pi is 3.14 on example.com, e.g.A and Mr.Smith"
    )


def test_glued_sentences_stream_without_waiting_for_more_text() -> None:
    got = streamed("Here is what I found for.Sentence one.Sentence two is here.".split(" "))
    # released with "for.Sentence": "I" may not end a piece, and the glued sentence end came
    # with the word that completed "found"
    assert got[0] == (5, "Here is what I found for.")
    assert [t for _, t in got] == ["Here is what I found for.", "Sentence one.",
                                   "Sentence two is here."]  # fmt: skip
    assert got[1][0] >= 0, "a glued sentence end must not wait for the end of input"


def test_streamed_tokens_give_the_first_words_before_the_clause_ends() -> None:
    words = "Sure thing let me check the weather, it is sunny today in Paris. Anything else?"
    got = streamed(words.split(" "))
    # released when "check" arrives: "me" is then known to be a complete word
    assert got[0] == (4, "Sure thing let me")
    assert [p for _, p in got] == [
        "Sure thing let me",
        "check the weather, it is sunny today in Paris.",
        "Anything else?",
    ]
    assert all(i >= 0 for i, _ in got[:-1])  # every piece but the last came before flush


def test_a_clause_that_comes_first_wins() -> None:
    got = streamed("Certainly, my friend, let me check that for you.".split(" "))
    assert got[0] == (3, "Certainly, my friend,")  # before four words are complete


def test_the_wait_cuts_at_the_last_word_a_piece_may_end_on() -> None:
    splitter = TextSplitter()
    assert splitter.push("The") == []
    assert splitter.first_piece_pending
    assert splitter.wait_expired() == []  # "The" may still grow, and no piece ends on it
    assert splitter.push(" answer") == []  # "The" is complete now, but still no end
    assert texts(splitter.push(" is")) == ["The answer"]  # at once, not after four words
    assert not splitter.first_piece_pending
    assert texts(splitter.flush()) == ["is"]


def test_pieces_tile_the_input_and_words_map_back() -> None:
    inputs = [
        "Well, I think that this is good, really. And here is a second sentence! Third?",
        RUN_ON,
        "**Bold** move 😀 and <b>tags</b> here,\n\n- a list item with  spaces. 😀",
        "Hello\u200bworld, it's 5 °C.Then rain!  ",
        "😀🎉 ...",
    ]
    for text in inputs:
        pieces = split_text(text)
        assert "".join(p.raw for p in pieces) == text
        for piece in pieces:
            words = piece.raw_words()
            assert "".join(words) == piece.raw
            assert len(words) == max(1, len(piece.text.split()))
            for i, ch in enumerate(piece.text):  # every spoken character came from the input
                assert ch == " " or piece.raw[piece.offsets[i]] == ch
    # streamed: the same tiling, token by token
    splitter = TextSplitter()
    pieces = [p for tok in RUN_ON.split(" ") for p in splitter.push(tok + " ")]
    pieces += splitter.flush()
    assert "".join(p.raw for p in pieces) == RUN_ON + " "


def test_text_with_nothing_to_say_is_one_silent_piece() -> None:
    assert split_text("😀🎉 ...") == [Piece(text="", raw="😀🎉 ...", offsets=())]
    # unspeakable text between sentences joins the next piece
    pieces = split_text("Hello there. 😀 Bye now.")
    assert texts(pieces) == ["Hello there.", "Bye now."]
    assert pieces[1].raw == " 😀 Bye now."


def test_pieces_are_bounded_even_without_punctuation() -> None:
    pieces = texts(split_text("word " * 10_000, max_piece_chars=300))
    assert max(map(len, pieces)) <= 300
    assert sum(p.count("word") for p in pieces) == 10_000


def test_streamed_run_without_punctuation_is_cut_before_flush() -> None:
    splitter = TextSplitter(max_piece_chars=100)
    out: list[str] = []
    for _ in range(100):
        out += texts(splitter.push("word "))
    assert len(out) > 2, "a 500-char run without punctuation must not wait for flush"
    assert max(map(len, out)) <= 100


def test_normalize_drops_control_markup_and_emoji() -> None:
    assert normalize("a\x00b\x07c") == "a b c"
    assert normalize("<speak>Hi <b>there</b>, friend.</speak>") == "Hi there, friend."
    assert normalize("**Bold** move 😀") == "Bold move"
    assert not is_speakable(normalize("😀🎉 ... !!"))


def test_normalize_offsets_point_at_the_source_characters() -> None:
    raw = "  <b>Hi</b> **there** ,\tfriend 😀.Yes"
    text, offsets = normalize_with_offsets(raw)
    assert text == "Hi there, friend. Yes"
    assert len(offsets) == len(text)
    assert offsets == sorted(offsets)
    assert all(raw[offsets[i]] == ch for i, ch in enumerate(text) if ch != " ")


def test_blank_text_gives_no_pieces() -> None:
    assert split_text("") == []
    assert split_text(" \n\t ") == [Piece(text="", raw=" \n\t ", offsets=())]


def test_normalize_keeps_comparisons_symbols_and_words() -> None:
    assert normalize("If x < 5 and y > 3, then stop.") == "If x < 5 and y > 3, then stop."
    assert normalize("It is 5 °C, £5 and © 2024.") == "It is 5 °C, £5 and © 2024."
    assert normalize("Hello\u200bworld") == "Hello world"  # zero-width space separates
    assert normalize("I love it ❤️ a lot 👍🏽") == "I love it a lot"  # no stray selectors
    assert normalize('<break time="1s"/>Pause') == "Pause"


def test_a_short_sentence_pushed_whole_is_not_cut() -> None:
    """A whole text pushed at once (AgentSession.say): a short first sentence ending the
    buffer waits for the next token, which shows whether it ended; a long one is cut."""
    splitter = TextSplitter()
    assert splitter.push("Hello, this is the local voice agent.") == []
    assert texts(splitter.flush()) == ["Hello, this is the local voice agent."]
    splitter = TextSplitter()
    assert splitter.push("Hello, this is the local voice agent.") == []
    assert texts(splitter.push(" How")) == ["Hello, this is the local voice agent."]
    splitter = TextSplitter()
    assert texts(splitter.push(RUN_ON))[0] == "The weather today is sunny"


def test_after_the_wait_a_sentence_end_at_the_end_of_the_buffer_is_one() -> None:
    """An LLM pauses after a sentence (the space after its end not sent yet): once the wait
    runs out, the sentence is spoken whole, not cut before its last word; a period after
    an abbreviation or a digit ends nothing."""
    splitter = TextSplitter()
    assert splitter.push("Hello, this is the local voice agent.") == []
    assert texts(splitter.wait_expired()) == ["Hello, this is the local voice agent."]
    assert texts(splitter.flush(" How")) == ["How"]
    splitter = TextSplitter()
    assert splitter.push("Sure.") == []
    assert texts(splitter.wait_expired()) == ["Sure."]
    for text, first, rest in (("I met Dr.", "I met", " Smith."), ("It costs 3.", "It costs", "5.")):
        splitter = TextSplitter()
        assert splitter.push(text) == []
        assert texts(splitter.wait_expired()) == [first]
        assert texts(splitter.flush(rest)) == [(text + rest)[len(first) + 1 :]]
