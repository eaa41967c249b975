"""Glimp on a real vLLM fleet on 127.0.0.1 (`glimp_integrations.local_fleet`): one small replica with
the entropy gate, two large replicas behind `vllm-router` (consistent hashing on `X-Session-Id`),
every replica exporting its spans to an OTLP receiver.  One fleet for the module (about 4 GB a
replica); the test that kills a replica runs last.  Select with `-m fleet`."""

import asyncio
import logging
import time

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from glimp_integrations import GlimpConfigError, GlimpRouter
from glimp_integrations.embedded import embedded_model_dir
from glimp_integrations.local_fleet import LocalFleet, free_port, vllm_metric
from glimp_integrations.serve import running_server, scrape
from tests.cutting_proxy import cutting_proxy
from tests.otlp import running_otlp_receiver
from tests.step_cases import QUESTION

pytestmark = [pytest.mark.fleet, pytest.mark.vllm, pytest.mark.embedded]

GREEDY = {"temperature": 0.0, "reasoning_mode": "plain", "reasoning_budget": 100, "max_step_tokens": 12}
MIXED_THRESHOLD = 1.0
"""On QUESTION (greedy, float32) the embedded model's H_init are about 2.24, 0.46, 1.68, 0.02, 2.02,
1.77, 1.42, 1.11, 0.07, 0.02: both models write, the last two steps are the small model's in a row,
and no step is within 0.1 nats of the threshold."""
QUESTIONS = [
    QUESTION,
    "Explain how to make tea, step by step, with a blank line between steps.",
    "List three facts about the moon, one paragraph each.",
    "What are the four seasons? One paragraph each.",
]


@pytest.fixture(scope="module")
def receiver():
    with running_otlp_receiver() as (receiver, endpoint):
        yield receiver, endpoint


@pytest.fixture(scope="module")
def fleet(receiver, tmp_path_factory):
    _, endpoint = receiver
    # float32: a step's first token then comes out the same from a fresh request's prefill as from the
    # request that wrote the step before (in bfloat16 the two kernels differ enough to flip near ties)
    with LocalFleet(
        embedded_model_dir(),
        replica_args=["--otlp-traces-endpoint", endpoint, "--dtype", "float32"],
        log_dir=tmp_path_factory.mktemp("fleet"),
    ) as fleet:
        yield fleet


def routers(fleet, **options):
    """The fleet's router with the gate (as found at start) and one that probes with requests."""
    return (
        GlimpRouter(fleet.url("small"), fleet.url("large"), backend="openai", **GREEDY, **options),
        GlimpRouter(
            fleet.url("small"),
            fleet.url("large"),
            backend="openai",
            **GREEDY,
            **options,
            backend_options={"entropy_gate": False},
        ),
    )


def _requests_served(url: str, before: float) -> float:
    """Requests a replica has finished since its count was `before` (once the count stops moving:
    vLLM counts a request as its output ends)."""
    count, settled = vllm_metric(url, "vllm:request_success_total"), time.monotonic() + 0.5
    while time.monotonic() < settled:
        time.sleep(0.1)
        latest = vllm_metric(url, "vllm:request_success_total")
        if latest != count:
            count, settled = latest, time.monotonic() + 0.5
    return count - before


def test_consecutive_delegated_steps_are_one_request_on_the_gated_server(fleet):
    gated, probing = routers(fleet, threshold=float("inf"))
    small = fleet.replicas["small"][0].url
    runs = []
    with gated, probing:
        assert gated.backend.models["small"].gate and not gated.backend.models["large"].gate
        for router, settings in ((gated, {}), (gated, {"span_steps": False}), (probing, {})):
            before = _requests_served(small, 0)
            runs.append((router.run(QUESTION, **settings), _requests_served(small, before)))
    (spanned, spanned_requests), (one_each, one_each_requests), (probed, probed_requests) = runs
    assert [s.text for s in spanned.steps] == [s.text for s in one_each.steps] == [s.text for s in probed.steps]
    assert len(spanned.steps) > 2 and spanned.answer == probed.answer
    assert {s.basis for s in spanned.steps} == {"gate"} and all(s.h_init is None for s in spanned.steps)
    assert all(s.probe.h_upper == float("inf") for s in spanned.steps)
    # one request for all the steps; one per step gated; a probe and a step per step probing
    assert (spanned_requests, one_each_requests, probed_requests) == (1, len(one_each.steps), 2 * len(probed.steps))
    written = sum(s.tokens for s in spanned.steps)
    # the small server generated the steps' tokens and nothing else: no probe requests
    assert spanned.usage_by_model["small"]["output_tokens"] == written
    assert probed.usage_by_model["small"]["output_tokens"] == written + len(probed.steps)


