"""`glimp serve`: one `GlimpRouter` behind an OpenAI-compatible HTTP API (FastAPI on uvicorn).

Endpoints: `POST /v1/chat/completions` (streamed as server-sent events, or not), `GET /v1/models`,
`GET /health` (200 when both models can serve, else 503 naming the one that cannot) and
`GET /metrics` (Prometheus).  What a response carries beyond OpenAI's fields:
- `reasoning_content` in the message and in stream deltas: the routed reasoning (`think` mode),
  as vLLM's reasoning parsers and the DeepSeek API send it;
- `glimp`, an extension field: on a response, `{"steps": [routing of each step], "summary": {...}}`;
  in a stream, chunks with empty `choices` carry `{"step_started": {...}}` when a step's writer
  is chosen, `{"step_finished": {...}}` (the step's routing: model, H_init, tokens, seconds,
  drafted/accepted tokens) when it ends, and `{"summary": {...}}` before the usage chunk;
- `usage.completion_tokens_details.reasoning_tokens`, and `usage.by_model`: input and output
  tokens each model computed (prefills after a switch and probes included).
Request fields: OpenAI's chat fields that map onto the engine (`messages`, `max_tokens` /
`max_completion_tokens`, `temperature`, `top_p`, `seed`, `stop`, `tools`, `tool_choice`,
`parallel_tool_calls`, `response_format`, `stream`, `stream_options`, `n`=1, `user`), vLLM's
`structured_outputs` (one of `json`, `json_object`, `regex`, `choice`, `grammar`), and any
run setting of `RouterConfig` as an extra body field (`threshold`, `policy`, `reasoning_mode`,
`reasoning_budget`, ...).  An unknown field, or a value the engine rejects, is a 400 error in
OpenAI's shape naming the field.  A client that disconnects cancels its run, which aborts its
engine requests.  A model server that fails mid-run ends the run with a 502 naming it; any other
failure of a run is a 500.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from glimp_integrations import _sync
from glimp_integrations.backends.base import REQUEST_HEADERS
from glimp_integrations.backends.openai import ServerError
from glimp_integrations.config import CONFIG_FIELDS, did_you_mean
from glimp_integrations.constraints import CALL_CLOSE, CALL_OPEN, AnswerConstraint
from glimp_integrations.errors import GlimpConfigError, GlimpInputError, GlimpRunError, require_module
from glimp_integrations.router import GlimpRouter
from glimp_integrations.tools import parse_tool_calls, partial_tool_calls
from glimp_integrations.trace import RouterEvent, RunFinished, RunTrace, StepFinished, StepStarted, TokenDelta

OPENAI_FIELDS: tuple[str, ...] = (
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "seed", "stop", "n", "tools", "tool_choice", "parallel_tool_calls", "response_format", "user")
"""The chat-completion fields `glimp serve` honours."""
STRUCTURED_OUTPUT_KINDS = ("json", "json_object", "regex", "choice", "grammar")
"""The forms of vLLM's `structured_outputs` field that `glimp serve` takes (one per request)."""
UNSUPPORTED_FIELDS: dict[str, Any] = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0), "logit_bias": (None, {}), "audio": (None,), "modalities": (None, ["text"]),
    "prediction": (None,), "reasoning_effort": (None,), "web_search_options": (None,),
}
"""OpenAI fields accepted only at their "off" values (a request may carry them unset)."""
IGNORED_FIELDS = ("store", "metadata", "service_tier", "include_reasoning")
"""Fields that do not change the answer (storage, billing tier, labels): accepted and not used."""
ROUTING_FIELDS: tuple[str, ...] = tuple(f for f in CONFIG_FIELDS if f not in OPENAI_FIELDS)
"""Run settings accepted as extra body fields (`threshold`, `policy`, ...)."""


