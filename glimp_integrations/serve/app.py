"""The `glimp serve` app: one `GlimpRouter` behind OpenAI's chat completions and Responses API, with the endpoints
an operator needs (`/v1/models`, `/health` and `/readyz`, `/livez`, `/metrics`) and a playground page at `/`.
`/openapi.json` describes each API's request (its wire model) and response (openai's types)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from openai.types.chat import ChatCompletion
from openai.types.responses import Response as ResponsesResponse
from pydantic import BaseModel

from glimp_integrations import GlimpRouter, __version__
from glimp_integrations.serve import chat, responses
from glimp_integrations.serve.keys import KeyRing
from glimp_integrations.serve.limits import ServerLimits
from glimp_integrations.serve.playground import playground_page
from glimp_integrations.serve.protocol import RequestError
from glimp_integrations.serve.runs import ServerState
from glimp_integrations.tool_formats import load_vllm_parsers

REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": chat.ChatCompletionRequest,
    "/v1/responses": responses.ResponsesRequest,
}
"""Each API's route and the wire model of its request body (read by the route itself, which names
a field that does not fit in OpenAI's error shape; FastAPI's own 422 would not)."""
RESPONSE_MODELS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletion,
    "/v1/responses": ResponsesResponse,
}


OPEN_PATHS = ("/livez", "/readyz", "/health", "/metrics", "/")
"""What answers without a key when keys are set: the probes, the metrics (keep them internal) and
the playground page (it asks for the key and sends it with its own requests)."""


def create_app(
    router: GlimpRouter,
    served_model_name: str | None = None,
    *,
    tracer_provider: Any | None = None,
    api_key: str | None = None,
    keys: KeyRing | None = None,
    limits: ServerLimits | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """The FastAPI app serving `router`.  `served_model_name` is the id clients pass as `model`
    (default: "glimp"); `tracer_provider` an OpenTelemetry provider for the run and step spans
    (default: the global one, a no-op unless configured); `api_key`, or `keys` (a `KeyRing`, which
    a file can fill and refill): every route but `OPEN_PATHS` then answers 401 unless the request
    carries `Authorization: Bearer <key>` (as `vllm serve --api-key`); `limits`: the operator's
    (`ServerLimits`: admission, ceilings, body size); `allowed_hosts`: the names a request's `Host`
    may give (None: any), so that a web page cannot reach a local server by rebinding a name of
    its own to 127.0.0.1."""
    from glimp_integrations import serve

    keys = keys if keys is not None else KeyRing(api_key)
    state = ServerState(router, served_model_name or "glimp", tracer_provider, limits or ServerLimits())
    if router.backend.tokenizer("large") is not None:
        load_vllm_parsers()  # now, not in the first request with tools
    app = FastAPI(title="glimp serve", description=serve.__doc__)
    app.state.glimp = state
    app.state.keys = keys
    if keys.required:
        _require_key(app, state, keys)
    if allowed_hosts is not None:
        _require_host(app, state, allowed_hosts)
    _operator_routes(app, state)
    _api_routes(app, state)

    @app.middleware("http")
    async def version_header(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers["X-Glimp-Version"] = __version__
        return response

    return app


def _require_key(app: FastAPI, state: ServerState, keys: KeyRing) -> None:
    @app.middleware("http")
    async def require_key(request: Request, call_next: Any) -> Any:
        if request.url.path in OPEN_PATHS:
            return await call_next(request)
        name = keys.name_of(request.headers.get("authorization", ""))
        if name is None:
            return state.error_response(
                RequestError(
                    401,
                    "Missing or wrong API key: send `Authorization: Bearer <key>` with a key this server "
                    "was started with (--api-key, --api-key-file or GLIMP_API_KEY).",
                    kind="authentication_error",
                    code="invalid_api_key",
                    reason="no_key",
                )
            )
        state.metrics.key_requests.labels(key=name).inc()
        request.state.key_name = name  # for the key's rate limits
        return await call_next(request)


def _require_host(app: FastAPI, state: ServerState, allowed_hosts: Sequence[str]) -> None:
    allowed = {host.lower() for host in allowed_hosts}

    @app.middleware("http")
    async def require_host(request: Request, call_next: Any) -> Any:
        host = request.headers.get("host", "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host  # [::1]:8000 -> [::1]
        if name not in allowed and host not in allowed:
            return state.error_response(
                RequestError(
                    400,
                    f"`Host: {host}` is not a name this server answers to ({', '.join(sorted(allowed))}). "
                    "Use one of those, or start glimp serve with --allowed-hosts.",
                    reason="bad_host",
                )
            )
        return await call_next(request)


def _operator_routes(app: FastAPI, state: ServerState) -> None:
    """The playground, the model list, readiness, liveness and metrics."""
    router = state.router
    page = playground_page(router, state.served_model, state.limits.client_settings)

    @app.get("/", include_in_schema=False)
    async def playground() -> Any:
        """The playground page (`serve/playground.html`); it calls `/v1` with the key the user types."""
        return HTMLResponse(page)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        backend = router.backend
        card = {
            "id": state.served_model,
            "object": "model",
            "created": 0,
            "owned_by": "glimp",
            "small_model": backend.model_name("small"),
            "large_model": backend.model_name("large"),
            "max_model_len": state.max_model_len,
            "glimp_version": __version__,
        }
        return {"object": "list", "data": [card]}

    @app.get("/health")
    @app.get("/readyz")
    async def health() -> Any:
        """Readiness: 503 naming each model (server) that cannot serve now; 200 `degraded` when only
        the small model's cannot and runs go on without it (`small_model_failure="large"`)."""
        problems = {role: problem for role, problem in (await router.backend.health()).items() if problem}
        if set(problems) == {"small"} and router.config.small_model_failure == "large":
            return {"status": "degraded", "problems": problems}
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
        return {"status": "ok"}

    @app.get("/livez")
    async def live() -> Any:
        """Liveness: the process answers (a model server that is down is readiness's concern, not a restart's)."""
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Any:
        return Response(state.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _api_routes(app: FastAPI, state: ServerState) -> None:
    """The two APIs, their request and response models in /openapi.json."""

    @app.post("/v1/chat/completions", **_documented("/v1/chat/completions"))
    async def chat_completions(request: Request) -> Any:
        """A routed run as a `chat.completion`, or `chat.completion.chunk` server-sent events."""
        return await chat.chat_completions(state, request)

    @app.post("/v1/responses", **_documented("/v1/responses"))
    async def create_response(request: Request) -> Any:
        """A routed run as a `response`, or its stream of events."""
        return await responses.responses(state, request)

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, with the wire models' schemas among its components."""
        if app.openapi_schema is None:
            schema = default_openapi()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (*REQUEST_MODELS.values(), *RESPONSE_MODELS.values()):
                found = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(found.pop("$defs", {}))
                components[model.__name__] = found
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _documented(path: str) -> dict[str, Any]:
    """A route's request body and 200 response, by reference to the wire models' schemas."""

    def schema(model: type) -> dict[str, Any]:
        return {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}

    return {
        "openapi_extra": {"requestBody": {"required": True, "content": schema(REQUEST_MODELS[path])}},
        "responses": {
            200: {
                "description": "The answer, or (with `stream`) server-sent events",
                "content": schema(RESPONSE_MODELS[path]),
            }
        },
    }
