"""`glimp check SMALL LARGE`: what Glimp will do with a pair of models, and what will not work,
before any weights load.

Each model is a folder, an HF id in the local cache, or the base URL of an OpenAI-compatible server
(whose tokenizer is then found by the id it serves, as the servers backend finds it).  The report
reads only tokenizers, chat templates and configs: how the steps hand over (token ids where both
models share one vocabulary, else text each model encodes with its own tokenizer), the reasoning
markers each tokenizer has and which template opens the reasoning itself, the reasoning mode, the
tool-call and reasoning parsers read from the large model's template, how the step separator
tokenizes, the context windows, and whether the small model can draft for the large one.  A
*problem* is something a run would fail on; each says why and the fix.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from glimp_integrations.backends.base import knows_think_tags, vocabulary_digest
from glimp_integrations.config import Role
from glimp_integrations.errors import GlimpConfigError, require_module
from glimp_integrations.model_files import check_model_folder, embedding_rows
from glimp_integrations.tool_formats import (
    TOOL_FAMILIES,
    MarkersAsTokens,
    detect_tool_call_parser,
    reasoning_markers,
)

Severity = Literal["ok", "note", "problem"]
SEPARATOR_SAMPLES = ("\n\n", ".\n\n")
"""Texts whose tokenization the report shows: the step separator alone and after a sentence."""


@dataclass(frozen=True)
class Finding:
    topic: str
    severity: Severity
    text: str
    fix: str = ""


@dataclass(frozen=True)
class ModelFacts:
    """What the report read of one model."""

    role: Role
    given: str
    source: Literal["folder", "hub cache", "server"]
    architecture: str
    tokenizer_tokens: int
    embedding_rows: int | None
    context_window: int | None
    has_chat_template: bool
    reasoning_markers: tuple[str, str]
    marker_ids: tuple[list[int], list[int]]
    """Token ids of each reasoning marker in this tokenizer (one id each where they are tokens)."""
    template_opens_reasoning: bool
    tool_call_parser: str
    reasoning_parser: str | None
    separator_ids: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class PairReport:
    small: ModelFacts | None
    large: ModelFacts | None
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "problem"]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "small": asdict(self.small) if self.small else None,
            "large": asdict(self.large) if self.large else None,
            "findings": [asdict(f) for f in self.findings],
        }

    def to_text(self) -> str:
        lines = []
        for facts in (self.small, self.large):
            if facts is None:
                continue
            opens, closes = facts.marker_ids
            lines += [
                f"{facts.role}: {facts.given} ({facts.source}, {facts.architecture})",
                f"  tokenizer {facts.tokenizer_tokens} tokens, embedding rows {facts.embedding_rows}, "
                f"context {facts.context_window}",
                f"  reasoning markers {facts.reasoning_markers[0]!r} {opens} / {facts.reasoning_markers[1]!r} "
                f"{closes}; the template {'opens' if facts.template_opens_reasoning else 'does not open'} them",
                f"  tool calls: {facts.tool_call_parser}; reasoning parser: {facts.reasoning_parser or 'none named (the markers above)'}",
                "  separator: " + ", ".join(f"{t!r} -> {ids}" for t, ids in facts.separator_ids.items()),
            ]
        marks = {"ok": "ok     ", "note": "note   ", "problem": "PROBLEM"}
        for finding in self.findings:
            lines.append(f"{marks[finding.severity]} {finding.topic}: {finding.text}")
            if finding.fix:
                lines.append(f"        fix: {finding.fix}")
        lines.append("the pair works" if self.ok else f"{len(self.problems)} problem(s): the pair will not work as is")
        return "\n".join(lines)


def check_pair(
    small: str, large: str, *, small_tokenizer: str | None = None, large_tokenizer: str | None = None
) -> PairReport:
    """The report on a pair (see the module's docstring); never raises for a pair that cannot work."""
    report = PairReport(None, None)
    tokenizers: dict[Role, Any] = {}
    models: tuple[tuple[Role, str, str | None], ...] = (
        ("small", small, small_tokenizer),
        ("large", large, large_tokenizer),
    )
    for role, given, tokenizer_source in models:
        try:
            facts, tokenizer = _read_model(role, given, tokenizer_source)
        except GlimpConfigError as error:
            report.findings.append(Finding(f"{role} model", "problem", str(error)))
            continue
        setattr(report, role, facts)
        tokenizers[role] = tokenizer
    if report.small is not None and report.large is not None:
        report.findings += _pair_findings(report.small, report.large, tokenizers["small"], tokenizers["large"])
    return report


def _read_model(role: Role, given: str, tokenizer_source: str | None) -> tuple[ModelFacts, Any]:
    transformers = require_module("transformers", "openai", "`glimp check`")
    context_window: int | None = None
    if given.startswith(("http://", "https://")):
        source: Literal["folder", "hub cache", "server"] = "server"
        card = _served_model(role, given)
        tokenizer_source = tokenizer_source or card.get("root") or card["id"]
        context_window = card.get("max_model_len")
    elif Path(given).expanduser().is_dir():
        source = "folder"
        check_model_folder(role, Path(given).expanduser())
    else:
        source = "hub cache"
    name = str(Path(tokenizer_source or given).expanduser()) if source == "folder" else (tokenizer_source or given)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name, local_files_only=True)
        config = transformers.AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as error:
        raise GlimpConfigError(
            f"The {role} model's tokenizer and config `{name}` could not be read offline ({error}). "
            "Pass a model folder, an HF id already in the local cache, or (for a server) `--"
            f"{role}-tokenizer` naming one."
        ) from error
    template = tokenizer.chat_template or ""
    parser = detect_tool_call_parser(template) if template else "hermes"
    family_parser = TOOL_FAMILIES[parser].reasoning_parser
    try:
        markers = reasoning_markers(family_parser, tokenizer, chosen=False)
    except ImportError:  # without vLLM: the markers every family here uses
        markers = ("<think>", "</think>")
    rendered = _render(tokenizer, [{"role": "user", "content": "Hi"}]) if template else ""
    return (
        ModelFacts(
            role=role,
            given=given,
            source=source,
            architecture=(getattr(config, "architectures", None) or [config.model_type])[0],
            tokenizer_tokens=len(tokenizer),
            embedding_rows=embedding_rows(config.get_text_config().to_dict()),
            context_window=context_window or getattr(config.get_text_config(), "max_position_embeddings", None),
            has_chat_template=bool(template),
            reasoning_markers=markers,
            marker_ids=(_ids(tokenizer, markers[0]), _ids(tokenizer, markers[1])),
            template_opens_reasoning=rendered.rstrip().endswith(markers[0]),
            tool_call_parser=parser,
            reasoning_parser=family_parser,
            separator_ids={text: _ids(tokenizer, text) for text in SEPARATOR_SAMPLES},
        ),
        tokenizer,
    )


