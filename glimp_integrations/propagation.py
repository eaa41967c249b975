"""What follows a run into the requests it sends to model servers: the headers that tie those
requests into the caller's trace.

By default each request carries the current OpenTelemetry context (W3C `traceparent`), where
OpenTelemetry is installed: an application's own span then parents the model servers' request
spans.  A service that keeps its spans elsewhere sets a provider instead
(`set_model_request_headers`; `glimp serve` sends the span of the step being routed).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping

HeaderProvider = Callable[[], Mapping[str, str]]
"""Called at each request a backend sends: the headers to add to it."""

_PROVIDER: contextvars.ContextVar[HeaderProvider | None] = contextvars.ContextVar(
    "glimp_model_request_headers", default=None
)


def set_model_request_headers(provider: HeaderProvider | None) -> None:
    """Send `provider()`'s headers with every model-server request of the runs iterated in the
    current context (a task, and the tasks it starts from now on) instead of the OpenTelemetry
    context; None restores that.  A context variable: it follows a run into whichever task
    iterates it, and stays in the task that set it."""
    _PROVIDER.set(provider)


def with_trace_headers(headers: dict[str, str]) -> dict[str, str]:
    """`headers` plus the provider's (`set_model_request_headers`), else the current
    OpenTelemetry context where that is installed."""
    provider = _PROVIDER.get()
    if provider is not None:
        headers.update(provider())
        return headers
    try:
        from opentelemetry.propagate import inject
    except ImportError:
        return headers
    inject(headers)
    return headers
