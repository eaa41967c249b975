"""The OpenAI-compatible servers backend against a real vLLM server started on 127.0.0.1."""

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

import glimp_integrations
from glimp_integrations import (
    GlimpConfigError,
    GlimpRouter,
    GlimpRunError,
    Verdict,
)
from glimp_integrations.embedded import embedded_model_dir
from glimp_integrations.local_fleet import free_port
from glimp_integrations.serve import running_server, scrape
from tests.conftest import ScriptedChoices
from tests.constrained_cases import CASE_IDS, CASES, run_and_check
from tests.cutting_proxy import cutting_proxy, switchable_proxy
from tests.installed_wheel import installed_glimp_serve, installed_wheel, outside_the_tree
from tests.step_cases import (
    QUESTION,
    TEA,
    check_probes_leave_the_step_as_it_would_be,
    check_steps_count_what_their_probes_prefilled,
)
from tests.vllm_servers import vllm_server

pytestmark = [pytest.mark.vllm, pytest.mark.embedded]


@pytest.fixture(scope="module")
def server_url():
    """A server that gives the whole vocabulary's logprobs, as docs/backends.md recommends."""
    with vllm_server("-1") as url:
        yield url


@pytest.fixture(scope="module")
def router(server_url):
    router = GlimpRouter(server_url, server_url, backend="openai", seed=0)
    yield router
    router.close()


def test_routed_run_against_the_server(router):
    trace = router.run(QUESTION, reasoning_budget=80)
    assert trace.small_model == trace.large_model == "smollm2"
    assert trace.steps and trace.completion_tokens <= 80
    for step in trace.steps:
        probe = step.probe
        if probe.basis == "bounds":
            assert (probe.h_lower > 0.9) if step.model == "large" else (probe.h_upper <= 0.9)
        assert step.tokens > 0 and step.prefill_tokens > 0
    assert trace.steps[0].probe.top_k == 1000  # the ladder's first rung


def test_straddling_probe_escalates_on_the_server(router):
    first = router.run(QUESTION, reasoning_budget=8).steps[0].probe
    middle = (first.h_lower + first.h_upper) / 2
    probe = router.run(QUESTION, reasoning_budget=8, threshold=middle).steps[0].probe
    assert probe.escalations >= 1
    assert probe.h_lower > middle or probe.h_upper <= middle


async def test_probes_leave_the_small_models_step_as_it_would_be_on_the_server(router):
    await check_probes_leave_the_step_as_it_would_be(router.backend)


def test_a_steps_prefill_counts_its_probes_on_the_server(router):
    check_steps_count_what_their_probes_prefilled(router)


def test_a_server_capping_logprobs_is_probed_within_its_cap(server_url, caplog):
    with vllm_server("20") as capped_url:  # vLLM's default cap
        with caplog.at_level(logging.WARNING, logger="glimp_integrations.backends.openai_server"):
            capped = GlimpRouter(capped_url, server_url, backend="openai", seed=0)
        try:
            assert "caps logprobs at 20" in caplog.text and "--max-logprobs -1" in caplog.text
            first = capped.run(QUESTION, reasoning_budget=8).steps[0].probe
            assert first.basis == "bounds" and first.top_k == 20
            middle = (first.h_lower + first.h_upper) / 2  # top-20 cannot settle this threshold
            step = capped.run(QUESTION, reasoning_budget=8, threshold=middle).steps[0]
            assert step.probe.basis == "capped" and step.probe.top_k == 20 and step.probe.escalations == 0
            assert step.model == ("large" if step.probe.h_init > middle else "small")
        finally:
            capped.close()


def test_a_long_shared_prefix_is_served_from_the_prefix_cache(router):
    question = "Summarise this text. " + "The quick brown fox jumps over the lazy dog. " * 40
    router.run(question, reasoning_budget=4, threshold=0.0)
    trace = router.run(question, reasoning_budget=4, threshold=0.0)
    # the second run's first step recomputes only what the cache lacks (whole blocks are reused)
    assert trace.steps[0].prefill_tokens < trace.prompt_tokens / 2