def _pair_findings(small: ModelFacts, large: ModelFacts, small_tokenizer: Any, large_tokenizer: Any) -> list[Finding]:
    """Everything `glimp check` says of a pair, by concern."""
    tokenizers = (small_tokenizer, large_tokenizer)
    findings = [
        *_file_findings(small, large, tokenizers),
        _handoff(tokenizers),
        *_reasoning_findings(small, large, tokenizers),
        _tool_calls(large, large_tokenizer),
        *_separator_findings(small, large),
    ]
    windows = [f.context_window for f in (small, large) if f.context_window]
    if windows:
        findings.append(
            Finding(
                "context",
                "ok",
                f"small {small.context_window}, large {large.context_window} tokens: a run fits in {min(windows)}",
            )
        )
    findings.append(_speculation(small, large, tokenizers))
    return findings


def _file_findings(small: ModelFacts, large: ModelFacts, tokenizers: tuple[Any, Any]) -> list[Finding]:
    """Each model's chat template and its config against its tokenizer."""
    findings: list[Finding] = []
    for facts, tokenizer in zip((small, large), tokenizers):
        if not facts.has_chat_template:
            findings.append(
                Finding(
                    f"{facts.role} template",
                    "problem",
                    f"{facts.given} has no chat template: Glimp renders each model's prompt with its own.",
                    "Use the instruct or chat model, or add its template as chat_template.jinja.",
                )
            )
        elif not _renders_a_chat(tokenizer):
            findings.append(
                Finding(
                    f"{facts.role} template",
                    "problem",
                    f"{facts.given}'s chat template cannot render a conversation with an assistant turn in it.",
                    "Use a template that renders assistant turns (the model's own, from its tokenizer_config.json).",
                )
            )
        if facts.embedding_rows is not None and facts.tokenizer_tokens > facts.embedding_rows:
            findings.append(
                Finding(
                    f"{facts.role} config",
                    "problem",
                    f"the tokenizer has {facts.tokenizer_tokens} tokens but the config only {facts.embedding_rows} "
                    "embedding rows: they are of different models.",
                    "Take the config and the tokenizer from the same model.",
                )
            )
    return findings


def _handoff(tokenizers: tuple[Any, Any]) -> Finding:
    shared = vocabulary_digest(tokenizers[0]) == vocabulary_digest(tokenizers[1])
    return Finding(
        "handoff",
        "ok",
        "one vocabulary: each step goes to the other model as the token ids it was written in"
        if shared
        else "two vocabularies: each step goes to the other model as text, encoded by that model's tokenizer",
    )


