"""`glimp serve`: one `GlimpRouter` behind an OpenAI-compatible HTTP API (FastAPI on uvicorn).

The package, by concern: `protocol` (what the APIs share on the wire: errors, usage, events),
`chat` (chat completions in and out), `responses` (the Responses API in and out), `runs` (a
request's run, observed and cancellable), `observability` (metrics and spans), `playground` (the
page at `/`), `app` (the routes), `process` (serving it).  It reaches the engine through the
package's public names only, as the LangChain and LlamaIndex adapters do.

Endpoints: `POST /v1/chat/completions` and `POST /v1/responses` (each streamed as server-sent
events, or not), `GET /` (the playground), `GET /v1/models`,
`GET /health` and `GET /readyz` (200 when both models can serve, else 503 naming the one that
cannot), `GET /livez` (200 while the process answers) and
`GET /metrics` (Prometheus).  What a response carries beyond OpenAI's fields:
- `reasoning` and `reasoning_content` (the same text) in the message and in stream deltas: the
  routed reasoning (`think` mode), under vLLM's name and the DeepSeek API's;
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

from typing import Any

__all__ = ["create_app", "running_server", "scrape", "serve"]


def __getattr__(name: str) -> Any:
    """The app and the servers, imported when first asked for (the limits and wire models import
    without FastAPI; these need it and openai's models)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from glimp_integrations.errors import require_module

    for module in ("fastapi", "openai"):
        require_module(module, "serve", "glimp serve")
    from glimp_integrations.serve import app, process

    return getattr(app if name == "create_app" else process, name)
