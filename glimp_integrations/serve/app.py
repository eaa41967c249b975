"""The `glimp serve` app: one `GlimpRouter` behind OpenAI's chat completions and Responses API, with the endpoints
an operator needs (`/v1/models`, `/health` and `/readyz`, `/livez`, `/metrics`) and a playground page at `/`."""

from __future__ import annotations

import hmac
from typing import Any

from glimp_integrations.errors import invalid, require_module
from glimp_integrations.router import GlimpRouter
from glimp_integrations.serve import chat, responses
from glimp_integrations.serve.playground import playground_page
from glimp_integrations.serve.protocol import RequestError
from glimp_integrations.serve.runs import ServerState
from glimp_integrations.tool_formats import load_vllm_parsers


def create_app(
    router: GlimpRouter,
    served_model_name: str | None = None,
    *,
    tracer_provider: Any | None = None,
    api_key: str | None = None,
) -> Any:
    """The FastAPI app serving `router`.  `served_model_name` is the id clients pass as `model`
    (default: "glimp"); `tracer_provider` an OpenTelemetry provider for the run and step spans
    (default: the global one, a no-op unless configured); `api_key`: every `/v1` route then
    answers 401 unless the request carries `Authorization: Bearer <api_key>` (as `vllm serve
    --api-key`); `/health`, `/readyz`, `/livez` and `/metrics` stay open (keep them internal)."""
    fastapi = require_module("fastapi", "serve", "glimp serve")
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    from glimp_integrations import serve

    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise invalid("api_key", "<hidden>", "must be a non-empty string", "Pass the key clients will send, or None.")
    state = ServerState(router, served_model_name or "glimp", tracer_provider)
    if router.backend.tokenizer("large") is not None:
        load_vllm_parsers()  # now, not in the first request with tools
    app = fastapi.FastAPI(title="glimp serve", description=serve.__doc__)
    app.state.glimp = state

    if api_key is not None:
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def require_key(request: Any, call_next: Any) -> Any:
            given = request.headers.get("authorization", "").encode()
            if request.url.path.startswith("/v1/") and not hmac.compare_digest(given, expected):
                return state.error_response(
                    RequestError(
                        401,
                        "Missing or wrong API key: send `Authorization: Bearer <key>` with the key this server "
                        "was started with (--api-key or GLIMP_API_KEY).",
                        kind="authentication_error",
                        code="invalid_api_key",
                    )
                )
            return await call_next(request)

    page = playground_page(router, state.served_model)

    @app.get("/", include_in_schema=False)
    async def playground() -> Any:
        """The playground page (`serve/playground.html`); it calls `/v1` with the key the user types."""
        return HTMLResponse(page)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        backend = router.backend
        return {
            "object": "list",
            "data": [
                {
                    "id": state.served_model,
                    "object": "model",
                    "created": 0,
                    "owned_by": "glimp",
                    "small_model": backend.model_name("small"),
                    "large_model": backend.model_name("large"),
                    "max_model_len": state.max_model_len,
                }
            ],
        }

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
        return await chat.chat_completions(state, request)

    async def create_response(request: Any) -> Any:
        return await responses.responses(state, request)

    for handler in (chat_completions, create_response):
        handler.__annotations__["request"] = fastapi.Request  # (annotations are strings in this module)
    app.post("/v1/chat/completions")(chat_completions)
    app.post("/v1/responses")(create_response)
    return app
