"""Where a routed run's time goes on the vLLM backend in this process, at a number of concurrent
chains: run it under py-spy, then summarize the samples by where they were taken.

    py-spy record --subprocesses --format raw --rate 50 -o /tmp/routing-8.txt -- \
        .venv/bin/python benchmarks/profile_routing.py --chains 8
    .venv/bin/python benchmarks/profile_routing.py --summarize /tmp/routing-8.txt

The runs are those of `serve_load.py`'s throughput section (the embedded pair, think mode, greedy,
library calls).  The summary splits the samples of glimp's process (the router, the sessions,
vLLM's front end: output processing and detokenizing, asyncio) from the engine's (the model's
forward pass, sampling and logits processors such as the entropy gate, the scheduler), and
reports each as a share of its process's samples that were not idle.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import time

from questions import QUESTIONS

from glimp_integrations import GlimpRouter, _sync

SETTINGS = {"reasoning_budget": 48, "answer_budget": 24, "temperature": 0}

BUCKETS: list[tuple[str, str]] = [  # (name, a pattern of a frame's file or function), first match wins
    ("entropy gate", r"vllm_gate"),
    ("sampling and logits processors", r"v1/sample/"),
    ("model forward", r"model_executor/models/|torch/nn/modules"),
    ("scheduler", r"v1/core/sched"),
    ("structured outputs", r"structured_output"),
    ("detokenizing", r"detokeniz|tokenizers"),
    ("vLLM output processing", r"v1/engine/output_processor|v1/engine/async_llm"),
    ("glimp router", r"glimp_integrations/(router|routing_loop)\.py"),
    ("glimp sessions", r"glimp_integrations/backends/"),
    ("glimp event loop bridge", r"glimp_integrations/_sync\.py"),
    ("engine messaging (zmq, msgpack)", r"zmq|msgspec|serial_utils|core_client"),
    ("asyncio", r"asyncio/"),
]


async def chains(router: GlimpRouter, count: int, jobs: int) -> float:
    slots = asyncio.Semaphore(count)

    async def one(index: int) -> None:
        async with slots:
            await router.arun(QUESTIONS[index % len(QUESTIONS)], **SETTINGS)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(jobs)))
    return jobs / (time.perf_counter() - started)


PROCESSES = {1: "glimp", 2: "engine core", 3: "engine worker"}
"""py-spy nests a child process's stacks under its parent's: the depth names the process."""


def summarize(path: str) -> dict[str, dict[str, float]]:
    """Each process's samples (py-spy records threads that are running, not waiting), and their
    shares per bucket: the innermost frame of a sample that falls in a bucket names it."""
    counts: dict[str, collections.Counter] = {name: collections.Counter() for name in PROCESSES.values()}
    for line in open(path):
        stack, _, number = line.rstrip().rpartition(" ")
        frames = stack.split(";")
        process = PROCESSES.get(sum(frame.startswith("process ") for frame in frames), "other processes")
        bucket = next(
            (name for frame in reversed(frames) for name, pattern in BUCKETS if re.search(pattern, frame)), "other"
        )
        counts.setdefault(process, collections.Counter())[bucket] += int(number)
    return {
        process: {
            "samples": sum(counter.values()),
            **{bucket: round(n / (sum(counter.values()) or 1), 3) for bucket, n in counter.most_common()},
        }
        for process, counter in counts.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=None, help="runs in all (default: 4 per chain, at least 16)")
    parser.add_argument("--summarize", metavar="RAW", help="summarize a py-spy raw profile instead of running")
    args = parser.parse_args()
    if args.summarize:
        for process, shares in summarize(args.summarize).items():
            print(process, shares)
        return
    router = GlimpRouter(backend="vllm", seed=0)
    router.run("Warm up.", reasoning_budget=8, answer_budget=4)
    rate = _sync.run_sync(chains(router, args.chains, args.jobs or max(16, 4 * args.chains)))
    print(f"{args.chains} chains: {rate:.3f} runs/s")
    router.close()


if __name__ == "__main__":
    main()
