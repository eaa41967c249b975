"""Speculative decoding for the vLLM backend: the option checked (`check_speculative_option`, before
anything loads), then turned into vLLM's `speculative_config` for the large model, with the draft
model's vocabulary checked against the target's (`draft_fit`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal, get_args

from glimp_integrations.errors import GlimpConfigError, invalid, require_module

logger = logging.getLogger(__name__)


def check_speculative_option(option: Any) -> None:
    """`speculative` as `GlimpRouter` takes it: True, False, or a dict of vLLM's speculative_config."""
    if not isinstance(option, (bool, Mapping)):
        raise invalid(
            "speculative",
            option,
            "must be True, False or a dict of vLLM's speculative_config",
            'Pass True (the small model drafts 3 tokens) or e.g. {"method": "ngram", "num_speculative_tokens": 3}.',
        )


def speculative_config(small: str, large: str, option: Literal[True] | Mapping[str, Any]) -> dict[str, Any]:
    """vLLM's `speculative_config` for the large model, or an error saying why it cannot work.

    `option` True drafts with the small model, 3 tokens per verification (the paper's setting); a
    dict is vLLM's `speculative_config` itself, e.g. {"num_speculative_tokens": 5},
    {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4} or
    {"method": "eagle3", "model": "<EAGLE head>"}; `method` defaults to `draft_model`, whose
    `model` defaults to the small model.

    A draft model needs the target's vocabulary: the same base tokens with the same ids (added
    special tokens may differ).  vLLM also compares the embedding tables' sizes, which differ in
    some pairs of one vocabulary (Qwen3-4B pads to 151,936 rows, DeepSeek-R1-Distill-Qwen-32B to
    152,064); for those vLLM maps the draft's tokens onto the target's (`use_heterogeneous_vocab`)."""
    from vllm.config.speculative import SpeculativeMethod

    check_speculative_option(option)
    config: dict[str, Any] = {
        "method": "draft_model",
        "num_speculative_tokens": 3,
        **({} if option is True else option),
    }
    methods = get_args(SpeculativeMethod)
    if config["method"] not in methods:
        raise invalid(
            "speculative['method']",
            config["method"],
            f"must be one of vLLM's methods ({', '.join(methods)})",
            "Use draft_model (the small model drafts) or ngram (prompt lookup, no model).",
        )
    count = config["num_speculative_tokens"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise invalid(
            "speculative['num_speculative_tokens']",
            count,
            "must be a positive int",
            "The paper drafts 3 tokens per verification.",
        )
    if config["method"] == "draft_model":
        config.setdefault("model", small)
        config.update(draft_vocabulary(config["model"], large))
    elif config["method"] not in ("ngram", "ngram_gpu", "suffix") and "model" not in config:
        raise invalid(
            "speculative['model']",
            None,
            f"must name the {config['method']} drafter",
            f'Pass e.g. {{"method": "{config["method"]}", "model": "<path or HF id of the drafter>"}}.',
        )
    return config


def draft_vocabulary(draft: str, target: str) -> dict[str, Any]:
    """Check that `draft` can draft for `target` (models by name); the extra config an uneven embedding
    table needs (`draft_fit`)."""
    transformers = require_module("transformers", "hf", "Checking the draft model's vocabulary")
    tokenizers = tuple(transformers.AutoTokenizer.from_pretrained(name) for name in (draft, target))
    rows = tuple(transformers.AutoConfig.from_pretrained(name).get_text_config().vocab_size for name in (draft, target))
    return draft_fit(draft, target, tokenizers, rows)


def draft_fit(draft: str, target: str, tokenizers: tuple[Any, Any], rows: tuple[int, int]) -> dict[str, Any]:
    """The same check on the two models' loaded tokenizers and embedding-table rows, (draft, target)."""
    base = [_base_vocabulary(tokenizer) for tokenizer in tokenizers]
    if base[0] != base[1]:
        raise GlimpConfigError(
            f"`speculative=True` needs the draft model to share the large model's vocabulary, but `{draft}` "
            f"({len(base[0])} base tokens) and `{target}` ({len(base[1])}) tokenize differently. "
            'Pick a draft of the same family, use {"method": "ngram"}, or run with speculative=False.'
        )
    if rows[0] == rows[1]:
        return {}
    logger.info(
        "The draft's embedding table has %d rows and the target's %d over one vocabulary: "
        "vLLM maps the draft's tokens (use_heterogeneous_vocab).",
        *rows,
    )
    return {"use_heterogeneous_vocab": True}


def _base_vocabulary(tokenizer: Any) -> dict[str, int]:
    """Token -> id for the tokenizer's base vocabulary (without the added special tokens)."""
    return {token: index for token, index in tokenizer.get_vocab().items() if index < tokenizer.vocab_size}
