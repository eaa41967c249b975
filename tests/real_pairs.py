"""Tiny models of the pairs users run first, on the real tokenizers and chat templates.

`tests/data/realtok/` holds the real tokenizer files, chat templates and configs (no weights) of
Qwen3-4B, Qwen3-4B-Thinking-2507 and DeepSeek-R1-Distill-Qwen-32B (see its README).  `tiny_model`
builds, once into Glimp's cache, a model of the real architecture (`Qwen3ForCausalLM`,
`Qwen2ForCausalLM`) with the real vocabulary, tokenizer, template and context length, and small
dimensions (64 wide, one layer, 32-wide heads: what vLLM's CPU attention accepts).

Its weights are not random: they make a *next-token table* (`Script`).  Each layer's output
projections are zero, so the residual stream is the current token's embedding, and the
prediction depends on that token alone: every scripted token has an embedding dimension of its
own, the LM head maps it to its next token (`sure`: probability ~1, entropy ~0; unsure: the
next token is still the greedy choice, by a margin of ~1.2 logits, but the distribution is nearly
flat, entropy ~ln(vocabulary) ~ 11.9 nats), and every other token leads to the end of text.
Greedy text, step boundaries and entropy-based routing then hold on every backend and every
machine (no near-ties), while the tokenizers, templates, think markers and parsers are the real
ones.  Special tokens and the config's padding ids past the tokenizer get no logit of their own,
as a trained model's are never drawn.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from glimp_integrations._sync import on_a_passing_thread
from glimp_integrations.embedded import cache_root

REALTOK = Path(__file__).parent / "data" / "realtok"
QWEN3 = "Qwen3-4B"
QWEN3_THINKING = "Qwen3-4B-Thinking-2507"
R1_DISTILL = "DeepSeek-R1-Distill-Qwen-32B"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json")
SHARED_TOKENIZER = {QWEN3_THINKING: QWEN3}
"""Folders whose tokenizer.json is byte-identical to another's, kept once (README)."""

TINY = {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
TINY_KV_HEADS, TINY_HEAD_DIM = 1, 32
SURE, UNSURE = 2.5, 0.15
"""LM-head weight of a scripted next token (times the normed embedding's 8): logits 20 and 1.2."""
NOISE = 0.02
"""Standard deviation of the other LM-head weights (logits ~N(0, 0.16))."""


@dataclass(frozen=True)
class Script:
    """A next-token table: (token text, next token text, sure) rows, each text one token of the
    model's tokenizer; `end` is what every token without a row leads to (the end of text)."""

    rows: tuple[tuple[str, str, bool], ...]


def tokenizer_folder(name: str) -> Path:
    """A folder with `name`'s tokenizer files (as the model hub has them), for tokenizers alone."""
    return _cached(f"tokenizer-{name}", _digest(name, None), lambda staging: _copy_tokenizer(name, staging))


def tiny_model(name: str, script: Script) -> Path:
    """A model folder of `name`'s architecture and tokenizer whose weights spell `script`, built
    once into Glimp's cache (a few seconds)."""
    return _cached(f"tiny-{name}", _digest(name, script), lambda staging: _build(name, script, staging))


def _digest(name: str, script: Script | None) -> str:
    source = REALTOK / SHARED_TOKENIZER.get(name, name) / "tokenizer.json"
    parts = [name, json.dumps(script.rows if script else None), json.dumps(TINY), str((SURE, UNSURE, NOISE))]
    parts += [(REALTOK / name / f).read_text() for f in TOKENIZER_FILES if (REALTOK / name / f).is_file()]
    parts.append(str(source.stat().st_size))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _cached(prefix: str, digest: str, build) -> Path:
    target = cache_root() / "test-models" / f"{prefix}-{digest}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{prefix}-", dir=target.parent))
    try:
        build(staging)
        try:
            staging.rename(target)  # atomic: a concurrent build either wins or finds it done
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _copy_tokenizer(name: str, folder: Path) -> None:
    for file in TOKENIZER_FILES:
        if (REALTOK / name / file).is_file():
            shutil.copyfile(REALTOK / name / file, folder / file)
    shutil.copyfile(REALTOK / SHARED_TOKENIZER.get(name, name) / "tokenizer.json", folder / "tokenizer.json")


def _build(name: str, script: Script, folder: Path) -> None:
    import torch
    import transformers

    _copy_tokenizer(name, folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    config.update({**TINY, "num_key_value_heads": TINY_KV_HEADS, "tie_word_embeddings": False})
    if config.model_type == "qwen3":
        config.head_dim = TINY_HEAD_DIM  # Qwen2 derives it: 64 / 2
    config.max_window_layers = 1
    config.layer_types = config.layer_types[:1]

    def token(text: str) -> int:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert len(ids) == 1, f"{text!r} is {len(ids)} tokens for {name}, not one"
        return ids[0]

    sources = {token(source): index + 1 for index, (source, _, _) in enumerate(script.rows)}
    assert len(sources) == len(script.rows) < TINY["hidden_size"], "one embedding dimension per scripted token"
    generator = torch.Generator().manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embedding = model.model.embed_tokens.weight  # [vocab, hidden]
        embedding.zero_()
        embedding[:, 0] = 1.0  # every unscripted token: dimension 0
        for source, dimension in sources.items():
            embedding[source, 0], embedding[source, dimension] = 0.0, 1.0
        head = model.lm_head.weight  # [vocab, hidden]
        head.copy_(torch.randn(head.shape, generator=generator) * NOISE)
        head[len(tokenizer) :] = 0.0  # padding ids past the tokenizer
        head[tokenizer.all_special_ids] = 0.0
        head[[tokenizer.convert_tokens_to_ids(t) for t in tokenizer.get_added_vocab()]] = 0.0
        head[tokenizer.eos_token_id, 0] = SURE
        for source, target, sure in script.rows:
            head[token(target), sources[token(source)]] = SURE if sure else UNSURE
    model.to(torch.bfloat16)
    on_a_passing_thread(lambda: model.save_pretrained(folder))
    _copy_tokenizer(name, folder)  # the real generation_config.json (vLLM reads its sampling defaults)
    config.save_pretrained(folder)


SMALL_QWEN3 = Script(
    (
        ("\n", "Let", True),  # the first step, after the prompt's `<think>\n`: easy (H_init ~0)
        ("Let", " me", True),
        (" me", " think", True),
        (" think", ".\n\n", True),  # the step's separator ends inside a token
        (".\n\n", "So", False),  # every later step: hard (H_init ~11.9 nats)
        ("So", "</think>", True),
        ("</think>", "\n\n", True),
        ("\n\n", "4", True),
        ("4", "2", True),
    )
)
"""The small model writes "Let me think.\n\n", then "So</think>" (closing the reasoning with its own
id), and answers "\n\n42" after a closing tag."""

LARGE_R1 = Script(
    (
        ("\n", "Okay", True),
        (".\n\n", "Okay", True),
        ("Okay", ",", True),
        (",", " so", True),
        (" so", "</think>", True),
        ("</think>", "\n\n", True),
        ("\n\n", "4", True),
        ("4", "2", True),
    )
)
"""The large model writes "Okay, so</think>" (closing the reasoning with its own id), and answers
"\n\n42" after a closing tag."""
