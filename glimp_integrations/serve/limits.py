"""What the operator of `glimp serve` bounds, and how a request is held to it.

- **Admission** (`Admission`): at most `max_concurrent_runs` runs at once, at most
  `max_queued_runs` more waiting their turn; past both a request is refused at once with a 429 and
  `Retry-After` (it never waits to be refused).
- **Ceilings** (`ServerLimits.check_run_settings`): the router's budgets and timeout are the most a
  request may ask for, and a request may change only the run settings in `client_settings`
  (besides the sampling ones); any other it may name only at the operator's value.
- **Sizes**: the body's bytes and the time to send it (`max_body_bytes`, `body_timeout`); the
  counts and lengths of a request's parts are the wire models' (`serve/wire.py`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from glimp_integrations.config import RouterConfig
from glimp_integrations.serve.protocol import ROUTING_FIELDS, RequestError, shown

CEILINGS = ("reasoning_budget", "answer_budget", "max_step_tokens", "timeout")
"""Run settings a request may lower, never raise past the router's own (None there: no ceiling)."""
DEFAULT_CLIENT_SETTINGS = ("threshold", "reasoning_mode", *CEILINGS)
"""The run settings a request may change unless the operator says otherwise (`--client-settings`);
not the policy, the probe ladder or the parsers, which are the operator's."""
THRESHOLD_RANGE = (0.0, 20.0)
"""The thresholds a request may ask for (nats): every model's H_init lies within."""


