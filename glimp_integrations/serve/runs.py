"""A request's run as the APIs of `glimp serve` drive it: its events observed for metrics and
spans on the way, its first event awaited before a response starts (bad settings are then a 400),
and a client that leaves cancelling it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from glimp_integrations import (
    GlimpConfigError,
    GlimpInputError,
    GlimpRouter,
    GlimpRunError,
    GlimpTimeoutError,
    RouterEvent,
    RunFinished,
    RunTrace,
    StepFinished,
    StepStarted,
    TokenDelta,
    set_model_request_headers,
)
from glimp_integrations.serve.limits import Admission, KeyRates, ServerLimits, Ticket
from glimp_integrations.serve.observability import Metrics, Tracing, span_attributes
from glimp_integrations.serve.protocol import FAILURE_STATUS, ROUTING_FIELDS, RequestError, chat_param

logger = logging.getLogger(__name__)


class ServerState:
    """What every request of one app shares: the router, the served id, the operator's limits and
    the admission they set, metrics and tracing."""

    def __init__(
        self, router: GlimpRouter, served_model: str, tracer_provider: Any | None, limits: ServerLimits
    ) -> None:
        self.router = router
        self.served_model = served_model
        self.limits = limits
        self.admission = Admission(limits)
        self.rates = KeyRates(limits)
        self.metrics = Metrics(router)
        self.tracing = Tracing(tracer_provider)

    @property
    def max_model_len(self) -> int:
        """The longest context both models take: no request may ask for more tokens."""
        backend = self.router.backend
        return min(backend.context_window("small"), backend.context_window("large"))

    def error_response(self, error: RequestError, request_id: str | None = None) -> Any:
        """The error in OpenAI's shape (with the request's id), counted by its status and, for a
        refusal, its reason."""
        from fastapi.responses import JSONResponse

        self.metrics.requests.labels(status=str(error.status)).inc()
        if error.reason is not None:
            self.metrics.rejected.labels(reason=error.reason).inc()
        error.request_id = request_id or error.request_id
        headers = {**error.headers, **({"X-Request-Id": error.request_id} if error.request_id else {})}
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    def metrics_text(self) -> bytes:
        self.metrics.queued.set(self.admission.queued)
        return self.metrics.exposition()


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
    events: AsyncGenerator[RouterEvent, None], failure: Callable[[BaseException], RequestError]
) -> RouterEvent:
    """The run's first event, or the RequestError its failure answers (settings or messages the
    engine refuses are a 400 naming the field)."""
    try:
        return await events.__anext__()
    except Exception as error:
        await events.aclose()
        raise failure(error) from error


async def last_event(
    events: AsyncGenerator[RouterEvent, None], first: RouterEvent, failure: Callable[[BaseException], RequestError]
) -> RunTrace | RequestError:
    """The run's trace, or the error that ended it."""
    event = first
    try:
        while not isinstance(event, RunFinished):
            event = await events.__anext__()
    except Exception as error:
        return failure(error)
    finally:
        await events.aclose()
    return event.trace


RUN_FAILURES = {
    "upstream": "a model server failed or stayed unreachable",
    "input": "a model server refused the request as invalid",
    "internal": "an error inside glimp serve",
}


def failure_answer(
    error: BaseException, request_id: str, api_param: Callable[[str | None], str | None]
) -> RequestError:
    """What a run that failed answers.  Settings or messages the engine refused: a 400 naming the
    field.  Anything else: the status of what failed (`GlimpRunError.failure`; 500 for an error
    that is not the engine's), with a message safe to show (no exception text, no internal URLs:
    those go to the log, under the request's id)."""
    if isinstance(error, (GlimpConfigError, GlimpInputError)):
        answer = RequestError(400, str(error), api_param(error.parameter))
    else:
        logger.error("request %s: the run failed", request_id, exc_info=error)
        failure = error.failure if isinstance(error, GlimpRunError) else "internal"
        trace = getattr(error, "partial_trace", None)
        where = f" at step {len(trace.steps)}" if trace is not None else ""
        what = str(error) if isinstance(error, GlimpTimeoutError) else RUN_FAILURES[failure]
        status = FAILURE_STATUS[failure]
        answer = RequestError(
            status,
            f"The run failed{where}: {what} (request {request_id}; the server's log has the details).",
            kind="invalid_request_error" if status == 400 else "server_error",
        )
    answer.request_id = request_id
    return answer


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


