"""A request's run as the APIs of `glimp serve` drive it: its events observed for metrics and
spans on the way, its first event awaited before a response starts (bad settings are then a 400),
and a client that leaves cancelling it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from glimp_integrations import (
    GlimpConfigError,
    GlimpInputError,
    GlimpRouter,
    GlimpRunError,
    RouterEvent,
    RunFinished,
    RunTrace,
    StepFinished,
    StepStarted,
    TokenDelta,
    set_model_request_headers,
)
from glimp_integrations.serve.observability import Metrics, Tracing, span_attributes
from glimp_integrations.serve.protocol import ROUTING_FIELDS, RequestError, chat_param, run_failure


class ServerState:
    """What every request of one app shares: the router, the served id, metrics and tracing."""

    def __init__(self, router: GlimpRouter, served_model: str, tracer_provider: Any | None) -> None:
        self.router = router
        self.served_model = served_model
        self.metrics = Metrics(router)
        self.tracing = Tracing(tracer_provider)

    @property
    def max_model_len(self) -> int:
        """The longest context both models take: no request may ask for more tokens."""
        backend = self.router.backend
        return min(backend.context_window("small"), backend.context_window("large"))

    def error_response(self, error: RequestError) -> Any:
        """The error in OpenAI's shape, counted by its status."""
        from fastapi.responses import JSONResponse

        self.metrics.requests.labels(status=str(error.status)).inc()
        return JSONResponse(error.body(), status_code=error.status)


class ObservedRun:
    """One request's run: its events, observed for metrics and spans as they pass."""

    def __init__(self, app_state: ServerState, messages: list[dict[str, Any]], arguments: dict[str, Any]) -> None:
        self.state = app_state
        self.started = time.perf_counter()
        self.first_token: float | None = None
        self.last_token = 0.0
        self.events = app_state.router.astream(messages, **arguments)
        self.span = app_state.tracing.run_span({k: v for k, v in arguments.items() if k in ROUTING_FIELDS})
        self.step_span: Any = None
        """The span of the step being routed or written; the model servers' requests name it as parent."""
        self.step_began = time.time_ns()
        set_model_request_headers(lambda: app_state.tracing.headers(self.current_step_span()))

    def current_step_span(self) -> Any:
        """The coming step's span, started when first needed (a probe's request, or the step's start)."""
        if self.step_span is None:
            self.step_span = self.state.tracing.step_span(self.span, self.step_began)
        return self.step_span

    async def __aiter__(self) -> AsyncGenerator[RouterEvent, None]:
        state, tracing = self.state, self.state.tracing
        state.metrics.running.inc()
        try:
            async for event in self.events:
                if isinstance(event, TokenDelta) and event.text:
                    self.last_token = time.perf_counter() - self.started
                    if self.first_token is None:
                        self.first_token = self.last_token
                elif isinstance(event, StepStarted):
                    self.current_step_span()
                elif isinstance(event, StepFinished):
                    state.metrics.observe_step(event)
                    tracing.end_step_span(self.current_step_span(), event.step.routing())
                    self.step_span, self.step_began = None, time.time_ns()
                elif isinstance(event, RunFinished):
                    state.metrics.observe_run(event.trace, self.first_token, self.last_token)
                    self.span.set_attributes(span_attributes(event.trace.summary()))
                yield event
        except BaseException as error:
            self.span.record_exception(error)
            raise
        finally:
            await self.events.aclose()
            if self.step_span is not None:
                self.step_span.end()
            self.span.end()
            state.metrics.running.dec()


async def first_event(
    events: AsyncGenerator[RouterEvent, None], api_param: Callable[[str | None], str | None]
) -> RouterEvent:
    """The run's first event; a RequestError 400 naming the field (`api_param` of the engine's
    parameter) when the engine refuses the run's settings or messages."""
    try:
        return await events.__anext__()
    except (GlimpConfigError, GlimpInputError) as error:
        await events.aclose()
        raise RequestError(400, str(error), api_param(error.parameter)) from error
    except GlimpRunError as error:
        await events.aclose()
        raise run_failure(error) from error