def test_a_request_cut_mid_span_goes_on_from_its_tokens(fleet):
    """The small model's request is cut inside its third step (a replica dying): that step goes on
    in a request from the tokens received, and the run's steps are those of an uncut run."""
    proxy_handler, proxy = cutting_proxy(fleet.url("small"), cut_after=30)
    cut_url = f"http://127.0.0.1:{proxy.server_address[1]}/v1"
    try:
        with GlimpRouter(cut_url, fleet.url("large"), backend="openai", threshold=float("inf"), **GREEDY) as router:
            resumed_run = router.run(QUESTION)
        with GlimpRouter(
            fleet.url("small"), fleet.url("large"), backend="openai", threshold=float("inf"), **GREEDY
        ) as router:
            whole_run = router.run(QUESTION)
    finally:
        proxy.shutdown()
    assert [(s.text, s.tokens) for s in resumed_run.steps] == [(s.text, s.tokens) for s in whole_run.steps]
    assert [s.retries for s in resumed_run.steps] == [int(i == 2) for i in range(len(resumed_run.steps))]
    cut, resumed, *rest = proxy_handler.streamed
    received = [id_ for event in cut["events"] for id_ in event["choices"][0]["token_ids"]]
    assert 24 < len(received) < 36 and "glimp_gate_separator" in cut["request"]["vllm_xargs"]
    # the cut step goes on in a request of its own (no gate, the separator as its stop), then a new span
    assert resumed["request"]["prompt"] == cut["events"][0]["choices"][0]["prompt_token_ids"] + received
    assert "vllm_xargs" not in resumed["request"] and "\n\n" in resumed["request"]["stop"]
    assert rest and all("glimp_gate_separator" in record["request"]["vllm_xargs"] for record in rest)


def test_gated_and_probed_runs_route_alike(fleet):
    gated, probing = routers(fleet, threshold=MIXED_THRESHOLD)
    with gated, probing:
        with_gate, with_probes = gated.run(QUESTION), probing.run(QUESTION)
    assert [s.model for s in with_gate.steps] == [s.model for s in with_probes.steps]
    assert {s.model for s in with_gate.steps} == {"small", "large"} and with_gate.answer == with_probes.answer
    for gated_step, probed_step in zip(with_gate.steps, with_probes.steps):
        if gated_step.model == "small":  # proven at most the threshold, as the probe measured
            assert gated_step.basis == "gate" and gated_step.probe.h_upper == MIXED_THRESHOLD
            assert probed_step.probe.h_upper <= MIXED_THRESHOLD
        else:  # the gate ended the request at once; a probe confirmed it was the gate
            assert gated_step.basis in ("bounds", "full") and gated_step.probe.h_lower > MIXED_THRESHOLD


def test_a_server_without_the_gate_is_noticed_and_probed(fleet, caplog):
    with caplog.at_level(logging.WARNING, logger="glimp_integrations.backends.openai_server"):
        router = GlimpRouter(
            fleet.url("large"), fleet.url("large"), backend="openai", threshold=MIXED_THRESHOLD, **GREEDY
        )
    with router:
        warnings = [r.getMessage() for r in caplog.records if "does not run the entropy gate" in r.getMessage()]
        assert len(warnings) == 1 and fleet.url("large") in warnings[0] and "--logits-processors" in warnings[0]
        trace = router.run(QUESTION)
    assert {s.basis for s in trace.steps} <= {"bounds", "full"} and all(s.h_init is not None for s in trace.steps)
    with pytest.raises(GlimpConfigError, match="entropy_gate=True") as error:
        GlimpRouter(fleet.url("large"), fleet.url("large"), backend="openai", backend_options={"entropy_gate": True})
    assert fleet.url("large") in str(error.value)


def test_a_router_down_at_start_fails_fast_naming_it(fleet):
    down = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    with pytest.raises(GlimpConfigError) as error:
        GlimpRouter(fleet.url("small"), down, backend="openai")
    assert down in str(error.value) and "large" in str(error.value) and time.monotonic() - started < 30