def _reasoning_findings(small: ModelFacts, large: ModelFacts, tokenizers: tuple[Any, Any]) -> list[Finding]:
    """The reasoning mode `auto` picks, and in `think` mode each model's markers."""
    think = knows_think_tags(tokenizers[1])  # as reasoning_mode="auto" decides (routing_loop.resolve_mode)
    findings = [
        Finding(
            "reasoning mode",
            "ok",
            f"think (reasoning_mode='auto'): the steps are the reasoning between {large.reasoning_markers[0]!r} and "
            f"{large.reasoning_markers[1]!r}; the large model answers after it"
            if think
            else "plain (reasoning_mode='auto'): the large model's template has no think markers; the whole response is routed",
        )
    ]
    if not think:
        return findings
    for facts in (small, large):
        opens, closes = facts.marker_ids
        who = "its template opens it" if facts.template_opens_reasoning else "Glimp opens it after the prompt"
        findings.append(
            Finding(
                f"{facts.role} markers",
                "ok" if len(opens) == len(closes) == 1 else "note",
                f"{facts.reasoning_markers[0]!r} {opens}, {facts.reasoning_markers[1]!r} {closes} ({who}); "
                + (
                    "each model closes the reasoning with its own id"
                    if len(closes) == 1
                    else "the markers are text of several tokens here: steps still end at them, "
                    "but vLLM's reasoning parser of this model cannot split them"
                ),
            )
        )
    if large.marker_ids[1] and len(large.marker_ids[1]) > 1:
        findings.append(
            Finding(
                "large markers",
                "problem",
                f"{large.given} writes {large.reasoning_markers[1]!r} as {len(large.marker_ids[1])} tokens: "
                "vLLM's reasoning parser (glimp serve's split of reasoning and answer, the servers' own) needs one.",
                "Use the model's own tokenizer, or reasoning_mode='plain'.",
            )
        )
    if not knows_think_tags(tokenizers[0]):
        findings.append(
            Finding(
                "small markers",
                "note",
                f"{small.given} has no think markers: it reads the reasoning after its prompt as plain text, "
                "and never closes it itself (the budget or the large model does).",
            )
        )
    return findings


def _tool_calls(large: ModelFacts, large_tokenizer: Any) -> Finding:
    missing = list(MarkersAsTokens(large_tokenizer, TOOL_FAMILIES[large.tool_call_parser].call_markers).marker_ids)
    return Finding(
        "tool calls",
        "ok",
        f"the large model's template gives `{large.tool_call_parser}` (vLLM's parser of that name reads the calls)"
        + (
            f"; its markers are plain text in this tokenizer (e.g. {missing[0]!r} is "
            f"{len(_ids(large_tokenizer, missing[0]))} tokens), which Glimp's reader handles"
            if missing
            else ""
        ),
    )


def _separator_findings(small: ModelFacts, large: ModelFacts) -> list[Finding]:
    findings = []
    for facts in (small, large):
        separator = SEPARATOR_SAMPLES[0]
        inside = [t for t, ids in facts.separator_ids.items() if len(ids) == 1 and t != separator]
        findings.append(
            Finding(
                f"{facts.role} separator",
                "ok",
                f"{separator!r} is {facts.separator_ids[separator]}"
                + (
                    f"; {inside[0]!r} is one token, so a step often ends inside a token (found in text)"
                    if inside
                    else ""
                ),
            )
        )
    return findings


def _speculation(small: ModelFacts, large: ModelFacts, tokenizers: tuple[Any, Any]) -> Finding:
    if "server" in (small.source, large.source):
        return Finding("speculative decoding", "note", "set on the large model's server (--speculative-config)")
    from glimp_integrations.backends.speculative import draft_fit

    rows = (small.embedding_rows or small.tokenizer_tokens, large.embedding_rows or large.tokenizer_tokens)
    try:
        mapped = draft_fit(small.given, large.given, tokenizers, rows)
    except GlimpConfigError as error:
        return Finding("speculative decoding", "note", f"not with the small model as draft: {error}")
    if mapped:
        return Finding(
            "speculative decoding",
            "ok",
            "speculative=True works: the same base tokens, other added tokens or table sizes; vLLM maps the "
            "draft's tokens onto the large model's by text (use_heterogeneous_vocab, greedy drafts)",
        )
    return Finding(
        "speculative decoding", "ok", "speculative=True works: the small model drafts in the same vocabulary"
    )


def _served_model(role: Role, url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/models", timeout=10) as response:  # noqa: S310 (a URL given)
            cards = json.load(response).get("data") or []
    except (OSError, ValueError) as error:
        raise GlimpConfigError(f"The {role} model's server at {url} did not answer /models ({error}).") from error
    if not cards:
        raise GlimpConfigError(f"The {role} model's server at {url} serves no model.")
    return cards[0]


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _renders_a_chat(tokenizer: Any) -> bool:
    """Whether the template renders a user turn, an assistant turn and a user turn again (every
    multi-turn chat, and every agent loop, sends such)."""
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "?"},
    ]
    try:
        _render(tokenizer, chat)
    except Exception:  # a template's own `raise_exception`, or a Jinja error
        return False
    return True


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))