class RequestError(Exception):
    """A request the server answers with an OpenAI-style error (`status`, `param`)."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.param, self.kind = status, param, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.status}}


def run_arguments(body: Any, served_model: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The messages and `GlimpRouter.astream` keyword arguments of a chat-completion request body;
    RequestError naming the field for anything that is unknown or cannot be honoured."""
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    for name, value in body.items():
        if name in UNSUPPORTED_FIELDS and value not in UNSUPPORTED_FIELDS[name]:
            raise RequestError(400, f"`{name}` is not supported by glimp serve; got {value!r}. Leave it unset.", name)
        if name not in OPENAI_FIELDS and name not in UNSUPPORTED_FIELDS and name not in IGNORED_FIELDS \
                and name not in ROUTING_FIELDS and name != "structured_outputs":
            raise RequestError(400, f"Unknown field `{name}`; got {value!r}. "
                                    f"{did_you_mean(name, [*OPENAI_FIELDS, *ROUTING_FIELDS])}Accepted: OpenAI's "
                                    f"chat fields and the routing settings {', '.join(ROUTING_FIELDS)}.", name)
    if body.get("model") not in (None, served_model):
        raise RequestError(404, f"`model` must be `{served_model}`, the model this server serves; got "
                                f"{body['model']!r}.", "model", kind="not_found_error")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "`messages` must be a non-empty list of chat messages.", "messages")
    if body.get("n", 1) not in (1, None):
        raise RequestError(400, f"`n` must be 1 (one routed answer per request); got {body['n']!r}.", "n")
    arguments: dict[str, Any] = {name: body[name] for name in ROUTING_FIELDS if body.get(name) is not None}
    for name in ("temperature", "top_p", "seed", "stop", "tools", "parallel_tool_calls", "response_format"):
        if body.get(name) is not None:
            arguments[name] = body[name]
    if body.get("structured_outputs") is not None:
        if "response_format" in arguments:
            raise RequestError(400, "Pass either `response_format` or `structured_outputs`, not both.",
                               "structured_outputs")
        arguments["response_format"] = _structured_outputs(body["structured_outputs"])
    if isinstance(arguments.get("stop"), str):
        arguments["stop"] = [arguments["stop"]]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        arguments["max_tokens"] = max_tokens
    if body.get("tool_choice") is not None:
        arguments["tool_choice"] = _tool_choice(body["tool_choice"])
    return messages, arguments


def _structured_outputs(spec: Any) -> AnswerConstraint:
    """vLLM's `structured_outputs` field ({"json": schema}, {"json_object": true}, {"regex": ...},
    {"choice": [...]} or {"grammar": ...}) as the engine's constraint, checked here so that an
    error names this field."""
    given = {key: value for key, value in spec.items() if value not in (None, False)} if isinstance(spec, dict) else {}
    if len(given) != 1 or next(iter(given)) not in STRUCTURED_OUTPUT_KINDS:
        raise RequestError(400, f"`structured_outputs` must set one of {', '.join(STRUCTURED_OUTPUT_KINDS)}; got "
                                f"{spec!r}.", "structured_outputs")
    kind, value = next(iter(given.items()))
    try:
        if kind == "json":
            schema = json.loads(value) if isinstance(value, str) else value
            return AnswerConstraint.json_schema(schema, name="structured_outputs")
        return AnswerConstraint.json_object() if kind == "json_object" else \
            AnswerConstraint.from_response_format({"type": kind, kind: value})
    except ValueError as error:  # the engine's GlimpConfigError, or a `json` string that is not JSON
        raise RequestError(400, f"`structured_outputs` {spec!r} cannot be applied: {error}",
                           "structured_outputs") from error


def _tool_choice(choice: Any) -> str:
    """OpenAI's tool_choice (a mode, or {"type": "function", "function": {"name": ...}}) as the engine's string."""
    if isinstance(choice, str):
        return choice
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str):
        raise RequestError(400, f"`tool_choice` must be auto, required, none or "
                                f'{{"type": "function", "function": {{"name": ...}}}}; got {choice!r}.', "tool_choice")
    return name


