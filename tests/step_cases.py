"""Checks that any real streaming backend must pass: a probe only measures."""

from __future__ import annotations

from glimp_integrations.backends.base import Backend, SessionSpec
from glimp_integrations.config import SamplingConfig

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have? Think step by step."
"""The question the real-backend tests route (on the embedded pair its steps go to both models)."""
TEA = "Explain how to make tea, step by step, with a blank line between steps."
"""A question whose greedy steps at the embedded default's threshold (3.93) switch models more than once."""


async def _first_step(backend: Backend, probes: tuple[int | None, ...], stop: tuple[str, ...]) -> tuple[str, list]:
    """The small model's first step, greedy, after probing with each of `probes` in turn (as a
    climb up the ladder does): its text, and the distributions the probes returned."""
    spec = SessionSpec([{"role": "user", "content": QUESTION}], SamplingConfig(temperature=0), None, False)
    session = await backend.open_session("small", spec)
    try:
        distributions = [await session.probe(top_k) for top_k in probes]
        return "".join([piece async for piece in session.write(40, stop)]), distributions
    finally:
        await session.aclose()


async def check_probes_leave_the_step_as_it_would_be(backend: Backend) -> None:
    """Probes, escalated to the whole vocabulary, measure the step's first token without changing
    the step the small model then writes, or where its stop string ends it."""
    plain, _ = await _first_step(backend, (), ())
    probed, (top, whole) = await _first_step(backend, (20, None), ())
    assert probed == plain and len(plain) > 4
    assert len(top.top_logprobs) == 20 and whole.is_full
    assert max(abs(a - b) for a, b in zip(top.top_logprobs, whole.top_logprobs)) < 1e-3
    stop = plain[2:4]  # ends the step after its first four characters
    stopped, _ = await _first_step(backend, (20,), (stop,))
    assert stopped == plain[: plain.find(stop) + len(stop)]


def check_steps_count_what_their_probes_prefilled(router) -> None:
    """A step's `prefill_tokens` include the context its probes prefilled (after a switch, the
    small model catches up in the probe): with every step delegated, the small model's steps
    account for all the context it processed."""
    trace = router.run(QUESTION, threshold=float("inf"), reasoning_budget=40, max_step_tokens=12)
    small_steps = [s for s in trace.steps if s.model == "small"]
    assert len(small_steps) >= 2 and all(s.probe for s in small_steps)
    assert sum(s.prefill_tokens for s in small_steps) == trace.usage_by_model["small"]["input_tokens"]