LARGE_BODY_BYTES = 1024 * 1024
"""Bodies past this size are parsed on a worker thread, so that the event loop keeps answering."""


async def json_body(request: Any, limits: ServerLimits) -> Any:
    """The request's JSON body: 415 unless it says it is JSON, 413 once it passes
    `limits.max_body_bytes` (declared or read, chunked or not), 408 when it takes longer than
    `limits.body_timeout` to arrive, 400 when it is not JSON or nests deeper than the parser goes."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise RequestError(
            415,
            f"The request body must be JSON (Content-Type: application/json); got {media_type or 'none'}.",
            reason="not_json",
        )
    limit = limits.max_body_bytes
    too_large = RequestError(
        413, f"The request body is over {limit} bytes, the most taken. Send less.", reason="body_too_large"
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []

    async def read() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), limits.body_timeout)
    except asyncio.TimeoutError as error:
        raise RequestError(
            408,
            f"The request body took longer than {limits.body_timeout} s to arrive. Send it at once.",
            reason="body_timeout",
        ) from error
    raw = b"".join(chunks)
    try:
        return await asyncio.to_thread(json.loads, raw) if len(raw) > LARGE_BODY_BYTES else json.loads(raw)
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
    run (a RequestError names what does not fit, in the API's own terms); the operator's limits
    hold it to the ceilings, and admission gives it a slot, a place in line, or a 429."""
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    request_id = f"req_{uuid.uuid4().hex[:20]}"
    key = getattr(request.state, "key_name", None)  # set by the key check, where keys are set
    try:  # capacity and the key's rate first: a flood is refused before its bodies are read
        ticket = state.admission.ticket()  # a 429 at once when the line is full
    except RequestError as error:
        return state.error_response(error, request_id)

    def failure(error: BaseException) -> RequestError:
        return failure_answer(error, request_id, parsed.api_param)

    try:
        state.rates.admit(key)  # a 429 when the key is past its rate
        parsed = parse(await json_body(request, state.limits))
        state.limits.check_run_settings(parsed.arguments, state.router.config)
        if await unless_disconnected(request, ticket.turn()) is None:  # the client left while in line
            ticket.release()
            state.metrics.requests.labels(status="499").inc()
            return Response(status_code=499)
        events = ObservedRun(state, parsed.messages, parsed.arguments).__aiter__()
        first = await first_event(events, failure)  # bad settings fail here, before any response starts
    except RequestError as error:
        ticket.release()
        return state.error_response(error, request_id)
    except BaseException:
        ticket.release()
        raise
    headers = {"X-Request-Id": request_id}
    if parsed.stream:
        lines = stream(state, events, first, parsed.writer, failure, ticket, key)
        return StreamingResponse(lines, media_type="text/event-stream", headers=headers)
    try:
        outcome = await unless_disconnected(request, last_event(events, first, failure))
    finally:
        ticket.release()
    if outcome is None:  # the client left: the run was cancelled
        state.metrics.requests.labels(status="499").inc()
        return Response(status_code=499)
    if isinstance(outcome, RequestError):
        return state.error_response(outcome, request_id)
    state.rates.spend_tokens(key, outcome.prompt_tokens + outcome.completion_tokens)
    state.metrics.requests.labels(status="200").inc()
    return JSONResponse(parsed.writer.whole(outcome), headers=headers)


async def stream(
    state: ServerState,
    events: AsyncGenerator[RouterEvent, None],
    first: RouterEvent,
    writer: StreamWriter,
    failure: Callable[[BaseException], RequestError],
    ticket: Ticket,
    key: str | None,
) -> AsyncIterator[str]:
    """A streamed run's server-sent events.  A disconnect cancels this generator (and the run,
    counted as 499); a run that fails mid-stream, however it fails, ends with the writer's failure
    events, counted by their status."""
    status = "499"
    try:
        for line in writer.start():
            yield line
        event: RouterEvent | None = first
        while event is not None:
            for line in writer.on_event(event):
                yield line
            if isinstance(event, RunFinished):
                state.rates.spend_tokens(key, event.trace.prompt_tokens + event.trace.completion_tokens)
                for line in writer.finish(event.trace):
                    yield line
                break
            event = await events.__anext__()
        status = "200"
    except Exception as error:
        answer = failure(error)
        status = str(answer.status)
        for line in writer.failed(answer):
            yield line
    finally:
        ticket.release()
        await events.aclose()
        state.metrics.requests.labels(status=status).inc()
