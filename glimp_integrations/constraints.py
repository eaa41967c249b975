"""Answer constraints: what the final answer must look like, made valid by construction.

An `AnswerConstraint` restricts the answer (not the routed reasoning) to one of:
- `json_schema`: a JSON value valid under a JSON schema;
- `json_object`: any JSON object;
- `regex`: text matching a regular expression, whole;
- `choice`: exactly one of some strings;
- `grammar`: text in a grammar of your own, in llguidance's Lark dialect (vLLM's `grammar`);
- `tools`: tool calls in the large model's own format (`tool_call_parser`, named as vLLM names it:
  `hermes`'s `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, DeepSeek-R1's, Llama 3's; see
  `glimp_integrations.tool_formats`), under `tool_choice`: `auto` (free text with calls among it),
  `required` (at least one call), a tool's name (calls to that tool), `none` (text with no call);
  several calls in a row unless `parallel_tool_calls` is False.
  With an `answer_format` (one of the forms above; OpenAI's tools plus `response_format`), an
  answer that makes no call follows that format instead of being free text: an agent either
  calls a tool or gives its final, structured answer.

Object schemas that do not say otherwise admit no properties beyond those they list (a small
model otherwise invents fields, and a function fails on arguments it does not take); `strict`
(OpenAI's strict mode) also makes every listed property required.

Every constraint compiles to one grammar in the Lark dialect of llguidance, the grammar engine
that vLLM installs and uses as its `guidance` structured-output backend.  The grammar is checked
when the constraint is built (a schema or regex the engine rejects raises `GlimpConfigError`
before any model runs), and each backend applies that same text: the transformers backend masks
logits with an llguidance matcher, vLLM in process gets it as `StructuredOutputsParams(grammar=)`,
servers as the request's `structured_outputs` field.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from glimp_integrations.errors import invalid, require_module
from glimp_integrations.tool_formats import (
    HERMES,
    call_openings,
    check_tool_call_parser,
    structural_tag_lark,
    text_lexeme,
    tool_call_structure,
)

ConstraintKind = Literal["json_schema", "json_object", "regex", "choice", "grammar", "tools"]
TOOL_CHOICE_MODES: tuple[str, ...] = ("auto", "required", "none")

#: JSON written compactly with one space after `:` and `,`, as models are trained to; free
#: whitespace lets a small model pad an object with blank lines until its budget runs out.
JSON_LAYOUT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


@dataclass(frozen=True)
class AnswerConstraint:
    """What the final answer must be; build one with the class methods, e.g.
    `AnswerConstraint.json_schema({...})` or `AnswerConstraint.for_tools(tools, "required")`."""

    kind: ConstraintKind
    schema: Mapping[str, Any] | None = None
    """The JSON schema (`json_schema`)."""
    strict: bool = False
    """`json_schema`: every property of every object is required (OpenAI's strict mode)."""
    pattern: str | None = None
    """The regular expression (`regex`), matched against the whole answer."""
    choices: tuple[str, ...] = ()
    """The allowed answers (`choice`)."""
    lark: str | None = None
    """The grammar (`grammar`), in llguidance's Lark dialect; its `start` rule is the whole answer."""
    tools: tuple[Mapping[str, Any], ...] = ()
    """OpenAI function schemas (`tools`); a function's own `strict: true` applies to its arguments."""
    tool_choice: str = "auto"
    """`auto`, `required`, `none`, or the name of the one tool to call (`tools`)."""
    parallel_tool_calls: bool = True
    """Allow several calls in one answer (`tools`)."""
    answer_format: AnswerConstraint | None = None
    """`tools`: what an answer without a call must be (None: free text)."""
    tool_call_parser: str = HERMES
    """`tools`: the calls' format, named as vLLM's `--tool-call-parser` names it."""
    added_tokens: tuple[str, ...] = ()
    """`tools`: the model's added tokens; those in the format's fixed strings are matched as tokens."""
    name: str | None = field(default=None, compare=False)
    """A name for the schema in messages (e.g. OpenAI's `json_schema.name`)."""

    def __post_init__(self) -> None:
        self._check_fields()
        grammar_error = _grammar_error(self.grammar)
        if grammar_error:
            parameter, value = {
                "json_schema": ("response_format schema", self.schema),
                "regex": ("regex", self.pattern),
                "choice": ("choices", list(self.choices)),
                "json_object": ("response_format", "json_object"),
                "grammar": ("grammar", self.lark),
                "tools": ("tools", self.tool_names),
            }[self.kind]
            raise invalid(
                parameter,
                value,
                f"is rejected by the grammar engine (llguidance: {grammar_error})",
                "Fix that part of the schema or pattern (llguidance's JSON-schema and regex docs list "
                "what it supports).",
            )

    # --- constructors ---------------------------------------------------------------------------

    @classmethod
    def json_schema(
        cls, schema: Mapping[str, Any], *, strict: bool = False, name: str | None = None
    ) -> AnswerConstraint:
        return cls("json_schema", schema=schema, strict=strict, name=name)

    @classmethod
    def json_object(cls) -> AnswerConstraint:
        return cls("json_object")

    @classmethod
    def regex(cls, pattern: str) -> AnswerConstraint:
        return cls("regex", pattern=pattern)

    @classmethod
    def from_grammar(cls, lark: str) -> AnswerConstraint:
        """Answers of a grammar in llguidance's Lark dialect, e.g. `start: "Total: " /[0-9]+/`."""
        return cls("grammar", lark=lark)

    @classmethod
    def choice(cls, choices: Sequence[str]) -> AnswerConstraint:
        if isinstance(choices, str):
            raise invalid("choices", choices, "must be a list of strings, not one string", 'Pass e.g. ["yes", "no"].')
        return cls("choice", choices=tuple(choices))

    @classmethod
    def for_tools(
        cls,
        tools: Sequence[Mapping[str, Any]],
        tool_choice: ToolChoice = None,
        parallel_tool_calls: bool | None = None,
        answer_format: AnswerConstraint | None = None,
        *,
        tool_call_parser: str = HERMES,
        added_tokens: tuple[str, ...] = (),
    ) -> AnswerConstraint:
        """Tool calls under `tool_choice` (any form `read_tool_choice` takes; None: `auto`) in the
        `tool_call_parser` format; an answer without a call follows `answer_format` (None: free text)."""
        choice = read_tool_choice(tool_choice) or "auto"
        return cls(
            "tools",
            tools=tuple(tools),
            tool_choice=choice,
            parallel_tool_calls=True if parallel_tool_calls is None else parallel_tool_calls,
            answer_format=answer_format,
            tool_call_parser=tool_call_parser,
            added_tokens=added_tokens,
        )

    @classmethod
    def from_response_format(cls, response_format: Mapping[str, Any] | AnswerConstraint) -> AnswerConstraint:
        """OpenAI's `response_format` ({"type": "json_schema", "json_schema": {"name", "schema",
        "strict"}} or {"type": "json_object"}), {"type": "regex", "regex": ...},
        {"type": "choice", "choice": [...]} and {"type": "grammar", "grammar": ...} (vLLM's forms
        of its structured outputs), or a ready `AnswerConstraint`."""
        if isinstance(response_format, AnswerConstraint):
            return response_format
        if not isinstance(response_format, Mapping):
            raise invalid(
                "response_format",
                response_format,
                "must be a dict or an AnswerConstraint",
                'Pass e.g. {"type": "json_schema", "json_schema": {"name": "answer", "schema": {...}}}.',
            )
        kind = response_format.get("type")
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
                raise invalid(
                    "response_format['json_schema']",
                    spec,
                    "must be a dict with a `schema` dict",
                    'Pass {"name": "answer", "schema": {...}, "strict": true}.',
                )
            return cls.json_schema(spec["schema"], strict=bool(spec.get("strict")), name=spec.get("name"))
        if kind == "json_object":
            return cls.json_object()
        if kind == "regex" and isinstance(response_format.get("regex"), str):
            return cls.regex(response_format["regex"])
        if kind == "choice" and isinstance(response_format.get("choice"), Sequence):
            return cls.choice(response_format["choice"])
        if kind == "grammar":
            return cls.from_grammar(response_format.get("grammar"))  # type: ignore[arg-type]  # checked there
        if kind == "text":
            raise invalid(
                "response_format",
                dict(response_format),
                "asks for free text, which is no constraint",
                "Pass response_format=None for free text.",
            )
        raise invalid(
            "response_format['type']",
            kind,
            "must be json_schema, json_object, regex, choice or grammar",
            'Pass e.g. {"type": "json_object"}.',
        )

    # --- what backends and adapters use ---------------------------------------------------------

    @property
    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]

    @cached_property
    def grammar(self) -> str:
        """The constraint in llguidance's Lark dialect (`start` is the whole answer)."""
        if self.kind == "grammar":
            assert self.lark is not None, "checked at construction"
            return self.lark
        return self._tools_grammar() if self.kind == "tools" else f"start: {self._answer_rule()}"

    def instructions(self) -> str | None:
        """What the prompt should tell the model about the answer's format (None: nothing to add;
        tool schemas are described by `glimp_integrations.tools`)."""
        if self.kind == "tools":
            rule = self.answer_format.instructions() if self.answer_format else None
            if not rule or self.tool_choice == "none":
                return rule
            return "Unless you call a tool, " + rule[0].lower() + rule[1:]
        if self.kind == "json_schema":
            return "Reply with a single JSON value that matches this JSON schema, and nothing else:\n" + json.dumps(
                self.schema, ensure_ascii=False
            )
        if self.kind == "json_object":
            return "Reply with a single JSON object and nothing else."
        if self.kind == "choice":
            return "Reply with exactly one of: " + ", ".join(json.dumps(c, ensure_ascii=False) for c in self.choices)
        return None

    # --- internals ------------------------------------------------------------------------------

    def _answer_rule(self) -> str:
        """The right-hand side of a Lark rule for a non-tool answer."""
        if self.kind == "json_schema":
            assert self.schema is not None, "checked at construction"
            return f"%json {_with_layout(_closed_objects(self.schema, require_all=self.strict))}"
        if self.kind == "json_object":
            return f"%json {_with_layout({'type': 'object'})}"
        if self.kind == "regex":
            llguidance = require_module("llguidance", "hf", "Compiling a regex constraint")
            return f"/{llguidance.regex_to_lark(self.pattern)}/"
        return " | ".join(json.dumps(c, ensure_ascii=False) for c in self.choices)

    def _tools_grammar(self) -> str:
        tools = [
            {
                "type": "function",
                "function": {
                    **t["function"],
                    "parameters": _closed_objects(
                        t["function"].get("parameters") or {"type": "object", "properties": {}},
                        require_all=bool(t["function"].get("strict")),
                    ),
                },
            }
            for t in self.tools
            if self.tool_choice in TOOL_CHOICE_MODES or t["function"]["name"] == self.tool_choice
        ]
        answer = f"answer: {self.answer_format._answer_rule()}" if self.answer_format is not None else None

        def calls(choice: Literal["auto", "required"]) -> str:
            structure = tool_call_structure(self.tool_call_parser, tools, choice, parallel=self.parallel_tool_calls)
            return structural_tag_lark(structure, JSON_LAYOUT, self.added_tokens)

        if self.tool_choice == "none":
            openings = call_openings(tool_call_structure(self.tool_call_parser, tools, "auto", parallel=True))
            return f"start: answer\n{answer}" if answer else f"start: TEXT\nTEXT: {text_lexeme(openings, None)}"
        if self.tool_choice == "auto" and answer is None:
            return "start: calls\n" + calls("auto")
        if self.tool_choice == "auto":  # no text around calls: the answer is the format or calls
            return f"start: answer | calls\n{answer}\n{calls('required')}"
        return "start: calls\n" + calls("required")

    def _check_fields(self) -> None:
        if self.kind == "json_schema" and not isinstance(self.schema, Mapping):
            raise invalid(
                "response_format schema",
                self.schema,
                "must be a JSON schema (a dict)",
                'Pass e.g. {"type": "object", "properties": {...}}.',
            )
        if self.kind == "regex" and (not isinstance(self.pattern, str) or not self.pattern):
            raise invalid("regex", self.pattern, "must be a non-empty regular expression", r'Pass e.g. r"\d+".')
        if self.kind == "grammar" and (not isinstance(self.lark, str) or not self.lark.strip()):
            raise invalid(
                "grammar",
                self.lark,
                "must be a grammar in llguidance's Lark dialect",
                "Pass e.g. 'start: \"Total: \" /[0-9]+/'.",
            )
        if self.kind == "choice" and (not self.choices or not all(isinstance(c, str) and c for c in self.choices)):
            raise invalid(
                "choices",
                list(self.choices),
                "must be a non-empty list of non-empty strings",
                'Pass e.g. ["yes", "no"].',
            )
        if self.kind == "tools":
            _check_tools(self.tools, self.tool_choice)
            check_tool_call_parser(self.tool_call_parser)
            if self.answer_format is not None and (
                not isinstance(self.answer_format, AnswerConstraint) or self.answer_format.kind in ("tools", "grammar")
            ):
                raise invalid(
                    "response_format",
                    self.answer_format,
                    "must be a JSON schema, JSON object, regex or choice format when given with tools",
                    'Pass e.g. {"type": "json_object"}.',
                )
        elif self.answer_format is not None:
            raise invalid(
                "answer_format",
                self.answer_format,
                "applies only to a tools constraint",
                "Pass it to AnswerConstraint.for_tools, or use the format as the constraint itself.",
            )


