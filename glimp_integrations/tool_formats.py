"""Each model family's own tool-call format: chosen per model, constrained, and read back by vLLM.

A *tool-call parser* is a family's format, named as vLLM names it (`--tool-call-parser`):
`hermes` (`<tool_call>{...}</tool_call>`: Qwen, SmolLM2, Hermes), `llama3_json` (Llama 3.x's bare
JSON), `deepseek_v3` (DeepSeek-R1 and its distills) and `deepseek_v31`.  Where the caller names
none, `detect_tool_call_parser` reads it from the large model's chat template; Hermes stays the
format of templates that show no other.

- **Constrained** in that format: vLLM's structural-tag registry (xgrammar's family templates, the
  one source of each family's syntax, as `vllm serve` uses them) gives the family's structure,
  which `structural_tag_lark` compiles into llguidance's Lark dialect, the one grammar engine of
  every Glimp backend (the transformers matcher, vLLM's `guidance` structured outputs in process
  and on servers).  Why not hand vLLM the structural tag itself: vLLM V1 runs one
  structured-output backend per engine (`StructuredOutputManager.grammar_init`), its `guidance`
  backend reads only the legacy structural-tag form, and the other answer constraints (and the
  user's own `grammar`) are Lark; one dialect keeps them all on one engine.
- **Read back** by vLLM's parser of the family (`ToolCallReader`), whole and streamed.  Without
  vLLM (the slim `glimp[openai]` install) only `hermes` is available, read by Glimp's own reader.
- **Reasoning**: the family's reasoning parser (`--reasoning-parser`) gives the markers that open
  and close the reasoning (`reasoning_markers`).  Families whose reasoning does not split into
  steps (gpt-oss's harmony channels) are refused, with the reason.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from glimp_integrations.errors import GlimpConfigError, invalid, require_module

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


# --- structural tag -> Lark ----------------------------------------------------------------------


def structural_tag_lark(
    structure: Mapping[str, Any], json_layout: Mapping[str, Any], tokens: Collection[str] = (), rule: str = "calls"
) -> str:
    """Lark rules (llguidance's dialect) for a structural tag's format, the top one named `rule`.

    - JSON is written in `json_layout` (llguidance's `x-guidance` options).
    - Each of `tokens` (the model's added tokens, e.g. `<｜tool▁calls▁begin｜>`) inside a fixed
      string is matched as that token, as the model was trained to write it: llguidance reads an
      added token as a token of its own, never as its text.
    - Free text up to a fixed string (`any_text` before its tag's end, the text before a trigger)
      is one lexeme that ends at that string's first occurrence: llguidance's lexer is greedy and
      would otherwise read the string as more text.

    Raises `GlimpConfigError` for an element Glimp does not compile (token-level formats,
    XML-styled JSON)."""
    writer = _LarkWriter(json_layout, tokens)
    body, _ = writer.element(structure, None)
    return "\n".join([f"{rule}: {body}", *writer.rules])


_ANY = r"(.|\n)*"


class _LarkWriter:
    def __init__(self, json_layout: Mapping[str, Any], tokens: Collection[str]) -> None:
        self.json_layout = dict(json_layout)
        # llguidance names a token by its text when that text is `<...>`; other added tokens stay text
        self.tokens = sorted((t for t in tokens if len(t) > 2 and t[0] == "<" and t[-1] == ">"), key=len, reverse=True)
        self.rules: list[str] = []
        self._named: dict[str, str] = {}

    def element(self, node: Mapping[str, Any], follow: str | None) -> tuple[str, bool]:
        """(Lark expression of `node`, whether it also matched `follow`, the fixed text after it)."""
        kind = node["type"]
        if kind == "const_string":
            return self.literal(node["value"]), False
        if kind == "json_schema" and node.get("style", "json") == "json":
            schema = {} if node["json_schema"] is True else dict(node["json_schema"])
            return "%json " + json.dumps({**schema, "x-guidance": self.json_layout}, ensure_ascii=False), False
        if kind == "regex":
            return "/" + node["pattern"].replace("/", r"\/") + "/", False
        if kind == "any_text" and not node.get("max_tokens") and not node.get("max_chars"):
            until = follow if follow is not None and not self.has_token(follow) else None
            return self.lexeme(text_lexeme(node.get("excludes", ()), until)), until is not None
        if kind == "sequence":
            return self.sequence(node["elements"], follow)
        if kind == "or":
            return self.alternatives([self.element(e, follow) for e in node["elements"]], follow)
        if kind in ("optional", "star", "plus"):
            inner, _ = self.element(node["content"], None)
            return f"({inner})" + {"optional": "?", "star": "*", "plus": "+"}[kind], False
        if kind == "tag" and isinstance(node["begin"], str):
            return self.tag(node, self.literal(node["begin"])), False
        if kind == "tags_with_separator":
            return self.tags_with_separator(node), False
        if kind == "triggered_tags":
            return self.triggered_tags(node), False
        raise GlimpConfigError(
            f"The tool-call format uses a `{kind}` element (style {node.get('style')!r}) that "
            "Glimp does not compile; name a supported tool_call_parser instead."
        )

    def sequence(self, elements: Sequence[Mapping[str, Any]], follow: str | None) -> tuple[str, bool]:
        parts, index, consumed = [], 0, False
        while index < len(elements):
            following = elements[index + 1] if index + 1 < len(elements) else None
            text_after = (following["value"] if following["type"] == "const_string" else None) if following else follow
            expression, took = self.element(elements[index], text_after)
            parts.append(expression)
            consumed = took and following is None
            index += 2 if took and following else 1
        return " ".join(parts), consumed

    def alternatives(self, options: list[tuple[str, bool]], follow: str | None) -> tuple[str, bool]:
        if follow is not None and any(took for _, took in options):
            return "(" + " | ".join(e if took else f"{e} {self.literal(follow)}" for e, took in options) + ")", True
        return "(" + " | ".join(e for e, _ in options) + ")", False

    def tag(self, node: Mapping[str, Any], begin: str) -> str:
        """`begin` (a Lark expression), the tag's content, its end."""
        ends = node["end"] if isinstance(node["end"], list) else [node["end"]]
        content, took = self.element(node["content"], ends[0] if len(ends) == 1 else None)
        end = "" if took else " (" + " | ".join(self.literal(e) for e in ends) + ")"
        return " ".join(part for part in (begin, content) if part) + end

    def tags_with_separator(self, node: Mapping[str, Any]) -> str:
        one = self.rule(" | ".join(self.tag(t, self.literal(t["begin"])) for t in node["tags"]))
        separator = f"{self.literal(node['separator'])} " if node["separator"] else ""
        calls = one if node["stop_after_first"] else f"{one} ({separator}{one})*"
        return calls if node["at_least_one"] else f"({calls})?"

    def triggered_tags(self, node: Mapping[str, Any]) -> str:
        triggers, excludes = node["triggers"], list(node.get("excludes", ()))
        text = self.lexeme(text_lexeme([*triggers, *excludes], None))
        segments = []
        for trigger in triggers:
            others = [t for t in triggers if t != trigger] + excludes
            lead = (
                f"{text} {self.literal(trigger)}"
                if self.has_token(trigger)
                else self.lexeme(text_lexeme(others, trigger))
            )
            segments += [
                self.tag(tag, " ".join(p for p in (lead, self.literal(tag["begin"][len(trigger) :])) if p))
                for tag in node["tags"]
                if tag["begin"].startswith(trigger)
            ]
        segment = self.rule(" | ".join(segments))
        # at_least_one (xgrammar): the output starts with a tag, no text before it
        first = (
            self.rule(" | ".join(self.tag(tag, self.literal(tag["begin"])) for tag in node["tags"]))
            if node["at_least_one"]
            else None
        )
        if node["stop_after_first"]:
            return first or f"({text} | {segment})"
        return f"{first} {segment}* {text}" if first else f"{segment}* {text}"

    def literal(self, text: str) -> str:
        """`text` as Lark: quoted strings, and each of the model's added tokens as `<token>`."""
        for token in self.tokens:
            if token in text:
                before, _, after = text.partition(token)
                return " ".join(p for p in (self.literal(before), token, self.literal(after)) if p)
        return json.dumps(text, ensure_ascii=False) if text else ""

    def has_token(self, text: str) -> bool:
        return any(token in text for token in self.tokens)

    def lexeme(self, regex: str) -> str:
        return self._name(regex, "TEXT_", lambda name: f"{name}: {regex}")

    def rule(self, body: str) -> str:
        return self._name(body, "call", lambda name: f"{name}: {body}")

    def _name(self, key: str, prefix: str, definition: Any) -> str:
        if key not in self._named:
            self._named[key] = name = f"{prefix}{len(self._named)}"
            self.rules.append(definition(name))
        return self._named[key]


def text_lexeme(excluded: Sequence[str], until: str | None) -> str:
    """A lexeme of free text holding none of `excluded`, ending at the first `until` when given."""
    parts = [f"/{_ANY}{_regex(until)}/ & ~/{_ANY}{_regex(until)}(.|\\n)+/"] if until else [f"/{_ANY}/"]
    parts += [f"~/{_ANY}{_regex(e)}{_ANY}/" for e in excluded if e and (until is None or e not in until)]
    return " & ".join(parts)


def _regex(text: str) -> str:
    """`text` as a regex matching it literally (llguidance's regex syntax, inside `/.../`)."""
    return re.sub(r"([\\.+*?()|\[\]{}^$#&\-~/])", r"\\\1", text).replace("\n", r"\n")


# --- reading calls back --------------------------------------------------------------------------


# Glimp's own reader of the Hermes format, for where vLLM's parsers are not installed.
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")


def parse_tool_calls(text: str, tool_names: Sequence[str]) -> tuple[str, list[ToolCall]]:
    """Split an answer into its plain text and the calls it makes to tools named `tool_names`.
    Text that names no known tool, or is not valid JSON, stays text."""
    calls: list[ToolCall] = []
    spans: list[tuple[int, int]] = []
    for match in _TOOL_CALL.finditer(text):
        call = _as_call(match.group(1), tool_names)
        if call:
            calls.append(call)
            spans.append(match.span())
    if not calls:
        stripped = text.strip()
        call = _as_call(stripped, tool_names) if stripped.startswith("{") else None
        return ("", [call]) if call else (text, [])
    remaining = text
    for start, end in reversed(spans):
        remaining = remaining[:start] + remaining[end:]
    return remaining.strip(), calls


def _as_call(payload: str, tool_names: Sequence[str]) -> ToolCall | None:
    payload = payload.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        data = json.loads(payload)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("name") not in tool_names:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    return ToolCall(data["name"], arguments if isinstance(arguments, dict) else {})


@dataclass(frozen=True)
class CallDelta:
    """More of one call as the answer streams: its position, its name (in its first delta) and
    the next piece of its arguments' JSON text."""

    index: int
    name: str | None = None
    arguments: str = ""


class ToolCallReader:
    """Reads the calls to `tools` out of an answer in a family's format with vLLM's parser of that
    family: a whole answer (`read`), or one streamed piece at a time (`feed`, then `finish`).
    Without vLLM (the slim install), Hermes answers are read by Glimp's own reader and streamed
    calls arrive whole at `finish`."""

    def __init__(self, tool_call_parser: str, tools: Sequence[Mapping[str, Any]], tokenizer: Any) -> None:
        self.tool_call_parser = tool_call_parser
        self.tool_names = [t["function"]["name"] for t in tools]
        self._tools = list(tools)
        self._tokenizer = tokenizer
        self._stream_parser: Any = None
        self._answer = ""
        """The answer as fed to the streaming parser so far."""
        self._held = ""
        """Text that may begin a call marker, held until the marker is whole (fed as one token)."""
        self._token_ids: list[int] = []
        self._streamed: dict[int, list[str | None]] = {}
        """Per call index: [name, arguments text] sent so far."""

    def read(self, answer: str) -> tuple[str, list[ToolCall]]:
        """(the answer's text outside its calls, its calls).  An answer whose calls name a tool not
        offered, or whose arguments are not a JSON object, is all text."""
        parser = self._vllm_parser()
        if parser is None:
            return parse_tool_calls(answer, self.tool_names)
        extracted = parser.extract_tool_calls(answer, self._request)
        found = extracted.tool_calls if extracted.tools_called else []
        calls = [
            ToolCall(call.function.name, arguments)
            for call in found
            if call.function.name in self.tool_names
            and (arguments := _json_object(call.function.arguments)) is not None
        ]
        if not calls or len(calls) < len(found):
            return answer, []
        return (extracted.content or "").strip(), calls

    def feed(self, delta: str) -> tuple[str, list[CallDelta]]:
        """(text to show now, parts of calls) for the next piece of the answer."""
        if self._stream_parser is None:
            self._stream_parser = self._vllm_parser() or False
        if self._stream_parser is False:
            self._answer += delta
            return "", []  # Glimp's own reader reads the whole answer at `finish`
        text = self._held + delta
        markers = getattr(self._stream_parser.model_tokenizer, "marker_ids", {})
        held = max((n for m in markers for n in range(1, len(m)) if text.endswith(m[:n])), default=0)
        self._held = text[len(text) - held :] if held else ""
        return self._feed_parser(text[: len(text) - held])

    def _feed_parser(self, delta: str) -> tuple[str, list[CallDelta]]:
        previous_answer, previous_ids = self._answer, list(self._token_ids)
        self._answer += delta
        if not delta:
            return "", []
        delta_ids = self._stream_parser.model_tokenizer.encode(delta, add_special_tokens=False)
        self._token_ids += delta_ids
        message = self._stream_parser.extract_tool_calls_streaming(
            previous_answer, self._answer, delta, previous_ids, self._token_ids, delta_ids, self._request
        )
        if message is None:
            return "", []
        parts = [
            CallDelta(
                c.index, c.function.name if c.function else None, (c.function.arguments or "") if c.function else ""
            )
            for c in message.tool_calls or []
        ]
        for part in parts:
            sent = self._streamed.setdefault(part.index, [None, ""])
            sent[0] = sent[0] or part.name
            sent[1] = (sent[1] or "") + part.arguments
        return message.content or "", parts

    def calls_so_far(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, arguments as far as streamed) of each call whose name has streamed; unfinished
        strings are left out of the arguments."""
        from pydantic_core import from_json  # installed with either framework adapter, and with vLLM

        calls = []
        for name, arguments in (self._streamed[index] for index in sorted(self._streamed)):
            try:
                value = from_json(arguments or "{}", allow_partial=True)
            except ValueError:
                value = {}
            calls.append((name or "", value if isinstance(value, dict) else {}))
        return calls

    def finish(self) -> tuple[str, list[CallDelta], list[ToolCall]]:
        """At the end of the answer: (text not shown yet, the parts of calls not streamed yet, the
        whole answer's calls as `read` finds them).  The streamed parts and these together spell
        each call's name and arguments."""
        tail, parts = self._feed_parser(self._held) if self._held else ("", [])  # it held no whole marker
        self._held = ""
        text, calls = self.read(self._answer)
        if self._stream_parser is False or not self._streamed:
            parts = [
                CallDelta(index, call.name, json.dumps(call.arguments, ensure_ascii=False))
                for index, call in enumerate(calls)
            ]
            return (text if self._stream_parser is False else tail), parts, calls
        for index, call in enumerate(calls):
            sent_name, sent_arguments = self._streamed.get(index, [None, ""])
            whole = json.dumps(call.arguments, ensure_ascii=False)
            if _json_object(sent_arguments or "") == call.arguments:
                rest = ""
            elif whole.startswith(sent_arguments or ""):
                rest = whole[len(sent_arguments or "") :]
            else:
                raise GlimpConfigError(
                    f"vLLM's `{self.tool_call_parser}` parser streamed arguments "
                    f"{sent_arguments!r} that are not the start of the call's {whole!r}."
                )
            if rest or not sent_name:
                parts.append(CallDelta(index, None if sent_name else call.name, rest))
        return tail, parts, calls

    def _vllm_parser(self) -> Any:
        """A new vLLM parser of the family (parsers keep state while streaming), or None for
        Hermes read by Glimp (no vLLM, or no tokenizer to give its parser)."""
        hermes = self.tool_call_parser == HERMES
        if self._tokenizer is None and not hermes:
            raise GlimpConfigError(
                f"Reading `{self.tool_call_parser}` tool calls needs the model's tokenizer "
                "(vLLM's parser looks up the family's tokens in it); this backend has none."
            )
        if self._tokenizer is None or not load_vllm_parsers():
            if hermes:
                return None
            raise GlimpConfigError(
                f"Reading `{self.tool_call_parser}` tool calls needs vLLM's parsers. Install "
                "vLLM, or use tool_call_parser='hermes'."
            )
        from vllm.tool_parsers import ToolParserManager

        markers = TOOL_FAMILIES[self.tool_call_parser].call_markers
        tokenizer: Any = MarkersAsTokens(self._tokenizer, markers) if markers else self._tokenizer
        return ToolParserManager.get_tool_parser(self.tool_call_parser)(tokenizer)

    @functools.cached_property
    def _request(self) -> Any:
        """The request vLLM's parsers read the tools from: built once, not at every streamed piece."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        return ChatCompletionRequest.model_validate(
            {"model": "glimp", "messages": [], "tools": self._tools, "tool_choice": "auto"}
        )


class MarkersAsTokens:
    """A tokenizer as a family's vLLM parser expects it: each of the family's call markers one token.

    vLLM's DeepSeek parsers look their markers up in the vocabulary (and refuse a tokenizer without
    them), then follow a streamed call by counting the markers' ids; DeepSeek-R1-Distill's tokenizer
    writes them as plain text of ~11 tokens each.  This view gives every marker the tokenizer lacks
    an id past its vocabulary and encodes the marker's text as that id; everything else is the
    tokenizer's.  `ToolCallReader.feed` holds a marker's first characters back until it is whole."""

    def __init__(self, tokenizer: Any, markers: Sequence[str]) -> None:
        self._tokenizer = tokenizer
        vocabulary = tokenizer.get_vocab()
        missing = [marker for marker in markers if marker not in vocabulary]
        self.marker_ids = {marker: len(vocabulary) + offset for offset, marker in enumerate(missing)}
        self._vocabulary = {**vocabulary, **self.marker_ids}
        self._split = re.compile("(" + "|".join(map(re.escape, missing)) + ")") if missing else None

    def get_vocab(self) -> dict[str, int]:
        return self._vocabulary

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if self._split is None:
            return self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        ids: list[int] = []
        for piece in self._split.split(text):
            marker = self.marker_ids.get(piece)
            ids += [marker] if marker is not None else self._tokenizer.encode(piece, add_special_tokens=False)
        return ids

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def load_vllm_parsers() -> bool:
    """Import vLLM's tool parsers (about 8 s on a CPU, once per process), so that a service can do it
    before its first request; False where vLLM is not installed."""
    try:
        import vllm.entrypoints.openai.chat_completion.protocol  # noqa: F401
        import vllm.tool_parsers  # noqa: F401
    except ImportError:
        return False
    return True


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None
