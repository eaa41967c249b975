"""The real embedded model (SmolLM2-135M-Instruct) on the transformers backend, on the CPU."""

import json
import math
import os
import subprocess
import sys

import jsonschema
import pytest

from glimp_integrations import ContextLengthError
from tests.constrained_cases import CASE_IDS, CASES, run_and_check
from tests.step_cases import QUESTION

pytestmark = pytest.mark.embedded


def test_routed_run_on_the_real_model_uses_both_models_and_reuses_caches(embedded_router):
    trace = embedded_router.run(QUESTION, reasoning_budget=80, threshold=0.9)
    assert trace.mode == "plain" and trace.steps
    assert trace.answer == "".join(s.text for s in trace.steps).strip()
    assert sum(trace.tokens_by_model.values()) == trace.completion_tokens <= 80
    context = trace.prompt_tokens
    last_writer = None
    for step in trace.steps:
        assert step.probe is not None and step.probe.basis == "full"  # transformers gives the whole vocabulary
        assert (step.model == "large") == (step.probe.h_init > 0.9)
        if step.index > 0:
            # a model only prefills what it has not seen: never the whole context again
            assert 0 < step.prefill_tokens < context
        if step.model == last_writer:
            assert step.prefill_tokens == 1  # only its own last token, not yet fed
        context += step.tokens
        last_writer = step.model


def test_same_seed_same_trace(embedded_router):
    first = embedded_router.run(QUESTION, reasoning_budget=30, seed=7)
    second = embedded_router.run(QUESTION, reasoning_budget=30, seed=7)
    assert [(s.model, s.text) for s in first.steps] == [(s.model, s.text) for s in second.steps]


@pytest.mark.parametrize("threshold, writer", [(math.inf, "small"), (0.0, "large")])
def test_threshold_extremes(embedded_router, threshold, writer):
    trace = embedded_router.run(QUESTION, reasoning_budget=25, threshold=threshold)
    assert {s.model for s in trace.steps} == {writer}
    assert trace.intervention_rate == (1.0 if writer == "large" else 0.0)


def test_think_mode_on_the_real_model_closes_reasoning_and_the_large_model_answers(embedded_router):
    trace = embedded_router.run(QUESTION, reasoning_mode="think", reasoning_budget=30, answer_budget=15)
    reasoning = [s for s in trace.steps if s.phase == "reasoning"]
    assert reasoning and sum(s.tokens for s in reasoning) <= 30
    answer = trace.steps[-1]
    assert (answer.model, answer.phase, answer.decision) == ("large", "answer", "forced")
    assert 0 < answer.tokens <= 15 and trace.answer == answer.text.strip()


def test_too_long_prompt_on_the_real_model(embedded_router):
    with pytest.raises(ContextLengthError, match="context window is 8192 tokens"):
        embedded_router.run("apple " * 9000)
    assert embedded_router.run("Say hi.", reasoning_budget=5).steps


def _glimp(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "glimp_integrations.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_glimp_ask_json_prints_only_the_trace_of_a_think_mode_run():
    result = _glimp("ask", QUESTION, "--json", "--seed", "0", "--reasoning-budget", "40", "--answer-budget", "20")
    assert result.returncode == 0, result.stderr
    trace = json.loads(result.stdout)
    assert trace["mode"] == "think" and trace["steps"] and trace["answer"]  # the embedded default reasons
    reasoning = [s for s in trace["steps"] if s["phase"] == "reasoning"]
    assert reasoning and sum(s["tokens"] for s in reasoning) <= 40 and trace["reasoning"]
    assert (trace["steps"][-1]["model"], trace["steps"][-1]["phase"]) == ("large", "answer")
    assert set(trace["tokens_by_model"]) == {"small", "large"}
    assert 0.0 <= trace["intervention_rate"] <= 1.0


def test_glimp_ask_shows_each_step_by_model_and_a_summary():
    result = _glimp(
        "ask", QUESTION, "--seed", "0", "--reasoning-budget", "40", "--answer-budget", "20", "--threshold", "0.9"
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[step 0 | " in out and "H_init=" in out and " 0.900 | " in out  # H_init against the threshold
    assert "-- " in out and "intervention rate" in out and "tokens small=" in out
    assert "\x1b[" not in out  # not a terminal: plain text


def test_glimp_ask_on_a_terminal_colours_each_step_by_its_model(monkeypatch):
    """Each step's header and text in its model's colour, the answer set apart, on a terminal;
    plain text when `NO_COLOR` is set."""
    import io

    from glimp_integrations import GlimpRouter
    from glimp_integrations.cli import _ask, terminal_console

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("COLORTERM", "truecolor")  # a terminal that says it shows 24-bit colour
    screen = Terminal()
    # every reasoning step delegated (an infinite threshold), the answer the large model's: both
    # models write, whatever the draws
    router = GlimpRouter(seed=0, threshold=math.inf, temperature=0, reasoning_budget=40, answer_budget=16)
    trace = _ask(router, QUESTION, show=True, console=terminal_console(screen))
    shown = screen.getvalue()
    small, large = "38;2;86;180;233", "38;2;230;159;0"  # the two models' colours, as 24-bit escapes
    assert {s.model for s in trace.steps} == {"small", "large"}
    for step in trace.steps:
        header = "[answer | large]" if step.decision == "forced" else f"[step {step.index} | {step.model} | "
        colour = small if step.model == "small" else large
        assert f"{colour}m{header}" in shown
    assert "7;38;2;230;159;0m[answer | large]" in shown  # the answer's header in reverse video

    monkeypatch.setenv("NO_COLOR", "1")
    assert terminal_console(Terminal()).color_system is None


def test_glimp_ask_reports_bad_input_on_stderr():
    result = _glimp("ask", "hi", "--small", "/no/such/dir", "--large", "/no/such/dir")
    assert result.returncode == 2
    assert "`small`" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("arguments, check", CASES, ids=CASE_IDS)
def test_constrained_answers_are_valid_on_the_embedded_model(embedded_router, arguments, check):
    run_and_check(embedded_router, arguments, check)


def test_a_constrained_answer_is_steered_to_close_before_its_budget_ends(embedded_router):
    """An unbounded list in 60 tokens: the model would keep adding items; the backend closes the
    answer within the budget (its last 15 tokens, a quarter) instead of cutting it."""
    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"type": "string"}}},
        "required": ["items"],
    }
    for seed in range(3):
        trace = embedded_router.run(
            "List every fruit you know as JSON.",
            max_tokens=60,
            seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "f", "schema": schema}},
        )
        answer = trace.steps[-1]
        assert answer.tokens <= 60
        jsonschema.validate(json.loads(trace.answer), schema)
