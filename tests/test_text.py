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
from livekit.plugins.localtts.textcut import cut_long

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
    for text, first, rest in (
        ("I met Dr.", "I met", " Smith."),
        ("It costs 3.", "It costs", "5."),
        ("We shipped v2.", "We shipped", "1 today."),
    ):
        splitter = TextSplitter()
        assert splitter.push(text) == []
        assert texts(splitter.wait_expired()) == [first]
        assert texts(splitter.flush(rest)) == [(text + rest)[len(first) + 1 :]]


# -- the rules at their exact bounds ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        # a period after a title, an initial or a dotted abbreviation ends nothing, quoted or
        # bracketed too; after a word, a two-letter word or a domain name it ends a sentence
        ("(Dr. Smith said hello to everyone in the room today.)",
         ["(Dr. Smith said hello", "to everyone in the room today.)"]),
        ("I asked J. Smith about the weather in the city today.",
         ["I asked J. Smith", "about the weather in the city today."]),
        ("She has a Ph.D. in physics from the university in town.",
         ["She has a Ph.D. in physics", "from the university in town."]),
        ("Say hi. Then we can go home and rest for a while.",
         ["Say hi.", "Then we can go home and rest for a while."]),
        ("I went to bbc.com. Then I left the house for good.",
         ["I went to bbc.com.", "Then I left the house for good."]),
        ("Do it.It works well for me and for you.",
         ["Do it.", "It works well for me and for you."]),
        ("It works.Fine. Then we left the house for the day.",
         ["It works.", "Fine.", "Then we left the house for the day."]),
        # one glued sentence end before a clause end: the glued end comes first
        ("It works.Then, we left the house.", ["It works.", "Then, we left the house."]),
        # a clause after a title's period still counts
        ("Dr. Smith, our family doctor, came by the house today.",
         ["Dr. Smith, our family doctor,", "came by the house today."]),
        # no first piece ends on a quoted article, "I'm" typed with a curly apostrophe, or
        # a conjunction with a comma after it
        ('I really think "the best one is here" will win the prize.',
         ['I really think "the best', 'one is here" will win the prize.']),
        ("So honestly now I\u2019m going to the shop for bread and milk.",
         ["So honestly now I\u2019m going", "to the shop for bread and milk."]),
        # four words by default, then the first word a piece may end on
        ("Yesterday my brother bought a small red car with a big loud horn.",
         ["Yesterday my brother bought", "a small red car with a big loud horn."]),
        # three words past the minimum with none to end on: cut there anyway
        ("We all agreed that this is the plan we want to follow today.",
         ["We all agreed that this is the", "plan we want to follow today."]),
        # without punctuation: up to twice the minimum words whole, more are cut
        ("one two three four five six seven eight", ["one two three four five six seven eight"]),
        ("one two three four five six seven eight nine",
         ["one two three four", "five six seven eight nine"]),
        # a first clause of up to twice the minimum words is spoken whole, one more is cut
        ("My brother and I went to the shop, and then we came back home.",
         ["My brother and I went to the shop,", "and then we came back home."]),
        ("My brother and I went to the big shop, and then we came back home.",
         ["My brother and I went", "to the big shop, and then we came back home."]),
        # a clause end counts from 16 characters on (leading spaces not counted)
        ("Yes, absolutely, but it is late now.", ["Yes, absolutely,", "but it is late now."]),
        ("Yes, certainly, but it is late now.", ["Yes, certainly, but it is late now."]),
        ("          Well, I think so, my friend, it is fine.",
         ["Well, I think so,", "my friend, it is fine."]),
    ],
)  # fmt: skip
def test_first_piece_rules_at_their_bounds(text: str, pieces: list[str]) -> None:
    got = split_text(text)
    assert texts(got) == pieces
    assert "".join(p.raw for p in got) == text


def test_the_splitters_own_defaults() -> None:
    """`TextSplitter()` and `split_text` state their defaults apart: both are checked."""
    assert texts(TextSplitter().flush("Yes, absolutely, but it is late now.")) == [
        "Yes, absolutely,", "but it is late now.",
    ]  # fmt: skip
    assert texts(TextSplitter().flush("x" * 301)) == ["x" * 300, "x"]


def test_a_conjunction_with_a_comma_does_not_end_a_first_piece() -> None:
    assert texts(split_text("Hi and, so we go on and on and on.", first_piece_min_words=2)) == [
        "Hi and, so we",
        "go on and on and on.",
    ]


def test_split_text_passes_its_limits_on() -> None:
    text = "Hello there friend, how are you doing today? I am fine thanks."
    assert texts(split_text(text, first_piece_min_words=1)) == [
        "Hello", "there friend, how are you doing today?", "I am fine thanks.",
    ]  # fmt: skip
    assert texts(split_text("Well, hello there my friend.", first_clause_min_chars=5)) == [
        "Well,", "hello there my friend.",
    ]  # fmt: skip
    assert texts(split_text("a" * 30 + " " + "b" * 30, max_piece_chars=40)) == ["a" * 30, "b" * 30]