def test_an_unreachable_server_is_named_at_construction(server_url):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(GlimpConfigError, match=f"large model's server at {dead}.*Check that the server is running"):
        GlimpRouter(server_url, dead, backend="openai", backend_options={"max_retries": 0, "timeout": 2})


class _FailingCompletions(BaseHTTPRequestHandler):
    """Lists a model like vLLM does, then answers every completion with HTTP 500."""

    def do_GET(self):
        body = json.dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": "broken",
                        "object": "model",
                        "owned_by": "test",
                        "root": str(embedded_model_dir()),
                        "max_model_len": 4096,
                    }
                ],
            }
        )
        self._send(200, body)

    def do_POST(self):
        self._send(500, json.dumps({"error": {"message": "out of memory", "type": "InternalServerError"}}))

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


class _DroppingCompletions(_FailingCompletions):
    """Starts a streamed completion, then drops the connection mid-stream (a server killed mid-run)."""

    def do_POST(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        event = (
            b'data: {"id": "x", "object": "text_completion", "model": "broken", "choices": [{"index": 0, '
            b'"text": "Half", "logprobs": null, "finish_reason": null}]}\n\n'
        )
        self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        self.wfile.flush()
        self.close_connection = True  # no final chunk: the client reads an incomplete body


@pytest.mark.parametrize("handler", [_FailingCompletions, _DroppingCompletions], ids=["http_500", "dropped_stream"])
def test_a_server_failing_mid_run_raises_with_the_trace_so_far(server_url, handler):
    failing = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=failing.serve_forever, daemon=True).start()
    broken_url = f"http://127.0.0.1:{failing.server_address[1]}/v1"
    try:
        router = GlimpRouter(
            server_url,
            broken_url,
            backend="openai",
            policy=ScriptedChoices(Verdict.DELEGATE, Verdict.INTERVENE),
            seed=0,
            backend_options={"max_retries": 1, "timeout": 10},
        )
        with pytest.raises(GlimpRunError, match=f"large model's server at {broken_url}") as info:
            router.run(QUESTION, reasoning_budget=60, max_step_tokens=5)  # a second step, for the large model
        partial = info.value.partial_trace
        assert [s.model for s in partial.steps] == ["small"] and partial.steps[0].tokens > 0
        with running_server(router) as url:  # through glimp serve: a 502 that says what failed, not where
            response = httpx.post(
                url + "/chat/completions",
                timeout=60,
                json={
                    "model": "glimp",
                    "messages": [{"role": "user", "content": QUESTION}],
                    "reasoning_budget": 60,
                    "max_step_tokens": 5,
                },
            )
        error = response.json()["error"]
        assert response.status_code == 502 and "a model server failed" in error["message"]
        assert broken_url not in error["message"] and error["request_id"] in error["message"]
    finally:
        failing.shutdown()


class _KeyedServer(_FailingCompletions):
    """Lists its model only to the holder of `KEY` (401 otherwise), and records the keys it was sent."""

    KEY = ""
    seen: list[str] = []

    def do_GET(self):
        type(self).seen.append(self.headers.get("Authorization", ""))
        if self.headers.get("Authorization") != f"Bearer {self.KEY}":
            return self._send(401, json.dumps({"error": {"message": "Unauthorized", "type": "invalid_api_key"}}))
        super().do_GET()


