"""A family's structural tag compiled into llguidance's Lark dialect (the one grammar engine of
every Glimp backend)."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from glimp_integrations.errors import GlimpConfigError


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