def _openai_param(parameter: str | None) -> str | None:
    """A Glimp error's parameter as the request names it: the router's `prompt` is `messages`."""
    if parameter and parameter.startswith("prompt"):
        return "messages" + parameter.removeprefix("prompt")
    return parameter


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self, router: GlimpRouter) -> None:
        self._prometheus = prometheus = require_module("prometheus_client", "serve", "glimp serve's /metrics")
        prometheus.disable_created_metrics()  # no `_created` series beside each counter
        self.registry = registry = prometheus.CollectorRegistry()
        self.requests = prometheus.Counter("glimp_requests", "Chat-completion requests by HTTP status "
                                           "(499: the client disconnected)", ["status"], registry=registry)
        self.steps = prometheus.Counter("glimp_steps", "Steps written, by writer and phase",
                                        ["model", "phase"], registry=registry)
        self.retries = prometheus.Counter("glimp_step_retries", "Requests sent again after a model server failed "
                                          "them (a replica died, a stream was cut), by the step's writer", ["model"],
                                          registry=registry)
        self.tokens = prometheus.Counter("glimp_model_tokens", "Tokens each model computed (input: prompt and "
                                         "prefills, output: generated)", ["model", "kind"], registry=registry)
        self.h_init = prometheus.Histogram("glimp_h_init_nats", "Entropy of each routed step's probe (nats)",
                                           buckets=(0.1, 0.25, 0.5, 0.9, 1.5, 2.5, 4, 6, 8, 11), registry=registry)
        self.probe_seconds = prometheus.Histogram("glimp_probe_seconds", "Time to settle a step's writer",
                                                  registry=registry)
        self.first_token = prometheus.Histogram("glimp_time_to_first_token_seconds",
                                                "Time from request to the first streamed token", registry=registry)
        self.per_token = prometheus.Histogram(
            "glimp_time_per_output_token_seconds", "Time per output token after the first, per run",
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5), registry=registry)
        self.running = prometheus.Gauge("glimp_runs_running", "Runs in progress", registry=registry)
        self._engine_requests = prometheus.Gauge("glimp_engine_requests_running", "Requests each role's engine or "
                                                 "server is running for this process", ["model"], registry=registry)
        self._router = router

    def exposition(self) -> bytes:
        for role, count in (self._router.backend.running_requests() or {}).items():
            self._engine_requests.labels(model=role).set(count)
        return self._prometheus.generate_latest(self.registry)

    def observe_step(self, event: StepFinished) -> None:
        step = event.step
        self.steps.labels(model=step.model, phase=step.phase).inc()
        if step.retries:
            self.retries.labels(model=step.model).inc(step.retries)
        if step.probe is not None:
            if step.probe.h_init is not None:
                self.h_init.observe(step.probe.h_init)
            self.probe_seconds.observe(step.probe.seconds)

    def observe_run(self, trace: RunTrace, first_token_seconds: float | None, last_token_seconds: float) -> None:
        for model, usage in trace.usage_by_model.items():
            for kind in ("input", "output"):
                self.tokens.labels(model=model, kind=kind).inc(usage.get(f"{kind}_tokens", 0))
        if first_token_seconds is not None:
            self.first_token.observe(first_token_seconds)
            if trace.completion_tokens > 1:
                self.per_token.observe((last_token_seconds - first_token_seconds) / (trace.completion_tokens - 1))


class _Tracing:
    """OpenTelemetry spans: `glimp.run` per request, `glimp.step` per step (no-ops unless a tracer
    provider with an exporter is configured)."""

    def __init__(self, tracer_provider: Any | None) -> None:
        from opentelemetry import trace  # installed with glimp[serve]

        self._api = trace
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("glimp")

    def run_span(self, attributes: Mapping[str, Any]) -> Any:
        return self.tracer.start_span("glimp.run", attributes=_span_attributes(attributes))

    def headers(self, span: Any) -> dict[str, str]:
        """W3C trace context headers naming `span` as the parent of a model server's request."""
        from opentelemetry.propagate import inject

        headers: dict[str, str] = {}
        inject(headers, context=self._api.set_span_in_context(span))
        return headers

    def step_span(self, run: Any, started_ns: int) -> Any:
        """A step's span, from the end of the step before: its probe and its requests are children."""
        return self.tracer.start_span("glimp.step", context=self._api.set_span_in_context(run), start_time=started_ns)

    @staticmethod
    def end_step_span(span: Any, step: Mapping[str, Any]) -> None:
        span.set_attributes(_span_attributes(step, prefix="glimp.step."))
        span.end()


