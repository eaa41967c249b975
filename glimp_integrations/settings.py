"""Every setting of Glimp, declared once, and the surfaces made from that declaration.

- A *run setting* is a field of `RouterConfig` or `SamplingConfig` (`config.py`): its type, default
  and check are there, and its description is the docstring written under the field.
- An *engine setting* is an argument of `GlimpRouter` that picks and builds the backend (fixed for
  the router's life); `ENGINE_SETTINGS` declares them here.

Made from `SETTINGS`: the framework adapters' fields (`adapter_fields`), the `glimp` CLI's options
(`add_cli_options`), the fields `glimp serve` accepts per request (`RUN_SETTING_NAMES`), and the
settings table of the docs (`settings_table`, in docs/engine.md).  Adding a run setting is one field in
`config.py`, with its docstring; `tests/test_settings.py` fails when a surface lacks it.
"""

from __future__ import annotations

import argparse
import ast
import functools
import inspect
import json
import math
import textwrap
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal

from glimp_integrations.config import BackendName, RouterConfig, SamplingConfig


@dataclass(frozen=True)
class Setting:
    name: str
    annotation: Any
    """The type of its values."""
    default: Any
    description: str
    engine: bool = False
    """An argument of `GlimpRouter` (for the router's life) rather than a field of one run."""
    per_call: bool = False
    """Framework adapters take it per call too (`llm.invoke(..., temperature=0)`)."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


PER_CALL = frozenset({"temperature", "top_p", "seed", "threshold", "reasoning_budget"})
"""Run settings the framework adapters take per call, under the same names."""

ENGINE_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "backend",
        BackendName,
        "transformers",
        "Where the models run: `transformers` (this process, torch), `vllm` (vLLM engines in this process) "
        "or `openai` (two OpenAI-compatible servers; `small` and `large` are their URLs).",
        engine=True,
    ),
    Setting("device", str, "auto", "Torch device of the transformers backend.", engine=True),
    Setting(
        "speculative",
        bool | dict,
        False,
        "Draft the large model's tokens with the small model (vLLM), or a dict of vLLM's `speculative_config` "
        "for another drafting method.",
        engine=True,
    ),
    Setting(
        "backend_options",
        dict,
        None,
        "The backend's own options (e.g. vLLM engine arguments, the servers' API keys and retries).",
        engine=True,
    ),
)


def _attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a class's fields, each on one line."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    return {
        field.target.id: " ".join(after.value.value.split())
        for field, after in zip(body, body[1:])
        if isinstance(field, ast.AnnAssign)
        and isinstance(field.target, ast.Name)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
        and isinstance(after.value.value, str)
    }


def _run_settings() -> tuple[Setting, ...]:
    found = []
    for owner in (RouterConfig, SamplingConfig):
        docs, hints = _attribute_docs(owner), typing.get_type_hints(owner)
        for field in fields(owner):
            if field.name == "sampling":
                continue
            factory = typing.cast(Callable[[], Any], field.default_factory)
            default = field.default if field.default is not MISSING else factory()
            found.append(
                Setting(field.name, hints[field.name], default, docs[field.name], per_call=field.name in PER_CALL)
            )
    return tuple(found)


RUN_SETTINGS: tuple[Setting, ...] = _run_settings()
SETTINGS: tuple[Setting, ...] = ENGINE_SETTINGS + RUN_SETTINGS
RUN_SETTING_NAMES: tuple[str, ...] = tuple(s.name for s in RUN_SETTINGS)
SETTING_NAMES: tuple[str, ...] = tuple(s.name for s in SETTINGS)

ADAPTERS_OWN = frozenset({"stop", "timeout"})
"""Run settings the adapters take in their framework's own terms: `stop` as LangChain's and
LlamaIndex's stop sequences, `timeout` as their request timeout (the whole call on a local backend)."""


def adapter_settings() -> tuple[Setting, ...]:
    """The settings a framework adapter has as fields, with the same names."""
    return tuple(s for s in SETTINGS if s.name not in ADAPTERS_OWN)


