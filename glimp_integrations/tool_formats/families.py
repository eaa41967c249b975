"""Each family's format: the registry (`TOOL_FAMILIES`), its detection from a chat template, its
reasoning markers, and its structure as vLLM's structural-tag registry gives it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from glimp_integrations.errors import invalid, require_module

HERMES = "hermes"


@dataclass(frozen=True)
class ToolFamily:
    """What Glimp knows of a family beyond vLLM's parser: how to recognise its chat template, and
    which reasoning parser goes with it (None: the family's models do not reason in tags)."""

    template_markers: tuple[str, ...]
    """Texts only this family's chat templates hold (every one must be present)."""
    reasoning_parser: str | None = None
    call_markers: tuple[str, ...] = ()
    """The texts vLLM's parser of the family looks up as single tokens and counts in the token ids
    it streams; where a model's tokenizer has them as plain text (DeepSeek-R1-Distill's has), the
    parser is given a view in which each is one token (`MarkersAsTokens`)."""


_DEEPSEEK_MARKERS = tuple(
    f"<｜{name}｜>" for name in ("tool▁calls▁begin", "tool▁calls▁end", "tool▁call▁begin", "tool▁call▁end", "tool▁sep")
)

TOOL_FAMILIES: dict[str, ToolFamily] = {
    "deepseek_v3": ToolFamily(("<｜tool▁calls▁begin｜>", "```json"), "deepseek_r1", _DEEPSEEK_MARKERS),
    "deepseek_v31": ToolFamily(("<｜tool▁calls▁begin｜>",), "deepseek_v3", _DEEPSEEK_MARKERS),
    "llama3_json": ToolFamily(("<|python_tag|>",), None),
    HERMES: ToolFamily(("<tool_call>",), None),
}
"""The families Glimp constrains and reads, in the order templates are matched against them
(DeepSeek-R1's template writes each call's arguments in a ```json block; V3.1's writes them bare)."""

REFUSED_FAMILIES: dict[str, str] = {
    "openai": "gpt-oss writes its reasoning in harmony channels, which do not split into steps at blank lines",
    "kimi_k2": "its call markers are special tokens, which answers lose when decoded to text",
    **{
        name: "its calls are XML-styled parameters, a structure Glimp's grammar does not compile"
        for name in ("qwen3_coder", "qwen3_xml", "glm45", "glm47", "mimo", "minimax_m2", "deepseek_v32")
    },
}
"""Families vLLM reads that Glimp refuses, with the reason; any other vLLM parser is refused as not
supported."""

#: Text only a harmony (gpt-oss) chat template holds.
_HARMONY_MARKER = "<|channel|>"


def check_tool_call_parser(name: str | None) -> None:
    """Raise `GlimpConfigError` naming the known formats unless `name` is one (None: detect)."""
    if name is None or name in TOOL_FAMILIES:
        return
    known = ", ".join(TOOL_FAMILIES)
    reason = REFUSED_FAMILIES.get(name, "is not a tool-call format Glimp supports")
    reason = f"is not supported: {reason}" if name in REFUSED_FAMILIES else reason
    raise invalid(
        "tool_call_parser",
        name,
        f"{reason} (supported: {known})",
        "Name one of those as vLLM's --tool-call-parser does, or None to read it from the chat template.",
    )


def detect_tool_call_parser(chat_template: str | None) -> str:
    """The family whose markers `chat_template` holds (`hermes` when it holds none); a harmony
    (gpt-oss) template raises."""
    template = chat_template or ""
    if _HARMONY_MARKER in template:
        check_tool_call_parser("openai")
    return next(
        (
            name
            for name, family in TOOL_FAMILIES.items()
            if all(marker in template for marker in family.template_markers)
        ),
        HERMES,
    )


def reasoning_markers(reasoning_parser: str | None, tokenizer: Any, *, chosen: bool) -> tuple[str, str]:
    """The texts that open and close the reasoning, from vLLM's reasoning parser of that name;
    `THINK_MARKERS` for None, for a model without a tokenizer to give the parser, and, unless the
    caller `chosen` the parser, where the parser has no markers or refuses the tokenizer (the family's
    parser looks its markers up in the vocabulary)."""
    if reasoning_parser is None or tokenizer is None:
        return THINK_MARKERS
    require_module("vllm", "vllm", f"The `{reasoning_parser}` reasoning parser")
    from vllm.reasoning import ReasoningParserManager

    known = ReasoningParserManager.list_registered()
    if reasoning_parser not in known:
        raise invalid(
            "reasoning_parser",
            reasoning_parser,
            f"is not one of vLLM's reasoning parsers ({', '.join(known)})",
            "Name one of those, or None for the tool-call family's own.",
        )
    try:
        parser = ReasoningParserManager.get_reasoning_parser(reasoning_parser)(tokenizer)
    except RuntimeError as error:
        if not chosen:
            return THINK_MARKERS
        raise invalid(
            "reasoning_parser",
            reasoning_parser,
            f"does not fit the large model's tokenizer ({error})",
            "Name the reasoning parser of the model's family, or set reasoning_parser to None.",
        ) from error
    start, end = parser.reasoning_start_str, parser.reasoning_end_str
    if not start or not end:
        if chosen:
            raise invalid(
                "reasoning_parser",
                reasoning_parser,
                "marks no reasoning for this model",
                "Name a parser whose reasoning has start and end markers, or None.",
            )
        return THINK_MARKERS
    return start, end


THINK_MARKERS = ("<think>", "</think>")
"""The reasoning's markers where no reasoning parser gives others."""


# --- the family's structure ----------------------------------------------------------------------


def tool_call_structure(
    tool_call_parser: str,
    tools: Sequence[Mapping[str, Any]],
    tool_choice: Literal["auto", "required"],
    *,
    parallel: bool,
) -> dict[str, Any]:
    """The structural tag (xgrammar's JSON form of its `format`) of the family's calls to `tools`
    under `tool_choice` (`auto`: text with calls among it; `required`: calls only), as vLLM's
    server builds it; `tools`' parameters are used as given.  Hermes is built here, the same
    structure as vLLM's `hermes` builder, so that the slim install (no vLLM) has it too."""
    if tool_call_parser == HERMES:
        structure = hermes_structure(tools, tool_choice)
    else:
        structure = _vllm_structure(tool_call_parser, tools, tool_choice)
    return structure if parallel else _single_call(structure)


def hermes_structure(tools: Sequence[Mapping[str, Any]], tool_choice: Literal["auto", "required"]) -> dict[str, Any]:
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, on one line or with the
    tags on lines of their own (vLLM's `get_hermes_structural_tag`)."""
    tags = [
        {
            "type": "tag",
            "begin": begin + json.dumps(tool["function"]["name"]) + ', "arguments": ',
            "content": {
                "type": "json_schema",
                "json_schema": tool["function"].get("parameters") or True,
                "style": "json",
            },
            "end": end,
        }
        for tool in tools
        for begin, end in (('<tool_call>\n{"name": ', "}\n</tool_call>"), ('<tool_call>{"name": ', "}</tool_call>"))
    ]
    if tool_choice == "auto":
        return {
            "type": "triggered_tags",
            "triggers": ["<tool_call>"],
            "tags": tags,
            "at_least_one": False,
            "stop_after_first": False,
            "excludes": [],
        }
    return {
        "type": "tags_with_separator",
        "tags": tags,
        "separator": "",
        "at_least_one": True,
        "stop_after_first": False,
    }


def _vllm_structure(
    tool_call_parser: str, tools: Sequence[Mapping[str, Any]], tool_choice: Literal["auto", "required"]
) -> dict[str, Any]:
    require_module("vllm", "vllm", f"The `{tool_call_parser}` tool-call format")
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionToolsParam
    from vllm.tool_parsers import ToolParserManager
    from vllm.tool_parsers.structural_tag_registry import get_model_structural_tag
    from vllm.tool_parsers.tool_strict_level import ToolStrictLevel

    model = ToolParserManager.get_tool_parser(tool_call_parser).structural_tag_model
    assert model is not None, "every supported family has a structural tag"
    strict = [
        ChatCompletionToolsParam.model_validate({"type": "function", "function": {**tool["function"], "strict": True}})
        for tool in tools
    ]
    tag = get_model_structural_tag(model, strict, tool_choice, reasoning=False, strict_level=ToolStrictLevel.PARAMETER)
    assert tag is not None, "tools are given and the choice is not `none`"
    return tag.model_dump(mode="json")["format"]


def _single_call(structure: dict[str, Any]) -> dict[str, Any]:
    """`structure` with every list of calls stopping after its first (vLLM's
    `limit_to_single_tool_call`, on the JSON form)."""
    if isinstance(structure, dict):
        structure = {key: _single_call(value) for key, value in structure.items()}
        if structure.get("type") in ("triggered_tags", "tags_with_separator", "token_triggered_tags"):
            structure["stop_after_first"] = True
    elif isinstance(structure, list):
        return [_single_call(item) for item in structure]
    return structure


def render_call(tool_call_parser: str, name: str, arguments: str) -> str:
    """One call to `name` with `arguments` (JSON text) in the family's format, in the shortest form its
    structure allows (Hermes: on one line): how earlier calls are shown to the model, and the
    example in instructions."""
    tool = {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    return _shortest_form(tool_call_structure(tool_call_parser, [tool], "required", parallel=False), arguments)


def _shortest_form(node: Mapping[str, Any], arguments: str) -> str:
    kind = node["type"]
    if kind == "const_string":
        return node["value"]
    if kind == "json_schema":
        return arguments
    if kind == "tag":
        end = node["end"][0] if isinstance(node["end"], list) else node["end"]
        return node["begin"] + _shortest_form(node["content"], arguments) + end
    if kind == "sequence":
        return "".join(_shortest_form(element, arguments) for element in node["elements"])
    if kind in ("tags_with_separator", "triggered_tags", "or"):
        options = node["elements"] if kind == "or" else node["tags"]
        return min((_shortest_form(option, arguments) for option in options), key=len)
    if kind == "plus":
        return _shortest_form(node["content"], arguments)
    return ""  # optional, repeated or free parts: nothing


def call_openings(structure: Mapping[str, Any]) -> list[str]:
    """The texts a call of `structure` starts with (its triggers, or its tags' begins)."""
    if structure["type"] == "triggered_tags":
        return list(structure["triggers"])
    if structure["type"] == "tag":
        return [structure["begin"]]
    if structure["type"] == "sequence":
        return call_openings(structure["elements"][0])
    if structure["type"] == "const_string":
        return [structure["value"]]
    return [opening for tag in structure.get("tags", ()) for opening in call_openings(tag)]


def load_vllm_parsers() -> bool:
    """Import vLLM's tool parsers (about 8 s on a CPU, once per process), so that a service can do it
    before its first request; False where vLLM is not installed."""
    try:
        import vllm.entrypoints.openai.chat_completion.protocol  # noqa: F401
        import vllm.tool_parsers  # noqa: F401
    except ImportError:
        return False
    return True
