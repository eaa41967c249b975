"""A check that any real streaming backend must pass: a stop string that begins in the probe's token."""

from __future__ import annotations

from glimp_integrations.backends.base import Backend, SessionSpec
from glimp_integrations.config import SamplingConfig

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have? Think step by step."
"""The question the real-backend tests route (on the embedded pair its steps go to both models)."""


async def _first_step(backend: Backend, stop: tuple[str, ...]) -> tuple[list[str], object]:
    """The small model's first step, greedy, started by a probe: its text pieces and its writer."""
    spec = SessionSpec([{"role": "user", "content": QUESTION}], SamplingConfig(temperature=0), None, False)
    session = await backend.open_session("small", spec)
    try:
        await session.probe(20, 40, stop)
        writer = session.write(40, stop)
        return [piece async for piece in writer], writer
    finally:
        await session.aclose()


async def check_stop_beginning_in_the_probe_token(backend: Backend) -> None:
    """The probe's token and the rest of the step come from two requests; a stop string that
    begins in the first must still end the step, right after it."""
    pieces, _ = await _first_step(backend, ())
    head, text = pieces[0], "".join(pieces)
    assert head and len(text) > len(head) + 2, pieces
    stop = head[-1] + text[len(head):len(head) + 2]
    assert text.find(stop) == len(head) - 1  # it begins in the probe's token, and nowhere earlier
    pieces, writer = await _first_step(backend, (stop,))
    assert "".join(pieces) == text[:len(head) + 2]
    assert writer.end == "stop_string"
