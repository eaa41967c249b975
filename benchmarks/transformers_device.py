"""The transformers backend on an accelerator: SmolLM2-135M's architecture and tokenizer with
random weights (the real weights need not travel to a GPU machine: a folder with the model's
config and tokenizer files is enough), in bf16.

Exercises what the CPU suite cannot: device placement of the probe, the sampler's generator, the
grammar mask and the closing masks; routed plain and think runs, constrained JSON and a forced tool
call (valid by construction even from random weights), and concurrent runs.  Figures are about
the mechanics, not a model's speed or quality.

    python benchmarks/transformers_device.py --device cuda [--config-from FOLDER] [--out DIR]
"""

import argparse
import asyncio
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent.parent))  # the repo, where glimp is not installed
from glimp_integrations import GlimpRouter  # noqa: E402
from glimp_integrations.tool_formats import parse_tool_calls  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--device", default="cuda")
parser.add_argument("--config-from", type=Path, help="config and tokenizer files (default: the embedded model's)")
parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
args = parser.parse_args()
device, out = args.device, args.out
if args.config_from is None:
    from glimp_integrations.embedded import embedded_model_dir

    args.config_from = embedded_model_dir()
model_dir = Path(tempfile.mkdtemp(prefix="random-smollm2-"))
torch.manual_seed(0)
config = transformers.AutoConfig.from_pretrained(args.config_from)
transformers.AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    shutil.copy(args.config_from / name, model_dir / name)

results: dict = {
    "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
    "torch": torch.__version__,
    "transformers": transformers.__version__,
}
router = GlimpRouter(str(model_dir), str(model_dir), device=device, seed=0, reasoning_mode="plain")
results["dtype"] = str(router.backend.models["large"].model.dtype)
QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"

first = router.run(QUESTION, reasoning_budget=8).steps[0].probe
middle = first.h_init  # random weights: every entropy is near ln(vocab); route around the first one
started = time.perf_counter()
plain = router.run(QUESTION, reasoning_budget=96, threshold=middle, max_step_tokens=12)
results["plain"] = {
    "steps": len(plain.steps),
    "models": [s.model for s in plain.steps],
    "tokens": plain.completion_tokens,
    "tokens_per_s": plain.completion_tokens / (time.perf_counter() - started),
    "h_init": [s.h_init for s in plain.steps],
}
think = router.run(
    QUESTION, reasoning_mode="think", reasoning_budget=24, answer_budget=12, threshold=middle, max_step_tokens=8
)
results["think"] = {"phases": [s.phase for s in think.steps], "answer_model": think.steps[-1].model}

schema = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "count": {"type": "integer"}},
    "required": ["name", "count"],
}
structured = router.run(
    QUESTION,
    max_tokens=60,
    response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
)
value = json.loads(structured.answer)
results["json_schema"] = {
    "answer": structured.answer,
    "valid": set(value) == {"name", "count"} and isinstance(value["count"], int),
}
tool = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
called = router.run(QUESTION, max_tokens=60, tools=[tool], tool_choice="add", parallel_tool_calls=False)
calls = parse_tool_calls(called.answer, ["add"])[1]
results["tool_call"] = {"answer": called.answer, "valid": len(calls) == 1 and set(calls[0].arguments) == {"a", "b"}}


async def runs_per_second(concurrency: int, jobs: int) -> float:
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with slots:
            await router.arun(QUESTION, reasoning_budget=48, threshold=middle, seed=i, temperature=0)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(jobs)))
    return jobs / (time.perf_counter() - started)


one, eight = asyncio.run(runs_per_second(1, 8)), asyncio.run(runs_per_second(8, 16))
results["concurrency"] = {"runs_per_s_1": one, "runs_per_s_8": eight, "ratio": eight / one}
try:  # the device image has no vLLM: the error must say how to install it
    GlimpRouter(backend="vllm") if importlib.util.find_spec("vllm") is None else None
    results["vllm"] = "installed"
except Exception as error:
    results["vllm"] = f"{type(error).__name__}: {error}"
print(json.dumps(results, indent=2))
out.mkdir(parents=True, exist_ok=True)
(out / f"transformers_{device}.json").write_text(json.dumps(results, indent=2))
