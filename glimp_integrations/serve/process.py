"""Running the app: `serve` (what `glimp serve` runs, with SIGTERM draining open requests),
`running_server` (a background server for notebooks, tests and benchmarks) and `scrape`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from glimp_integrations import _sync
from glimp_integrations.errors import GlimpError, require_module
from glimp_integrations.router import GlimpRouter
from glimp_integrations.serve.app import create_app
from glimp_integrations.serve.keys import KeyRing
from glimp_integrations.serve.limits import ServerLimits
from glimp_integrations.serve.observability import otlp_tracer_provider

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def serve(
    router: GlimpRouter,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str | None = None,
    otlp_traces_endpoint: str | None = None,
    log_level: str = "info",
    api_key: str | None = None,
    *,
    api_key_file: str | None = None,
    limits: ServerLimits | None = None,
    max_connections: int | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> None:
    """Serve `router` until interrupted (what `glimp serve` runs).  SIGTERM (what `docker stop` and
    Kubernetes send) and Ctrl-C stop taking requests, let the open ones finish, then export the
    spans not yet sent: uvicorn's own signal handling needs the main thread, and the server runs
    on the engines' loop.  SIGHUP reads `api_key_file` again.  `max_connections`: past it uvicorn
    answers 503 at once.  `allowed_hosts` defaults to the loopback names when `host` is loopback
    (a web page cannot then drive a local server by DNS rebinding), else to any."""
    tracer_provider = otlp_tracer_provider(otlp_traces_endpoint) if otlp_traces_endpoint else None
    keys = KeyRing(api_key, api_key_file)
    if allowed_hosts is None and host in LOOPBACK_HOSTS:
        allowed_hosts = LOOPBACK_HOSTS
    app = create_app(
        router,
        served_model_name,
        tracer_provider=tracer_provider,
        keys=keys,
        limits=limits,
        allowed_hosts=allowed_hosts,
    )
    header_timeout = (limits or ServerLimits()).header_timeout
    server = _uvicorn_server(app, host, port, log_level, max_connections, header_timeout)
    running = _start_on_engine_loop(server)

    def stop(*_: Any) -> None:
        if server.should_exit:  # a second signal: stop without waiting for the open requests
            server.force_exit = True
        server.should_exit = True

    def reload_keys(*_: Any) -> None:
        try:
            keys.reload()
            logger.warning("glimp serve: API keys read again from %s", api_key_file)
        except GlimpError as error:
            logger.error("glimp serve: kept the API keys in use: %s", error)

    in_main_thread = threading.current_thread() is threading.main_thread()  # where handlers can be set
    previous = signal.signal(signal.SIGTERM, stop) if in_main_thread else None
    previous_hangup = signal.signal(signal.SIGHUP, reload_keys) if in_main_thread and api_key_file else None
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
            if api_key_file:
                signal.signal(signal.SIGHUP, previous_hangup)
        if tracer_provider is not None:
            tracer_provider.shutdown()


def _uvicorn_server(
    app: Any, host: str, port: int, log_level: str, max_connections: int | None = None, header_timeout: float = 10.0
) -> Any:
    uvicorn = require_module("uvicorn", "serve", "glimp serve")
    http = _with_header_deadline(header_timeout)
    return uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level=log_level, limit_concurrency=max_connections, http=http)
    )


def _with_header_deadline(seconds: float) -> type:
    """uvicorn's HTTP protocol (httptools where installed, else h11), closing a connection whose
    first request's headers have not all arrived `seconds` after it opened: a client that dribbles
    its headers (slowloris) no longer holds a connection open (uvicorn itself has no such limit)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]

    class HeaderDeadline(base):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._deadline: asyncio.TimerHandle | None = self.loop.call_later(seconds, self._headers_too_slow)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None and self._deadline is not None:  # a request's headers are in
                self._deadline.cancel()
                self._deadline = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _headers_too_slow(self) -> None:
            self._deadline = None
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline


def _start_on_engine_loop(server: Any) -> concurrent.futures.Future:
    """Run the HTTP server on Glimp's background loop, the one that drives the engines, so that a
    request's run awaits its engine requests directly instead of hopping between loops per token."""
    return asyncio.run_coroutine_threadsafe(server.serve(), _sync.background_loop())


def scrape(base_url: str, name: str, **labels: str) -> float:
    """One sample of a running server's /metrics (`base_url` as `running_server` yields it; 0 when absent)."""
    import httpx  # installed with FastAPI's test client and the openai client

    parser = require_module("prometheus_client.parser", "serve", "Reading /metrics")
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics").text
    return next(
        (
            sample.value
            for family in parser.text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and sample.labels == labels
        ),
        0.0,
    )


@contextlib.contextmanager
def running_server(router: GlimpRouter, host: str = "127.0.0.1", port: int = 0, **app_options: Any) -> Iterator[str]:
    """Serve `router` (on Glimp's background loop) while the block runs; yields the base URL
    (`http://HOST:PORT/v1`; port 0 picks a free one).  For notebooks, tests and benchmarks."""
    limits = app_options.get("limits") or ServerLimits()
    server = _uvicorn_server(create_app(router, **app_options), host, port, "warning", None, limits.header_timeout)
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