def test_each_model_server_gets_its_own_api_key():
    servers = {}
    for role, key in (("small", "key-of-small"), ("large", "key-of-large")):
        handler = type(role, (_KeyedServer,), {"KEY": key, "seen": []})
        servers[role] = (ThreadingHTTPServer(("127.0.0.1", 0), handler), handler)
        threading.Thread(target=servers[role][0].serve_forever, daemon=True).start()
    urls = {role: f"http://127.0.0.1:{server.server_address[1]}/v1" for role, (server, _) in servers.items()}
    try:
        router = GlimpRouter(
            urls["small"],
            urls["large"],
            backend="openai",
            backend_options={"small_api_key": "key-of-small", "large_api_key": "key-of-large", "max_retries": 0},
        )
        router.close()
        assert set(servers["small"][1].seen) == {"Bearer key-of-small"}
        assert set(servers["large"][1].seen) == {"Bearer key-of-large"}
        with pytest.raises(
            GlimpConfigError, match=f"large model's server at {urls['large']} refused the API key.*large_api_key"
        ):
            GlimpRouter(
                urls["small"],
                urls["large"],
                backend="openai",
                backend_options={"api_key": "key-of-small", "max_retries": 0},
            )
    finally:
        for server, _ in servers.values():
            server.shutdown()


def test_a_step_cut_mid_stream_goes_on_from_its_tokens(server_url):
    proxy_handler, proxy = cutting_proxy(server_url)
    try:
        router = GlimpRouter(
            server_url,
            f"http://127.0.0.1:{proxy.server_address[1]}/v1",
            backend="openai",
            policy="always_large",
            temperature=0.0,
            reasoning_mode="plain",
            reasoning_budget=40,
        )
        with router:
            trace = router.run(QUESTION)
    finally:
        proxy.shutdown()
    cut, resumed = proxy_handler.streamed[:2]
    received = [id_ for event in cut["events"] for id_ in event["choices"][0]["token_ids"]]
    # the resumed request: the cut one's prompt as token ids, then the tokens it had sent
    assert resumed["request"]["prompt"] == cut["events"][0]["choices"][0]["prompt_token_ids"] + received
    assert resumed["request"]["max_tokens"] == cut["request"]["max_tokens"] - len(received)
    first = trace.steps[0]
    assert first.retries == 1 and sum(step.retries for step in trace.steps) == 1
    texts = [event["choices"][0]["text"] for record in (cut, resumed) for event in record["events"] if event["choices"]]
    assert first.text == "".join(texts)  # what was shown before the cut, then the rest: nothing twice or lost
    assert first.tokens == len(received) + sum(
        len(event["choices"][0]["token_ids"]) for event in resumed["events"] if event["choices"]
    )


def test_without_the_small_models_server_runs_go_on_degraded_and_routing_resumes(server_url):
    """The small model's whole fleet fails: the run goes on with the large model writing every step
    (the trace, /readyz and a metric say so) instead of failing; once the fleet is back (and the
    breaker's cool-down has passed), routing resumes."""
    handler, proxy = switchable_proxy(server_url)
    small_url = f"http://127.0.0.1:{proxy.server_address[1]}/v1"
    settings = {"reasoning_mode": "plain", "reasoning_budget": 24, "max_step_tokens": 8, "threshold": float("inf")}
    try:
        with GlimpRouter(
            small_url, server_url, backend="openai", temperature=0.0, backend_options={"max_retries": 0}
        ) as router:
            router.small_model_breaker.cooldown = 0.5
            handler.down = True
            degraded = router.run(TEA, **settings)
            assert degraded.degraded and "small model's server failed" in degraded.degraded
            assert {(s.model, s.basis) for s in degraded.steps} == {("large", "degraded")} and degraded.answer
            with running_server(router) as url:
                ready = httpx.get(url.removesuffix("/v1") + "/readyz", timeout=30)
                assert ready.status_code == 200 and ready.json()["status"] == "degraded"
                assert set(ready.json()["problems"]) == {"small"}
                body = {"messages": [{"role": "user", "content": TEA}], "reasoning_budget": 24, "max_step_tokens": 8}
                answered = httpx.post(url + "/chat/completions", json=body, timeout=120)
                assert answered.status_code == 200 and answered.json()["glimp"]["summary"]["degraded"]
                assert scrape(url, "glimp_degraded_runs_total") == 1
            handler.down = False
            time.sleep(0.6)  # the breaker's cool-down
            resumed = router.run(TEA, **settings)
        assert resumed.degraded is None and {s.model for s in resumed.steps} == {"small"}
    finally:
        proxy.shutdown()