def _span_attributes(values: Mapping[str, Any], prefix: str = "glimp.") -> dict[str, Any]:
    return {prefix + k: v for k, v in values.items() if isinstance(v, (str, bool, int, float))}


class _Run:
    """One request's run: its events, observed for metrics and spans as they pass."""

    def __init__(self, app_state: _State, messages: list[dict[str, Any]], arguments: dict[str, Any]) -> None:
        self.state = app_state
        self.started = time.perf_counter()
        self.first_token: float | None = None
        self.last_token = 0.0
        self.events = app_state.router.astream(messages, **arguments)
        self.span = app_state.tracing.run_span({k: v for k, v in arguments.items() if k in ROUTING_FIELDS})
        self.step_span: Any = None
        """The span of the step being routed or written; the model servers' requests name it as parent."""
        self.step_began = time.time_ns()
        REQUEST_HEADERS.set(lambda: app_state.tracing.headers(self.current_step_span()))

    def current_step_span(self) -> Any:
        """The coming step's span, started when first needed (a probe's request, or the step's start)."""
        if self.step_span is None:
            self.step_span = self.state.tracing.step_span(self.span, self.step_began)
        return self.step_span

    async def __aiter__(self) -> AsyncIterator[RouterEvent]:
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
                    self.span.set_attributes(_span_attributes(event.trace.summary()))
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