def test_limits_are_checked() -> None:
    TextSplitter(max_piece_chars=20, first_piece_min_words=1)  # the smallest allowed
    with pytest.raises(ValueError, match=r"^max_piece_chars must be at least 20$"):
        TextSplitter(max_piece_chars=19)
    with pytest.raises(ValueError, match=r"^first_piece_min_words must be at least 1$"):
        TextSplitter(first_piece_min_words=0)


def test_default_limit_is_300_characters() -> None:
    assert texts(split_text("x" * 300)) == ["x" * 300]
    assert texts(split_text("x" * 301)) == ["x" * 300, "x"]


@pytest.mark.parametrize(
    ("piece", "limit", "cut"),
    [
        ("aaa bbb", 7, ["aaa bbb"]),  # at the limit: whole
        ("one two three four five six", 20, ["one two three four", "five six"]),  # last space
        # a clause end from a third of the limit on is the cut; before it, the last space
        ("abcdefghi, jklmnopq rstuvwxyz abcdef ghij", 31,
         ["abcdefghi,", "jklmnopq rstuvwxyz abcdef ghij"]),
        ("abcdefgh, jklmnopqr stuvwxyz abcdef ghij", 31,
         ["abcdefgh, jklmnopqr stuvwxyz", "abcdef ghij"]),
        ("a " + "b" * 30, 20, ["a", "b" * 20, "b" * 10]),  # a one-letter word is a word
        ("x" * 50, 20, ["x" * 20, "x" * 20, "x" * 10]),  # no space at all: hard cuts
    ],
)  # fmt: skip
def test_cut_long_cuts_at_clauses_then_spaces_then_hard(
    piece: str, limit: int, cut: list[str]
) -> None:
    assert cut_long(piece, limit) == cut


def test_streamed_first_piece_bounds() -> None:
    """In a stream a first sentence ending the buffer waits for one more token when it is
    up to twice the minimum words; a run without spaces is cut at the limit, not before."""
    splitter = TextSplitter()
    assert splitter.push("One two three four five six seven eight.") == []
    assert texts(TextSplitter().push("One two three four five six seven eight nine.")) == [
        "One two three four"
    ]
    # six complete words, none after the third to end on, the seventh still growing: wait
    assert TextSplitter().push("We all agreed that this is good") == []
    splitter = TextSplitter(max_piece_chars=20)
    assert splitter.push("x" * 20) == []
    assert texts(splitter.push("x")) == ["x" * 20]
    splitter = TextSplitter(max_piece_chars=20, first_piece_min_words=1)
    assert texts(splitter.push("a" * 21 + " b")) == ["a" * 20]
    # a glued sentence end before a clause end is the first piece's end in a stream too
    assert texts(TextSplitter().push("It works.Then, we left")) == ["It works."]
    # once the wait ran out, the first sentence end is the cut, however much follows it
    splitter = TextSplitter()
    splitter.wait_expired()
    assert texts(splitter.push("Hi. My friend Bob is")) == ["Hi."]


def test_a_streamed_run_without_sentences_is_cut_between_words() -> None:
    splitter = TextSplitter(max_piece_chars=100)
    pieces = [p for _ in range(100) for p in splitter.push("word ")] + splitter.flush()
    assert all(set(p.text.split()) == {"word"} for p in pieces)
    assert "".join(p.raw for p in pieces) == "word " * 100
    # a word longer than the limit waits, after the first piece, for the input to end
    splitter = TextSplitter(max_piece_chars=20)
    assert texts(splitter.push("Hi there. " + "y" * 30)) == ["Hi there."]
    assert splitter.push("y" * 10) == []
    assert texts(splitter.flush()) == ["y" * 20, "y" * 20]


def test_long_pieces_tile_the_input_and_map_back() -> None:
    text = "word " * 200 + "end. " + "word, " * 60 + "done."
    pieces = split_text(text, max_piece_chars=50)
    assert max(len(p.text) for p in pieces) <= 50
    assert "".join(p.raw for p in pieces) == text
    for piece in pieces:
        spoken = enumerate(piece.text)
        assert all(ch == " " or piece.raw[piece.offsets[i]] == ch for i, ch in spoken)


def test_sentence_pieces_keep_the_spaces_between_them() -> None:
    assert [p.raw for p in split_text("Hello there, my friend. How are you? Fine.")] == [
        "Hello there, my friend.", " How are you?", " Fine.",
    ]  # fmt: skip
    # a sentence end with nothing speakable after it ends no piece
    assert [p.raw for p in split_text("Hi there. How are you? \U0001f600")] == [
        "Hi there.", " How are you? \U0001f600",
    ]  # fmt: skip


def test_a_silent_flush_leaves_nothing_behind() -> None:
    splitter = TextSplitter()
    assert splitter.flush("\U0001f600") == [Piece(text="", raw="\U0001f600", offsets=())]
    assert [p.raw for p in splitter.flush("Hello there.")] == ["Hello there."]


def test_normalize_removes_format_characters_and_maps_a_moved_mark() -> None:
    # soft hyphen, zero-width joiner (Cf) and variation selector 1: removed, not spaced
    assert normalize("co\u00adoperate a\u200db A\ufe00B") == "cooperate ab AB"
    text, offsets = normalize_with_offsets("Hi there .")
    assert (text, offsets[-1]) == ("Hi there.", 9)  # the period, moved, is still the period
