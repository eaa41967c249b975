"""A model folder's files, checked before any weights load.

Glimp needs three things of each model besides its weights: a tokenizer, a chat template (each
model's prompt is its own template's rendering of the conversation) and a config whose embedding
table holds every token id the tokenizer can produce.  `check_model_folder` reads only the small
files (config.json, tokenizer_config.json, tokenizer.json) and names the file and what is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from glimp_integrations.errors import GlimpConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
"""A fast tokenizer's file, a SentencePiece model, or a BPE vocabulary: a folder needs one of them."""
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
"""Where transformers keeps a chat template outside tokenizer_config.json."""


def check_model_folder(parameter: str, folder: Path) -> None:
    """Raise `GlimpConfigError` naming the file at fault unless `folder` has a config, a tokenizer,
    a chat template, and an embedding table with a row for every token id of the tokenizer."""
    config = _json(parameter, folder, "config.json", required=True)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise GlimpConfigError(
            f"`{parameter}` ({folder}) has no tokenizer: none of {', '.join(TOKENIZER_FILES)} is there. "
            "Copy the model's tokenizer files into the folder (save_pretrained of its tokenizer writes them)."
        )
    tokenizer_config = _json(parameter, folder, "tokenizer_config.json", required=False)
    if not tokenizer_config.get("chat_template") and not any((folder / name).is_file() for name in TEMPLATE_FILES):
        raise GlimpConfigError(
            f"`{parameter}` ({folder}) has no chat template: tokenizer_config.json has no `chat_template` and "
            f"there is no {' or '.join(TEMPLATE_FILES)}. Glimp renders each model's prompt with its own template: "
            "use the instruct or chat model's folder, or add its template as chat_template.jinja."
        )
    rows = embedding_rows(config)
    highest = highest_token_id(folder)
    if rows is not None and highest is not None and highest >= rows:
        raise GlimpConfigError(
            f"`{parameter}` ({folder}): config.json's `vocab_size` is {rows}, but tokenizer.json has token id "
            f"{highest}, which the model has no embedding row for. The config and the tokenizer are of different "
            "models: copy both from the same one."
        )


def embedding_rows(config: dict[str, Any]) -> int | None:
    """The embedding table's rows from a config.json (a multimodal config keeps them in `text_config`)."""
    rows = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    return int(rows) if isinstance(rows, int) else None


def highest_token_id(folder: Path) -> int | None:
    """The largest id in tokenizer.json (its vocabulary and added tokens); None without one."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    vocabulary = (tokenizer.get("model") or {}).get("vocab") or {}
    ids = list(vocabulary.values()) if isinstance(vocabulary, dict) else list(range(len(vocabulary)))
    ids += [token["id"] for token in tokenizer.get("added_tokens") or []]
    return max(ids, default=None)


def _json(parameter: str, folder: Path, name: str, *, required: bool) -> dict[str, Any]:
    path = folder / name
    if not path.is_file():
        if required:
            raise GlimpConfigError(
                f"`{parameter}` ({folder}) has no {name}: it is not a transformers model folder. "
                "Pass the folder that save_pretrained wrote (config.json, weights, tokenizer files)."
            )
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GlimpConfigError(f"`{parameter}`: {path} is not valid JSON ({error}). Restore the file.") from error
    return value if isinstance(value, dict) else {}
