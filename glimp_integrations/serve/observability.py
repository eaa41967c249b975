"""What `glimp serve` tells its operators: Prometheus metrics (`/metrics`) and OpenTelemetry spans
(`glimp.run` per request, `glimp.step` per step, each model server request a step's child)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glimp_integrations.errors import require_module
from glimp_integrations.router import GlimpRouter
from glimp_integrations.trace import RunTrace, StepFinished


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self, router: GlimpRouter) -> None:
        self._prometheus = prometheus = require_module("prometheus_client", "serve", "glimp serve's /metrics")
        prometheus.disable_created_metrics()  # no `_created` series beside each counter
        self.registry = registry = prometheus.CollectorRegistry()
        self.requests = prometheus.Counter(
            "glimp_requests",
            "Requests to the APIs by HTTP status (499: the client disconnected)",
            ["status"],
            registry=registry,
        )
        self.steps = prometheus.Counter(
            "glimp_steps", "Steps written, by writer and phase", ["model", "phase"], registry=registry
        )
        self.retries = prometheus.Counter(
            "glimp_step_retries",
            "Requests sent again after a model server failed "
            "them (a replica died, a stream was cut), by the step's writer",
            ["model"],
            registry=registry,
        )
        self.tokens = prometheus.Counter(
            "glimp_model_tokens",
            "Tokens each model computed (input: prompt and prefills, output: generated)",
            ["model", "kind"],
            registry=registry,
        )
        self.h_init = prometheus.Histogram(
            "glimp_h_init_nats",
            "Entropy of each routed step's probe (nats)",
            buckets=(0.1, 0.25, 0.5, 0.9, 1.5, 2.5, 4, 6, 8, 11),
            registry=registry,
        )
        self.probe_seconds = prometheus.Histogram(
            "glimp_probe_seconds", "Time to settle a step's writer", registry=registry
        )
        self.first_token = prometheus.Histogram(
            "glimp_time_to_first_token_seconds", "Time from request to the first streamed token", registry=registry
        )
        self.per_token = prometheus.Histogram(
            "glimp_time_per_output_token_seconds",
            "Time per output token after the first, per run",
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.running = prometheus.Gauge("glimp_runs_running", "Runs in progress", registry=registry)
        self.degraded_runs = prometheus.Counter(
            "glimp_degraded_runs",
            "Runs the large model finished alone because the small model's server failed",
            registry=registry,
        )
        self.key_requests = prometheus.Counter(
            "glimp_key_requests", "Requests admitted, by the name of their API key", ["key"], registry=registry
        )
        self.queued = prometheus.Gauge("glimp_runs_queued", "Requests waiting for a run's slot", registry=registry)
        self.rejected = prometheus.Counter(
            "glimp_rejected_requests",
            "Requests refused before a run, by reason (capacity: 429; body_too_large, body_timeout, "
            "not_json, no_key, not_allowed, over_ceiling, bad_request)",
            ["reason"],
            registry=registry,
        )
        self._engine_requests = prometheus.Gauge(
            "glimp_engine_requests_running",
            "Requests each role's engine or server is running for this process",
            ["model"],
            registry=registry,
        )
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
        if trace.degraded:
            self.degraded_runs.inc()
        if first_token_seconds is not None:
            self.first_token.observe(first_token_seconds)
            if trace.completion_tokens > 1:
                self.per_token.observe((last_token_seconds - first_token_seconds) / (trace.completion_tokens - 1))


class Tracing:
    """OpenTelemetry spans: `glimp.run` per request, `glimp.step` per step (no-ops unless a tracer
    provider with an exporter is configured)."""

    def __init__(self, tracer_provider: Any | None) -> None:
        from opentelemetry import trace  # installed with glimp[serve]

        self._api = trace
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("glimp")

    def run_span(self, attributes: Mapping[str, Any]) -> Any:
        return self.tracer.start_span("glimp.run", attributes=span_attributes(attributes))

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
        span.set_attributes(span_attributes(step, prefix="glimp.step."))
        span.end()


def span_attributes(values: Mapping[str, Any], prefix: str = "glimp.") -> dict[str, Any]:
    return {prefix + k: v for k, v in values.items() if isinstance(v, (str, bool, int, float))}


def otlp_tracer_provider(endpoint: str) -> Any:
    """A tracer provider exporting spans over OTLP/gRPC to `endpoint` (e.g. http://localhost:4317)."""
    sdk_trace = require_module("opentelemetry.sdk.trace", "serve", "OpenTelemetry tracing")
    export = require_module("opentelemetry.sdk.trace.export", "serve", "OpenTelemetry tracing")
    otlp = require_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "serve", "OTLP export")
    resources = require_module("opentelemetry.sdk.resources", "serve", "OpenTelemetry tracing")
    provider = sdk_trace.TracerProvider(resource=resources.Resource.create({"service.name": "glimp"}))
    provider.add_span_processor(export.BatchSpanProcessor(otlp.OTLPSpanExporter(endpoint=endpoint)))
    return provider