def test_fleet_requests_join_the_run_trace(fleet, receiver):
    otlp, _ = receiver
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    router = GlimpRouter(fleet.url("small"), fleet.url("large"), backend="openai", threshold=MIXED_THRESHOLD, **GREEDY)
    with router, running_server(router, tracer_provider=provider) as url:
        response = httpx.post(
            url + "/chat/completions",
            timeout=300,
            json={"model": "glimp", "messages": [{"role": "user", "content": QUESTION}]},
        )
        assert response.status_code == 200
    spans = exporter.get_finished_spans()
    run = next(s for s in spans if s.name == "glimp.run")
    steps = sorted((s for s in spans if s.name == "glimp.step"), key=lambda s: s.attributes["glimp.step.index"])
    step_ids = {s.context.span_id.to_bytes(8, "big") for s in steps}
    models = [s.attributes["glimp.step.model"] for s in steps]
    # every step begins requests, but a small step after another: the request that wrote that one goes on
    began = {
        s.context.span_id.to_bytes(8, "big")
        for i, s in enumerate(steps)
        if i == 0 or "large" in (models[i], models[i - 1])
    }
    trace_id = run.context.trace_id.to_bytes(16, "big")
    run_id = run.context.span_id.to_bytes(8, "big")

    def joined(all_spans):  # once every step's requests have reached the receiver (vLLM exports in batches)
        found = [span for _, span in all_spans if span.trace_id == trace_id]
        return found if began <= {span.parent_span_id for span in found} else []

    vllm_spans = otlp.wait_for(joined)
    in_trace = [span for _, span in otlp.spans() if span.trace_id == trace_id]
    assert vllm_spans, (
        f"the model servers' request spans did not join the run's trace under every step: "
        f"{len(in_trace)} spans, parents {[s.parent_span_id.hex() for s in in_trace]}, steps "
        f"{[(s.context.span_id.to_bytes(8, 'big').hex(), s.attributes.get('glimp.step.model'), s.attributes.get('glimp.step.basis')) for s in steps]}, run {run_id.hex()}"
    )
    # each request (a probe, a gated request, the step's own) is a child of the span of the step it began
    assert began <= {s.parent_span_id for s in vllm_spans} <= step_ids
    assert all(any(a.key == "gen_ai.usage.completion_tokens" for a in s.attributes) for s in vllm_spans)


def test_a_dying_replica_costs_a_retry_not_a_run(fleet):
    """Last: it kills a large replica.  Runs that send every step to the large model are in flight
    when the busiest replica is SIGKILLed; each run goes on through the other replica."""
    router = GlimpRouter(fleet.url("small"), fleet.url("large"), backend="openai", threshold=0.0, **GREEDY)
    with router, running_server(router) as url:

        async def runs_and_a_kill() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=300) as client:

                async def run(question: str) -> httpx.Response:
                    return await client.post(
                        url + "/chat/completions",
                        json={"model": "glimp", "messages": [{"role": "user", "content": question}]},
                    )

                async def kill_the_busiest() -> None:
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        running = {
                            r.url: vllm_metric(r.url, "vllm:num_requests_running") for r in fleet.replicas["large"]
                        }
                        busiest = max(running, key=running.get)
                        if running[busiest] >= 1:
                            next(r for r in fleet.replicas["large"] if r.url == busiest).kill()
                            return
                        await asyncio.sleep(0.05)
                    raise AssertionError("no large replica was running a request")

                return (await asyncio.gather(*(run(q) for q in QUESTIONS), kill_the_busiest()))[: len(QUESTIONS)]

        responses = asyncio.run(runs_and_a_kill())
        assert [r.status_code for r in responses] == [200] * len(QUESTIONS), [r.text[:300] for r in responses]
        steps = [step for r in responses for step in r.json()["glimp"]["steps"]]
        assert sum(step["retries"] for step in steps) >= 1
        assert all(step["model"] == "large" for step in steps)
        assert all(r.json()["choices"][0]["message"]["content"] for r in responses)
        assert scrape(url.removesuffix("/v1"), "glimp_step_retries_total", model="large") >= 1
        assert httpx.get(url.removesuffix("/v1") + "/health", timeout=30).status_code == 200