async def last_event(events: AsyncGenerator[RouterEvent, None], first: RouterEvent) -> RunTrace | RequestError:
    """The run's trace, or the error that ended it."""
    event = first
    try:
        while not isinstance(event, RunFinished):
            event = await events.__anext__()
    except GlimpRunError as error:
        return run_failure(error)
    finally:
        await events.aclose()
    return event.trace


async def unless_disconnected(request: Any, work: Any) -> Any:
    """Await `work`, cancelling it (None) if the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    return task.result() if not task.cancelled() else None


MAX_BODY_BYTES = 16 * 1024 * 1024
"""The largest request body taken (413 above): long conversations fit, a runaway client does not."""


async def json_body(request: Any, limit: int = MAX_BODY_BYTES) -> Any:
    """The request's JSON body; RequestError 413 above `limit` bytes, 400 when it is not JSON or
    nests deeper than the parser goes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"The request body is {declared} bytes; at most {limit} are taken. Send less.")
    raw = await request.body()
    if len(raw) > limit:
        raise RequestError(413, f"The request body is {len(raw)} bytes; at most {limit} are taken. Send less.")
    try:
        return json.loads(raw)
    except RecursionError as error:
        raise RequestError(400, "The request body nests JSON deeper than this server parses. Flatten it.") from error
    except ValueError as error:  # not JSON, or not UTF-8
        raise RequestError(400, f"The request body is not valid JSON ({error}).") from error


class StreamWriter(Protocol):
    """How an API streams a run: server-sent event lines for its start, each router event, its end
    and a failure mid-stream; and the whole answer when not streamed."""

    def start(self) -> list[str]: ...

    def on_event(self, event: RouterEvent) -> list[str]: ...

    def finish(self, trace: RunTrace) -> list[str]: ...

    def failed(self, failure: RequestError) -> list[str]: ...

    def whole(self, trace: RunTrace) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ParsedRequest:
    """What an API makes of a request body: the run's messages and `GlimpRouter.astream`
    arguments, the writer of its answer, and whether to stream it."""

    messages: list[dict[str, Any]]
    arguments: dict[str, Any]
    writer: StreamWriter
    stream: bool
    api_param: Callable[[str | None], str | None] = chat_param
    """An engine error's parameter as this API names the field."""


async def answer(state: ServerState, request: Any, parse: Callable[[Any], ParsedRequest]) -> Any:
    """A request's routed run, answered whole or streamed: `parse` turns the JSON body into the
    run (a RequestError names what does not fit, in the API's own terms)."""
    from fastapi.responses import Response, StreamingResponse

    try:
        parsed = parse(await json_body(request))
        events = ObservedRun(state, parsed.messages, parsed.arguments).__aiter__()
        first = await first_event(events, parsed.api_param)  # bad settings fail here, before any response starts
    except RequestError as error:
        return state.error_response(error)
    if parsed.stream:
        return StreamingResponse(stream(state, events, first, parsed.writer), media_type="text/event-stream")
    outcome = await unless_disconnected(request, last_event(events, first))
    if outcome is None:  # the client left: the run was cancelled
        state.metrics.requests.labels(status="499").inc()
        return Response(status_code=499)
    if isinstance(outcome, RequestError):
        return state.error_response(outcome)
    state.metrics.requests.labels(status="200").inc()
    return parsed.writer.whole(outcome)


async def stream(
    state: ServerState, events: AsyncGenerator[RouterEvent, None], first: RouterEvent, writer: StreamWriter
) -> AsyncIterator[str]:
    """A streamed run's server-sent events.  A disconnect cancels this generator (and the run); a
    run that fails mid-stream ends with the writer's failure events."""
    status = "499"
    try:
        for line in writer.start():
            yield line
        event: RouterEvent | None = first
        while event is not None:
            for line in writer.on_event(event):
                yield line
            if isinstance(event, RunFinished):
                for line in writer.finish(event.trace):
                    yield line
                break
            event = await events.__anext__()
        status = "200"
    except GlimpRunError as error:
        failure = run_failure(error)
        status = str(failure.status)
        for line in writer.failed(failure):
            yield line
    finally:
        await events.aclose()
        state.metrics.requests.labels(status=status).inc()
