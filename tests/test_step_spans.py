"""Where steps end inside one request (`step_spans`): the scanner the gate and the sessions share,
and how a session splits what a request streamed into steps.  A toy vocabulary, exact checks."""

import pytest

from glimp_integrations.backends.step_spans import SpanBuffer, StepScanner, split_text, through_separator

TEXTS = ["It", " is", "\n", "\n\n", "\n\n\n", ".\n", "", "é"]
IT, IS, NEWLINE, BLANK, BLANK_AND_NEWLINE, DOT_NEWLINE, END, ACCENT = range(len(TEXTS))


def ends(tokens, step_tokens=None, separator="\n\n"):
    scanner = StepScanner(separator, TEXTS, step_tokens)
    return [scanner.feed(token) for token in tokens]


@pytest.mark.parametrize(
    "tokens, expected",
    [
        ([IT, IS, BLANK, IT], [None, None, "separator", None]),  # a token holding the separator
        ([IT, DOT_NEWLINE, NEWLINE, IT], [None, None, "separator", None]),  # a separator across two tokens
        ([IT, BLANK_AND_NEWLINE, NEWLINE], [None, "separator", None]),  # a new step starts with nothing carried over
        ([NEWLINE, END, NEWLINE], [None, None, "separator"]),  # text-less tokens (the end of text) in between
    ],
)
def test_a_step_ends_after_the_token_that_completes_the_separator(tokens, expected):
    assert ends(tokens) == expected


def test_a_step_also_ends_after_step_tokens_and_the_count_starts_again():
    assert ends([IT, IS, IT, IS, BLANK, IT, IS], step_tokens=3) == [
        None,
        None,
        "step_tokens",
        None,
        "separator",
        None,
        None,
    ]


def test_split_text_cuts_at_the_tokens_when_their_texts_add_up_and_after_the_separator_otherwise():
    scanner = StepScanner("\n\n", TEXTS)
    assert split_text("It\n\n\n is", [IT, BLANK_AND_NEWLINE, IS], 2, scanner) == ("It\n\n\n", " is")
    # a server's text that is not the tokens' texts joined (a character split across tokens)
    assert split_text("Ité\n\nis", [IT, ACCENT, BLANK, ACCENT, IS], 3, scanner) == ("Ité\n\n", "is")


def test_through_separator_drops_what_follows_the_separator_in_its_token():
    assert through_separator("It is.", "\n\n\n", "\n\n") == "\n\n"
    assert through_separator("It is.\n", "\n", "\n\n") == "\n"  # straddling: the step's text holds half


def test_the_span_buffer_hands_out_one_step_at_a_time():
    read = SpanBuffer(StepScanner("\n\n", TEXTS))
    read.add([IT, IS, BLANK_AND_NEWLINE, IT, IS, BLANK, IT], "It is\n\n\nIt is\n\nIt")
    assert read.take("", room=100) == ([IT, IS, BLANK_AND_NEWLINE], "It is\n\n", "separator")
    assert read.take("", room=100) == ([IT, IS, BLANK], "It is\n\n", "separator")
    assert read.take("", room=100) == ([IT], "It", None) and read.empty
    read.add([IS, IS, IS], " is is is")
    assert read.take("It", room=2) == ([IS, IS], " is is", "room") and read.ids == [IS]


def test_a_buffer_without_a_scanner_gives_everything_to_one_step():
    read = SpanBuffer(None)
    read.add([IT, BLANK, IT], "It\n\nIt")
    assert read.take("", room=10) == ([IT, BLANK, IT], "It\n\nIt", None) and read.empty


@pytest.mark.vllm
def test_the_gate_acts_at_every_step_start_of_a_spanning_request_and_records_each_h_init():
    """`EntropyGate`'s per-request function as vLLM's workers call it, position by position."""
    import math
    from types import SimpleNamespace

    import torch

    from glimp_integrations.backends.vllm_gate import EntropyGate, GateSlots

    gate = object.__new__(EntropyGate)  # (no engine: the per-request logic alone)
    gate._maps, gate._texts = {}, TEXTS
    slots = GateSlots()
    try:
        arguments = slots.claim(threshold=1.0, end_token=END, separator="\n\n")
        at_step_starts = gate.new_req_logits_processor(SimpleNamespace(extra_args=arguments))
        peaked, flat = torch.tensor([5.0] + [0.0] * 7), torch.zeros(8)  # entropies about 0.2 and ln 8
        assert torch.equal(at_step_starts([], peaked.clone()), peaked)  # step 0 starts: delegated
        assert torch.equal(at_step_starts([IT], flat.clone()), flat)  # not a step start: untouched
        forced = at_step_starts([IT, BLANK], flat.clone())  # step 1 starts, above the threshold
        assert forced.argmax() == END and torch.isinf(forced).sum() == 7
        assert slots.entropy(arguments, 0) < 0.3 and math.isclose(
            slots.entropy(arguments, 1), math.log(8), rel_tol=1e-6
        )
        assert slots.entropy(arguments, 2) is None
        # after a preemption vLLM builds the function again over the tokens so far: it finds step 2
        again = gate.new_req_logits_processor(SimpleNamespace(extra_args=arguments))
        assert torch.equal(again([IT, BLANK, IT, DOT_NEWLINE, NEWLINE], peaked.clone()), peaked)
        assert slots.entropy(arguments, 2) < 0.3
        # a request that does not span steps is gated at its first position only
        single = slots.claim(threshold=1.0, end_token=END)
        first_only = gate.new_req_logits_processor(SimpleNamespace(extra_args=single))
        assert torch.equal(first_only([IT, BLANK], flat.clone()), flat) and slots.entropy(single) is None
    finally:
        slots.close()