@dataclass(frozen=True)
class ServerLimits:
    """An operator's limits for one server (`glimp serve --max-concurrent-runs ...`)."""

    max_concurrent_runs: int = 32
    """Runs in the engines at once; each shares their batches with the others."""
    max_queued_runs: int = 128
    """Requests waiting for a run's slot; past these a request gets a 429 at once."""
    client_settings: tuple[str, ...] = DEFAULT_CLIENT_SETTINGS
    """The run settings a request may change (the sampling settings always)."""
    max_body_bytes: int = 16 * 1024 * 1024
    """The largest request body taken (413 past it, read or not)."""
    body_timeout: float = 30.0
    """Seconds a client may take to send its body (408 past them)."""
    header_timeout: float = 10.0
    """Seconds a new connection may take to send its first request's headers (closed past them)."""
    requests_per_minute: int | None = None
    """Per API key (where keys are set): requests admitted a minute, a token bucket as deep as a
    minute's worth; None: no limit."""
    tokens_per_minute: int | None = None
    """Per API key: tokens (prompt and completion) a minute; a run's are counted when it ends, and a
    key past its budget waits until the bucket refills."""

    def __post_init__(self) -> None:
        from glimp_integrations.errors import invalid

        for name in (
            "max_concurrent_runs",
            "max_queued_runs",
            "max_body_bytes",
            "requests_per_minute",
            "tokens_per_minute",
        ):
            value = getattr(self, name)
            if value is None and name.endswith("per_minute"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name != "max_queued_runs" else 0):
                raise invalid(name, value, "must be a positive integer", "Pass e.g. 32.")
        for name in ("body_timeout", "header_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
                raise invalid(name, value, "must be a positive number of seconds", "Pass e.g. 30.")
        unknown = [name for name in self.client_settings if name not in ROUTING_FIELDS]
        if unknown:
            raise invalid(
                "client_settings",
                unknown,
                f"must name run settings ({', '.join(ROUTING_FIELDS)})",
                "Pass e.g. threshold,reasoning_budget.",
            )

    def check_run_settings(self, arguments: Mapping[str, Any], config: RouterConfig) -> None:
        """A 400 for a run setting the request may not change, or asks for past its ceiling."""
        for name, value in arguments.items():
            if name not in ROUTING_FIELDS:
                continue
            operator_value = getattr(config, name)
            if name not in self.client_settings and value != operator_value:
                raise RequestError(
                    400,
                    f"`{name}` is this server's operator's to set ({shown(operator_value)}); got {shown(value)}. "
                    "Leave it out (the operator can allow it with glimp serve --client-settings).",
                    name,
                    reason="not_allowed",
                )
            ceiling = operator_value if name in CEILINGS else None
            if ceiling is not None and _is_number(value) and value > ceiling:
                raise RequestError(
                    400,
                    f"`{name}` must be at most {ceiling}, this server's ceiling (glimp serve --{name.replace('_', '-')}); "
                    f"got {shown(value)}. Ask for less.",
                    name,
                    reason="over_ceiling",
                )
            low, high = THRESHOLD_RANGE
            if name == "threshold" and _is_number(value) and not low <= value <= high:
                raise RequestError(
                    400, f"`threshold` must be from {low} to {high} nats; got {shown(value)}. Pass e.g. 0.9.", name
                )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Admission:
    """Slots for runs, and a bounded line for them: `ticket()` admits a request or refuses it (a 429)
    at once; the ticket's `turn()` waits for a slot; `release()` frees it."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.running = 0
        self.queued = 0
        self._slots: asyncio.Semaphore | None = None
        self.mean_run_seconds = 10.0
        """A moving average of how long runs hold a slot (for `Retry-After`)."""

    def ticket(self) -> Ticket:
        limits = self.limits
        if self.running + self.queued >= limits.max_concurrent_runs + limits.max_queued_runs:
            retry_after = max(1, math.ceil(self.mean_run_seconds))
            raise RequestError(
                429,
                f"glimp serve is at capacity ({limits.max_concurrent_runs} runs, {limits.max_queued_runs} waiting). "
                f"Retry after {retry_after} s.",
                kind="rate_limit_error",
                code="rate_limit_exceeded",
                reason="capacity",
                headers={"Retry-After": str(retry_after)},
            )
        self.queued += 1
        return Ticket(self)

    @property
    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:  # made on the loop that serves
            self._slots = asyncio.Semaphore(self.limits.max_concurrent_runs)
        return self._slots


class Ticket:
    """One request's place: queued until `turn()` returns, running until `release()`."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.state = "queued"
        self.started = 0.0

    async def turn(self) -> bool:
        """Wait for a slot (True once this request runs)."""
        admission = self.admission
        try:
            await admission.slots.acquire()
        except BaseException:
            self.release()
            raise
        admission.queued -= 1
        admission.running += 1
        self.state, self.started = "running", time.monotonic()
        return True

    def release(self) -> None:
        admission = self.admission
        if self.state == "queued":
            admission.queued -= 1
        elif self.state == "running":
            admission.running -= 1
            admission.slots.release()
            seconds = time.monotonic() - self.started
            admission.mean_run_seconds = 0.9 * admission.mean_run_seconds + 0.1 * seconds
        self.state = "released"


class TokenBucket:
    """`per_minute` units a minute, at most a minute's worth saved up; spending may run it below zero
    (a run's tokens are known only when it ends), and then the next `wait` is longer."""

    def __init__(self, per_minute: int) -> None:
        self.rate, self.capacity = per_minute / 60.0, float(per_minute)
        self.level, self.updated = self.capacity, time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait(self, amount: float = 1.0) -> float:
        """Seconds until `amount` can be spent (0: now)."""
        self._refill()
        return max(0.0, (amount - self.level) / self.rate)

    def spend(self, amount: float) -> None:
        self._refill()
        self.level -= amount


class KeyRates:
    """Each API key's request and token buckets (`ServerLimits.requests_per_minute` and
    `tokens_per_minute`), by the key's name."""

    def __init__(self, limits: ServerLimits) -> None:
        self.per_minute = {"requests": limits.requests_per_minute, "tokens": limits.tokens_per_minute}
        self.buckets: dict[tuple[str, str], TokenBucket] = {}

    def _bucket(self, what: str, key: str) -> TokenBucket | None:
        rate = self.per_minute[what]
        return None if rate is None else self.buckets.setdefault((what, key), TokenBucket(rate))

    def admit(self, key: str | None) -> None:
        """Spend one request of `key`'s budget, or a 429 saying when to come back."""
        if key is None:
            return
        for what in ("requests", "tokens"):
            bucket = self._bucket(what, key)
            seconds = bucket.wait() if bucket is not None else 0.0
            if seconds > 0:
                retry_after = max(1, math.ceil(seconds))
                raise RequestError(
                    429,
                    f"The API key `{key}` is past its {what} a minute on this server. Retry after {retry_after} s.",
                    kind="rate_limit_error",
                    code="rate_limit_exceeded",
                    reason="rate_limit",
                    headers={"Retry-After": str(retry_after)},
                )
        if (requests := self._bucket("requests", key)) is not None:
            requests.spend(1.0)

    def spend_tokens(self, key: str | None, tokens: int) -> None:
        if key is not None and (bucket := self._bucket("tokens", key)) is not None:
            bucket.spend(tokens)