class _ChunkWriter:
    """Turns a run's events into `chat.completion.chunk` payloads.  Reasoning deltas go out as
    `reasoning_content`; the answer as `content`, or, when the request has tools, as `tool_calls`
    once a `<tool_call>` starts (a call's name when it is complete, its arguments when the call is)."""

    def __init__(self, completion_id: str, model: str, tool_names: list[str]) -> None:
        self.base = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": model}
        self.tool_names = tool_names
        self.answer = ""
        self.content_sent = 0
        self.announced: list[str] = []
        """Ids of the tool calls whose name has been sent, in order."""
        self.arguments_sent = 0

    def chunk(self, delta: dict[str, Any] | None = None, finish_reason: str | None = None,
              **extra: Any) -> dict[str, Any]:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish_reason}]
        return {**self.base, "choices": choices, **extra}

    def on_event(self, event: RouterEvent) -> list[dict[str, Any]]:
        if isinstance(event, StepStarted):
            probe = event.probe
            return [self.chunk(glimp={"step_started": {
                "index": event.index, "model": event.model, "phase": event.phase, "decision": event.decision,
                "h_init": probe.h_init if probe else None}})]
        if isinstance(event, StepFinished):
            return [self.chunk(glimp={"step_finished": event.step.routing()})]
        if isinstance(event, TokenDelta) and event.text:
            if event.phase == "reasoning":
                return [self.chunk({"reasoning_content": event.text})]
            self.answer += event.text
            return self._answer_chunks(final=False)
        return []

    def finish(self, trace: RunTrace, include_usage: bool) -> list[dict[str, Any]]:
        chunks = self._answer_chunks(final=True)
        chunks.append(self.chunk({}, finish_reason=_finish_reason(trace, bool(self.announced))))
        chunks.append(self.chunk(glimp={"summary": trace.summary()}))
        if include_usage:
            chunks.append(self.chunk(usage=usage(trace)))
        return chunks

    def _answer_chunks(self, final: bool) -> list[dict[str, Any]]:
        if not self.tool_names:
            text, self.content_sent = self.answer[self.content_sent:], len(self.answer)
            return [self.chunk({"content": text})] if text else []
        chunks = []
        call_start = self.answer.find(CALL_OPEN)
        free_text_end = len(self.answer) if call_start < 0 else call_start
        if call_start < 0 and not final:  # hold back what may be the start of `<tool_call>`
            free_text_end -= _partial_suffix(self.answer, CALL_OPEN)
        if free_text_end > self.content_sent:
            chunks.append(self.chunk({"content": self.answer[self.content_sent:free_text_end]}))
            self.content_sent = free_text_end
        if call_start < 0:
            return chunks
        if final:
            calls = [(c.name, c.arguments) for c in parse_tool_calls(self.answer, self.tool_names)[1]]
            complete = len(calls)
        else:
            calls = partial_tool_calls(self.answer, self.tool_names)
            complete = min(len(calls), self.answer.count(CALL_CLOSE))
        for index, (name, _) in enumerate(calls[len(self.announced):], start=len(self.announced)):
            call_id = f"call_{uuid.uuid4().hex[:12]}"
            self.announced.append(call_id)
            chunks.append(self.chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                                      "function": {"name": name, "arguments": ""}}]}))
        for index in range(self.arguments_sent, complete):
            chunks.append(self.chunk({"tool_calls": [{"index": index, "function": {
                "arguments": json.dumps(calls[index][1])}}]}))
        self.arguments_sent = max(self.arguments_sent, complete)
        return chunks


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that begins `tag` (0 if none)."""
    return next((n for n in range(min(len(tag) - 1, len(text)), 0, -1) if tag.startswith(text[-n:])), 0)


def _finish_reason(trace: RunTrace, called: bool) -> str:
    return "tool_calls" if called else "length" if trace.finish_reason == "budget" else "stop"


def usage(trace: RunTrace) -> dict[str, Any]:
    """OpenAI's usage object for a run, with `by_model` (what each model computed) added."""
    return {"prompt_tokens": trace.prompt_tokens, "completion_tokens": trace.completion_tokens,
            "total_tokens": trace.prompt_tokens + trace.completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": trace.reasoning_tokens},
            "by_model": {model: dict(counts) for model, counts in trace.usage_by_model.items()}}


def completion(trace: RunTrace, completion_id: str, model: str, tool_names: list[str]) -> dict[str, Any]:
    """The `chat.completion` response for a finished run."""
    text, calls = parse_tool_calls(trace.answer, tool_names) if tool_names else (trace.answer, [])
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else ""),
                               "reasoning_content": trace.reasoning or None}
    if calls:
        message["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": json.dumps(c.arguments)}} for c in calls]
    return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": _finish_reason(trace, bool(calls))}],
            "usage": usage(trace),
            "glimp": {"steps": [step.routing() for step in trace.steps], "summary": trace.summary()}}


class _State:
    def __init__(self, router: GlimpRouter, served_model: str, tracer_provider: Any | None) -> None:
        self.router = router
        self.served_model = served_model
        self.metrics = Metrics(router)
        self.tracing = _Tracing(tracer_provider)