def adapter_fields() -> dict[str, tuple[Any, Any]]:
    """Pydantic field definitions (`create_model` form) of the adapters' settings: run settings
    default to None, meaning the engine's own default (the embedded pair has defaults of its own)."""
    from pydantic import Field, StrictBool

    # a backend is a name or a Backend instance; `speculative` is a bool, never "yes"
    annotations = {"backend": Any, "speculative": StrictBool | dict}
    definitions: dict[str, tuple[Any, Any]] = {}
    for setting in adapter_settings():
        if setting.engine:
            default = {"default_factory": dict} if setting.name == "backend_options" else {"default": setting.default}
            definitions[setting.name] = (
                annotations.get(setting.name, setting.annotation),
                Field(**default, description=setting.description),
            )
        else:
            definitions[setting.name] = (
                setting.annotation | None,
                Field(
                    default=None, description=f"{setting.description} (None: the engine's default, {_shown(setting)}.)"
                ),
            )
    return definitions


@functools.cache
def adapter_settings_model() -> type:
    """A pydantic model with the adapters' settings as fields; both adapters inherit it."""
    from pydantic import ConfigDict, create_model

    return create_model("GlimpSettings", __config__=ConfigDict(arbitrary_types_allowed=True), **adapter_fields())  # type: ignore[call-overload]


def _shown(setting: Setting) -> str:
    return "None" if setting.default is None else repr(setting.default)


# --- the command line ---------------------------------------------------------------------------


def add_cli_options(
    parser: argparse.ArgumentParser, names: Collection[str], aliases: Mapping[str, str] | None = None
) -> None:
    """An option per setting in `names` (`--top-p`, ...; `aliases` adds other flags by setting
    name), each defaulting to None: the engine's default."""
    for setting in SETTINGS:
        if setting.name not in names:
            continue
        options: dict[str, Any] = {"default": None, "help": f"{setting.description} (default: {_shown(setting)})"}
        kind = typing.get_origin(setting.annotation)
        if setting.annotation is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif kind is Literal:
            options["choices"] = typing.get_args(setting.annotation)
        elif setting.name == "speculative":
            options.update(nargs="?", const=True, type=_json_value, metavar="JSON")
        else:
            options.update(type=_parser_of(setting), metavar=_metavar(setting))
        flags = [setting.flag, *([aliases[setting.name]] if aliases and setting.name in aliases else [])]
        parser.add_argument(*flags, dest=setting.name, **options)


def cli_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (the options left at None are the engine's defaults)."""
    return {name: value for name in SETTING_NAMES if (value := getattr(args, name, None)) is not None}


def _parser_of(setting: Setting) -> Callable[[str], Any]:
    base = _base_type(setting.annotation)
    if base is float:
        return _number
    if base in (int, str):
        return base
    if base is tuple:
        return _json_list
    return _json_value  # dicts: JSON


def _metavar(setting: Setting) -> str | None:
    return "JSON" if _parser_of(setting) in (_json_value, _json_list) else None


def _base_type(annotation: Any) -> Any:
    """`int` for `int | None`, the origin for generic types."""
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(arguments) == 1:
        return arguments[0]
    return typing.get_origin(annotation) or annotation


def _number(text: str) -> float:
    value = float(text)  # "inf" is accepted
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be a number; got {text!r}")
    return value


def _json_list(text: str) -> tuple:
    value = _json_value(text)
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"must be a JSON list; got {text!r}")
    return tuple(value)


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"must be JSON; got {text!r} ({error})") from error


# --- the docs -----------------------------------------------------------------------------------


def settings_table() -> str:
    """The settings table of docs/engine.md (Markdown), one row per setting."""
    rows = ["| setting | default | what it does |", "| --- | --- | --- |"]
    for setting in SETTINGS:
        kind = "engine" if setting.engine else "per call" if setting.per_call else "run"
        rows.append(f"| `{setting.name}` ({kind}) | `{_shown(setting)}` | {setting.description.replace('|', '/')} |")
    return "\n".join(rows)