def test_the_installed_wheel_routes_and_serves_against_the_server(server_url, tmp_path_factory):
    """Glimp as a user installs it (the wheel, the servers extras, no torch, a fresh environment):
    `glimp ask` routes a question through the model server, `glimp serve` gets ready and answers."""
    installed = installed_wheel(tmp_path_factory.mktemp("release"))
    models = ["--backend", "openai", "--small", server_url, "--large", server_url]
    budgets = [
        "--reasoning-mode",
        "plain",
        "--reasoning-budget",
        "24",
        "--max-step-tokens",
        "8",
        "--answer-budget",
        "16",
    ]
    asked = outside_the_tree(installed, "glimp", "ask", TEA, *models, *budgets, "--json")
    assert asked.returncode == 0, asked.stderr[-3000:]
    trace = json.loads(asked.stdout)
    assert trace["steps"] and trace["answer"] and trace["glimp_version"] == glimp_integrations.__version__
    assert {step["model"] for step in trace["steps"]} <= {"small", "large"}
    with installed_glimp_serve(installed, *models) as url:
        body = {"messages": [{"role": "user", "content": TEA}], "reasoning_budget": 24, "max_step_tokens": 8}
        answered = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
        assert answered.status_code == 200, answered.text
        assert answered.json()["choices"][0]["message"]["content"]
        assert answered.headers["x-glimp-version"] == glimp_integrations.__version__


def test_after_a_switch_requests_go_on_from_token_ids(server_url):
    """Both servers serve one vocabulary: each model takes the other's steps as the tokens they
    were written in, so every request after a model's first sends its context as token ids (the
    server's prompt ids, then the steps' tokens), never text for the server to tokenize again."""
    proxies = {role: cutting_proxy(server_url, cut_after=10**9) for role in ("small", "large")}
    try:
        urls = {role: f"http://127.0.0.1:{proxy.server_address[1]}/v1" for role, (_, proxy) in proxies.items()}
        large, small = Verdict.INTERVENE, Verdict.DELEGATE
        scripted = ScriptedChoices(large, small, large, small, large, small, probes=True)
        with GlimpRouter(urls["small"], urls["large"], backend="openai", temperature=0.0, policy=scripted) as router:
            trace = router.run(TEA, reasoning_mode="plain", reasoning_budget=64, max_step_tokens=8)
    finally:
        for _, proxy in proxies.values():
            proxy.shutdown()
    models = [step.model for step in trace.steps]
    assert any(after == "small" and before == "large" for before, after in zip(models, models[1:])), models
    for role, (handler, _) in proxies.items():
        first, *later = handler.streamed
        assert later, (role, models)
        known = first["events"][0]["choices"][0]["prompt_token_ids"]
        for record in later:
            prompt = record["request"]["prompt"]
            assert isinstance(prompt, list), (role, prompt)
            assert prompt[: len(known)] == known  # the context only grows
            known = prompt


@pytest.mark.parametrize("arguments, check", CASES, ids=CASE_IDS)
def test_constrained_answers_are_valid_through_the_server(router, arguments, check):
    run_and_check(router, arguments, check)


def test_a_drafting_large_server_reports_acceptance_in_the_trace(server_url):
    """The documented command (docs/backends.md): the large model's server drafts with the small model and reports
    per-request drafting metrics; the trace carries them for the large model's steps."""
    draft = json.dumps({"method": "draft_model", "model": str(embedded_model_dir()), "num_speculative_tokens": 3})
    with vllm_server("-1", "--speculative-config", draft, "--per-request-spec-decode-metrics", "summary") as large:
        router = GlimpRouter(server_url, large, backend="openai", seed=0)
        try:
            trace = router.run(QUESTION, reasoning_budget=40, threshold=0.0, temperature=0)
        finally:
            router.close()
    large_steps = [s for s in trace.steps if s.model == "large"]
    assert large_steps and all(s.drafted_tokens and s.accepted_tokens is not None for s in large_steps)
    assert trace.acceptance_rate >= 0.9  # the model drafting for itself