def create_app(router: GlimpRouter, served_model_name: str | None = None, *, tracer_provider: Any | None = None) -> Any:
    """The FastAPI app serving `router`.  `served_model_name` is the id clients pass as `model`
    (default: "glimp"); `tracer_provider` an OpenTelemetry provider for the run and step spans
    (default: the global one, a no-op unless configured)."""
    fastapi = require_module("fastapi", "serve", "glimp serve")
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    state = _State(router, served_model_name or "glimp", tracer_provider)
    app = fastapi.FastAPI(title="glimp serve", description=__doc__)
    app.state.glimp = state

    def error_response(error: RequestError) -> Any:
        state.metrics.requests.labels(status=str(error.status)).inc()
        return JSONResponse(error.body(), status_code=error.status)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        backend = router.backend
        return {"object": "list", "data": [{
            "id": state.served_model, "object": "model", "created": 0, "owned_by": "glimp",
            "small_model": backend.model_name("small"), "large_model": backend.model_name("large"),
            "max_model_len": min(backend.context_window("small"), backend.context_window("large"))}]}

    @app.get("/health")
    @app.get("/readyz")
    async def health() -> Any:
        """Readiness: 503 naming each model (server) that cannot serve now."""
        problems = {role: problem for role, problem in (await router.backend.health()).items() if problem}
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
        return {"status": "ok"}

    @app.get("/livez")
    async def live() -> Any:
        """Liveness: the process answers (a model server that is down is readiness's concern, not a restart's)."""
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Any:
        return Response(state.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def chat_completions(request: Any) -> Any:
        try:
            body = await request.json()
        except ValueError:
            return error_response(RequestError(400, "The request body is not valid JSON."))
        try:
            messages, arguments = run_arguments(body, state.served_model)
            tool_names = [t.get("function", t).get("name") for t in arguments.get("tools") or []]
            run = _Run(state, messages, arguments)
            events = run.__aiter__()
            first = await _first_event(events)  # bad settings fail here, before any response starts
        except RequestError as error:
            return error_response(error)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            writer = _ChunkWriter(completion_id, state.served_model, tool_names)
            return StreamingResponse(_sse(state, events, first, writer, include_usage),
                                     media_type="text/event-stream")
        outcome = await _unless_disconnected(request, _last_event(events, first))
        if outcome is None:  # the client left: the run was cancelled
            state.metrics.requests.labels(status="499").inc()
            return Response(status_code=499)
        if isinstance(outcome, RequestError):
            return error_response(outcome)
        state.metrics.requests.labels(status="200").inc()
        return completion(outcome, completion_id, state.served_model, tool_names)

    chat_completions.__annotations__["request"] = fastapi.Request  # (annotations are strings in this module)
    app.post("/v1/chat/completions")(chat_completions)
    return app


def _run_failure(error: GlimpRunError) -> RequestError:
    """A run that failed: 502 when a model server failed (the error names it), else 500."""
    return RequestError(502 if isinstance(error.__cause__, ServerError) else 500, str(error), kind="server_error")


async def _first_event(events: AsyncIterator[RouterEvent]) -> RouterEvent:
    try:
        return await events.__anext__()
    except (GlimpConfigError, GlimpInputError) as error:
        await events.aclose()
        raise RequestError(400, str(error), _openai_param(error.parameter)) from error
    except GlimpRunError as error:
        await events.aclose()
        raise _run_failure(error) from error


async def _last_event(events: AsyncIterator[RouterEvent], first: RouterEvent) -> RunTrace | RequestError:
    """The run's trace, or the error that ended it."""
    event = first
    try:
        while not isinstance(event, RunFinished):
            event = await events.__anext__()
    except GlimpRunError as error:
        return _run_failure(error)
    finally:
        await events.aclose()
    return event.trace


async def _unless_disconnected(request: Any, work: Any) -> Any:
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


async def _sse(state: _State, events: AsyncIterator[RouterEvent], first: RouterEvent, writer: _ChunkWriter,
               include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events of a streamed run.  A disconnect cancels this generator (and the run);
    an error mid-stream goes out as an `error` event, as vLLM sends it."""
    status = "499"
    try:
        yield _data(writer.chunk({"role": "assistant", "content": ""}))
        event: RouterEvent | None = first
        while event is not None:
            for chunk in writer.on_event(event):
                yield _data(chunk)
            if isinstance(event, RunFinished):
                for chunk in writer.finish(event.trace, include_usage):
                    yield _data(chunk)
                break
            event = await events.__anext__()
        yield "data: [DONE]\n\n"
        status = "200"
    except GlimpRunError as error:
        failure = _run_failure(error)
        status = str(failure.status)
        yield _data(failure.body())
        yield "data: [DONE]\n\n"
    finally:
        await events.aclose()
        state.metrics.requests.labels(status=status).inc()


def _data(payload: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def serve(router: GlimpRouter, host: str = "127.0.0.1", port: int = 8000, served_model_name: str | None = None,
          otlp_traces_endpoint: str | None = None, log_level: str = "info") -> None:
    """Serve `router` until interrupted (what `glimp serve` runs).  SIGTERM (what `docker stop` and
    Kubernetes send) and Ctrl-C stop taking requests, let the open ones finish, then export the
    spans not yet sent: uvicorn's own signal handling needs the main thread, and the server runs
    on the engines' loop."""
    tracer_provider = _otlp_tracer_provider(otlp_traces_endpoint) if otlp_traces_endpoint else None
    server = _uvicorn_server(create_app(router, served_model_name, tracer_provider=tracer_provider), host, port,
                             log_level)
    running = _start_on_engine_loop(server)

    def stop(*_: Any) -> None:
        if server.should_exit:  # a second signal: stop without waiting for the open requests
            server.force_exit = True
        server.should_exit = True

    in_main_thread = threading.current_thread() is threading.main_thread()  # where handlers can be set
    previous = signal.signal(signal.SIGTERM, stop) if in_main_thread else None
    try:
        while True:
            try:
                running.result()
                break
            except KeyboardInterrupt:
                stop()
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        if tracer_provider is not None:
            tracer_provider.shutdown()


def _uvicorn_server(app: Any, host: str, port: int, log_level: str) -> Any:
    uvicorn = require_module("uvicorn", "serve", "glimp serve")
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))


