"""Calls read back from an answer: vLLM's parser of the family, whole and streamed
(`ToolCallReader`), Glimp's own Hermes reader where vLLM is not installed, and the tokenizer view
that gives a parser one id per call marker (`MarkersAsTokens`)."""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from glimp_integrations.errors import GlimpConfigError
from glimp_integrations.tool_formats.families import HERMES, TOOL_FAMILIES, load_vllm_parsers

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


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None
