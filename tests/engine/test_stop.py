"""StopMatcher: stop strings across token boundaries, never leaked, nothing else held back."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kamado.engine.stop import StopMatcher


def stream(stops, pieces):
    """Feed `pieces`; return (emitted text, stopped, the text emitted after each feed)."""
    matcher = StopMatcher(stops)
    emitted, per_feed, stopped = "", [], False
    for piece in pieces:
        out, stopped = matcher.feed(piece)
        emitted += out
        per_feed.append(out)
        if stopped:
            break
    if not stopped:
        emitted += matcher.flush()
    return emitted, stopped, per_feed


def truncate_at_first_stop(text, stops):
    """Reference: generation halts as soon as a stop string is complete; the text ends before that stop."""
    stops = [s for s in stops if s]
    for end in range(1, len(text) + 1):
        ending_here = [s for s in stops if text[:end].endswith(s)]
        if ending_here:
            return text[: end - max(map(len, ending_here))], True
    return text, False


def test_stop_inside_one_piece():
    assert stream(["STOP"], ["hello STOP world"])[:2] == ("hello ", True)


def test_stop_split_over_several_feeds_is_never_leaked():
    emitted, stopped, per_feed = stream(["</answer>"], ["The answer", " is 42<", "/ans", "wer", ">", " ignored"])
    assert (emitted, stopped) == ("The answer is 42", True)
    assert per_feed == ["The answer", " is 42", "", "", ""]


def test_only_a_possible_prefix_is_held_back():
    matcher = StopMatcher(["\n\nUser:"])
    assert matcher.feed("a\n") == ("a", False)  # "\n" could start the stop
    assert matcher.feed("\nUs") == ("", False)
    assert matcher.feed("ually") == ("\n\nUsually", False)  # no longer a prefix: released at once
    assert matcher.flush() == ""


def test_false_start_then_real_stop():
    # "ab" looks like the start of "abc" twice before the real one
    assert stream(["abc"], ["xa", "b", "ab", "abc", "d"])[:2] == ("xabab", True)


def test_overlapping_stops_the_one_ending_first_wins():
    # "bc" completes before "abcd" could: generation halts there
    assert stream(["abcd", "bc"], ["a", "b", "c", "d"])[:2] == ("a", True)
    assert stream(["abcd", "bc"], ["abcd"])[:2] == ("a", True)
    # both end at the same place: the longer one (starting earlier) is cut
    assert stream(["bc", "abc"], ["xab", "cz"])[:2] == ("x", True)


def test_stop_that_is_a_prefix_of_another():
    assert stream(["ab", "abc"], ["xa", "bc"])[:2] == ("x", True)


def test_unicode_stops_and_text():
    emitted, stopped, _ = stream(["。\n", "🛑"], ["こんにちは", "世界", "。", "\nさようなら"])
    assert (emitted, stopped) == ("こんにちは世界", True)
    assert stream(["🛑"], ["go ", "go 🛑 no"])[:2] == ("go go ", True)
    assert stream(["日本語"], ["日本", "人"])[:2] == ("日本人", False)


def test_flush_returns_what_was_held():
    matcher = StopMatcher(["###"])
    assert matcher.feed("text ##") == ("text ", False)
    assert matcher.flush() == "##"
    assert matcher.flush() == ""


def test_after_a_stop_everything_is_swallowed():
    matcher = StopMatcher(["END"])
    assert matcher.feed("done EN") == ("done ", False)
    assert matcher.feed("D and more") == ("", True)
    assert matcher.stopped and matcher.matched == "END"
    assert matcher.feed("even more") == ("", True)
    assert matcher.flush() == ""


def test_no_stops_passes_everything_through():
    matcher = StopMatcher([])
    assert matcher.feed("anything") == ("anything", False)
    assert StopMatcher([""]).feed("x") == ("x", False)  # an empty stop string is ignored


def test_bad_stops_are_rejected():
    with pytest.raises(TypeError, match="single string"):
        StopMatcher("STOP")
    with pytest.raises(TypeError, match="must be str"):
        StopMatcher(["ok", 3])


text_alphabet = st.sampled_from(list("ab\nxé🙂"))


@given(
    text=st.text(alphabet=text_alphabet, max_size=40),
    stops=st.lists(st.text(alphabet=text_alphabet, max_size=4), max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=12),
)
def test_streamed_output_is_the_text_truncated_at_the_first_stop(text, stops, cuts):
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    emitted, stopped, _ = stream(stops, pieces)
    assert (emitted, stopped) == truncate_at_first_stop(text, stops)


@given(
    text=st.text(alphabet=text_alphabet, max_size=30),
    stops=st.lists(st.text(alphabet=text_alphabet, min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_emitted_text_never_holds_part_of_a_stop_that_later_completes(text, stops):
    # one character at a time: whatever was emitted is final, so it must be a prefix of the truncated text
    matcher = StopMatcher(stops)
    emitted = ""
    expected, _ = truncate_at_first_stop(text, stops)
    for ch in text:
        out, stopped = matcher.feed(ch)
        emitted += out
        assert expected.startswith(emitted)
        if stopped:
            break