def _start_on_engine_loop(server: Any) -> concurrent.futures.Future:
    """Run the HTTP server on Glimp's background loop, the one that drives the engines, so that a
    request's run awaits its engine requests directly instead of hopping between loops per token."""
    return asyncio.run_coroutine_threadsafe(server.serve(), _sync.background_loop())


def scrape(base_url: str, name: str, **labels: str) -> float:
    """One sample of a running server's /metrics (`base_url` as `running_server` yields it; 0 when absent)."""
    import httpx  # installed with FastAPI's test client and the openai client

    parser = require_module("prometheus_client.parser", "serve", "Reading /metrics")
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics").text
    return next((sample.value for family in parser.text_string_to_metric_families(text) for sample in family.samples
                 if sample.name == name and sample.labels == labels), 0.0)


@contextlib.contextmanager
def running_server(router: GlimpRouter, host: str = "127.0.0.1", port: int = 0, **app_options: Any) -> Iterator[str]:
    """Serve `router` (on Glimp's background loop) while the block runs; yields the base URL
    (`http://HOST:PORT/v1`; port 0 picks a free one).  For notebooks, tests and benchmarks."""
    server = _uvicorn_server(create_app(router, **app_options), host, port, "warning")
    running = _start_on_engine_loop(server)
    while not server.started:
        if running.done():
            raise RuntimeError(f"glimp serve could not start on {host}:{port} ({running.exception()!r})")
        time.sleep(0.02)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound_port}/v1"
    finally:
        server.should_exit = True
        running.result()


def _otlp_tracer_provider(endpoint: str) -> Any:
    """A tracer provider exporting spans over OTLP/gRPC to `endpoint` (e.g. http://localhost:4317)."""
    sdk_trace = require_module("opentelemetry.sdk.trace", "serve", "OpenTelemetry tracing")
    export = require_module("opentelemetry.sdk.trace.export", "serve", "OpenTelemetry tracing")
    otlp = require_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "serve", "OTLP export")
    resources = require_module("opentelemetry.sdk.resources", "serve", "OpenTelemetry tracing")
    provider = sdk_trace.TracerProvider(resource=resources.Resource.create({"service.name": "glimp"}))
    provider.add_span_processor(export.BatchSpanProcessor(otlp.OTLPSpanExporter(endpoint=endpoint)))
    return provider