def _check_tools(tools: Sequence[Mapping[str, Any]], tool_choice: str) -> None:
    names: list[str] = []
    for position, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if (
            tool.get("type", "function") != "function"
            or not isinstance(function, Mapping)
            or not isinstance(function.get("name"), str)
            or not function["name"]
        ):
            raise invalid(
                f"tools[{position}]",
                tool,
                "must be an OpenAI function schema",
                'Pass {"type": "function", "function": {"name": ..., "parameters": {...}}}.',
            )
        names.append(function["name"])
    if not tools:
        raise invalid(
            "tools",
            [],
            "must name at least one tool when a tool constraint is asked for",
            "Pass the tools, or no tool_choice.",
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise invalid(
            "tools",
            names,
            f"must have distinct names; {duplicates} appear more than once",
            "Rename or drop the repeated tools.",
        )
    if not isinstance(tool_choice, str) or (tool_choice not in TOOL_CHOICE_MODES and tool_choice not in names):
        raise invalid(
            "tool_choice",
            tool_choice,
            f"must be auto, required, any, none or a tool name ({', '.join(names)})",
            "Pass one of those.",
        )


def _with_layout(schema: Mapping[str, Any]) -> str:
    """The schema as JSON text for Lark's `%json`, written in the compact layout."""
    return json.dumps({**schema, "x-guidance": {**JSON_LAYOUT, **schema.get("x-guidance", {})}}, ensure_ascii=False)


def _closed_objects(schema: Mapping[str, Any], *, require_all: bool = False) -> dict[str, Any]:
    """A copy where every object schema (`type: object` or `properties`) without
    `additionalProperties` gets `false`, and with `require_all` lists all its properties as required."""

    def close(node: Any) -> Any:
        if isinstance(node, dict):
            node = {key: close(value) for key, value in node.items()}
            if "properties" in node or node.get("type") == "object":
                node.setdefault("additionalProperties", False)
                if require_all and isinstance(node.get("properties"), dict):
                    node["required"] = list(node["properties"])
        elif isinstance(node, list):
            node = [close(item) for item in node]
        return node

    return close(copy.deepcopy(dict(schema)))


def _grammar_error(grammar: str) -> str | None:
    """llguidance's reason for rejecting `grammar`, or None when it compiles."""
    llguidance = require_module("llguidance", "hf", "Checking an answer constraint")
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if not is_error:
        return None
    # the message echoes the grammar's line under a caret: keep only the explanation
    lines = [line.strip() for line in messages[0].splitlines()]
    return " ".join(line for line in lines if line and line != "^" and not re.match(r"\d+ \|", line))


ToolChoice = str | bool | Mapping[str, Any] | None
"""`tool_choice` in any form an API writes it (`read_tool_choice` reads them all)."""


def read_tool_choice(tool_choice: ToolChoice) -> str | None:
    """Any accepted form of `tool_choice` as the engine's: None (`auto`), `auto`, `required`, `none`
    or a tool's name.  Takes OpenAI's strings and `{"type": "function", "function": {"name": ...}}`,
    the Responses API's `{"type": "function", "name": ...}`, LangChain's `any`, True and False, and
    LlamaIndex's `{"name": ...}`."""
    if tool_choice is None or isinstance(tool_choice, str):
        return "required" if tool_choice == "any" else tool_choice
    if isinstance(tool_choice, bool):
        return "required" if tool_choice else "none"
    if isinstance(tool_choice, Mapping):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if isinstance(name, str) and name:
            return name
    raise invalid(
        "tool_choice",
        tool_choice,
        'must be auto, required, any, none, a tool name, or {"type": "function", "function": {"name": ...}}',
        'Pass e.g. "required" or the tool\'s name.',
    )


def callable_tools(tools: Sequence[Mapping[str, Any]] | None, tool_choice: ToolChoice) -> list[dict[str, Any]] | None:
    """The tools an answer may call: `tools`, unless `tool_choice` is `none`."""
    return list(tools) if tools and read_tool_choice(tool_choice) != "none" else None  # type: ignore[arg-type]


def answer_constraint(
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: ToolChoice,
    parallel_tool_calls: bool | None,
    response_format: Mapping[str, Any] | AnswerConstraint | None,
    tool_call_parser: str = HERMES,
    added_tokens: tuple[str, ...] = (),
) -> AnswerConstraint | None:
    """The constraint a run's arguments ask for: tools (always constrained to well-formed calls in
    the `tool_call_parser` format, `tool_choice` None meaning `auto`; with a response format, an
    answer without a call follows it, as with OpenAI's tools plus `response_format`), a response
    format, or None."""
    answer_format = None if response_format is None else AnswerConstraint.from_response_format(response_format)
    tool_choice = read_tool_choice(tool_choice)
    if tools:
        return AnswerConstraint.for_tools(
            tools,
            tool_choice,
            parallel_tool_calls,
            answer_format,
            tool_call_parser=tool_call_parser,
            added_tokens=added_tokens,
        )
    if answer_format is not None:
        return answer_format
    if tool_choice not in (None, "auto", "none"):
        raise invalid("tool_choice", tool_choice, "asks for a tool call but no tools are given", "Pass `tools` too.")
    return None
