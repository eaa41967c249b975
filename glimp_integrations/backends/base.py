"""The interface every backend implements, and the pieces they share.

A backend holds the two models.  For each run it opens one `ModelSession` per role; a session is
that model's view of the run's context (its own rendering of the chat prompt, then every step
written so far) and writes tokens after it.  Tokens a session writes stay *pending* until the
router commits them (the step is kept) or discards them (the step is thrown away).
"""

from __future__ import annotations

import abc
import functools
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from glimp_integrations.config import Role, SamplingConfig
from glimp_integrations.constraints import AnswerConstraint
from glimp_integrations.entropy import EntropyBounds, entropy_bounds
from glimp_integrations.model_files import check_model_folder
from glimp_integrations.tool_formats import HERMES, THINK_MARKERS
from glimp_integrations.tools import Message, prepare_messages

StepEnd = Literal["stop_string", "end_of_text", "max_tokens"]

#: Logprobs per token asked of top-k backends when a policy measures a step (the token's entropy
#: is then the midpoint of its bounds).
MEASURE_TOP_K = 20


@dataclass(frozen=True)
class TokenDistribution:
    """A next-token distribution at temperature 1, as a backend returned it."""

    top_logprobs: tuple[float, ...]
    """Largest log-probabilities (nats), sorted descending; the whole vocabulary if `is_full`."""
    vocab_size: int
    exact_entropy: float | None = None
    """Entropy over the whole vocabulary, when the backend computed it (then `is_full`)."""
    proven: EntropyBounds | None = None
    """What a gated request proved of the entropy without returning it (e.g. [0, threshold])."""

    @property
    def is_full(self) -> bool:
        return self.exact_entropy is not None or len(self.top_logprobs) == self.vocab_size

    def bounds(self) -> EntropyBounds:
        if self.proven is not None:
            return self.proven
        if self.exact_entropy is not None:
            return EntropyBounds(self.exact_entropy, self.exact_entropy, exact=True)
        return entropy_bounds(self.top_logprobs, self.vocab_size)


@dataclass(frozen=True)
class SessionSpec:
    """What a model's session needs to know of its run."""

    messages: Sequence[Message]
    sampling: SamplingConfig
    seed: int | None
    """Seed of this session's sampling (each role gets its own)."""
    open_think: bool
    """Open the reasoning (`reasoning_markers[0]` and a newline) if the chat template does not."""
    constraint: AnswerConstraint | None = None
    """What the answer must be; applied by `write(..., constrained=True)`.  A run with tools
    always has one (`kind == "tools"`), which also says how to show the tools in the prompt."""
    reasoning_markers: tuple[str, str] = THINK_MARKERS
    """The texts that open and close the reasoning (the family's reasoning parser's)."""

    @property
    def _tools_constraint(self) -> AnswerConstraint | None:
        return self.constraint if self.constraint is not None and self.constraint.kind == "tools" else None

    @property
    def tools(self) -> list[dict[str, Any]] | None:
        """OpenAI function schemas, rendered into the prompt (see `glimp_integrations.tools`)."""
        return [dict(t) for t in self._tools_constraint.tools] if self._tools_constraint else None

    @property
    def tool_choice(self) -> str | None:
        return self._tools_constraint.tool_choice if self._tools_constraint else None

    @property
    def tool_call_parser(self) -> str:
        """The format tool calls are written in."""
        return self._tools_constraint.tool_call_parser if self._tools_constraint else HERMES


@dataclass(frozen=True)
class StepSpanning:
    """Asks a gated request to span steps (`step_spans`): it goes on past each step's end, where
    the gate decides again, and ends only at another stop, the end of text, `max_tokens` or the
    gate's intervention."""

    separator: str
    step_tokens: int | None
    """Most tokens of a step (`RouterConfig.max_step_tokens`); a step that reaches it ends there."""
    max_tokens: int
    """Most tokens of the request, over all its steps."""


class StepWriter(abc.ABC):
    """Tokens of one step as the model writes them: iterate for text deltas.

    After the iteration ends, `end` says why, `tokens` how many tokens were written and
    `prefill_tokens` how many context tokens the model processed before its first token;
    `drafted_tokens` and `accepted_tokens` count speculative decoding's draft tokens proposed
    and accepted by the writer (None where the backend did not draft or cannot say).  When
    written with `measure=True`, `token_entropies` and `token_logprobs` hold, per token, the
    entropy of the model's distribution and the log-probability of the token written (nats,
    temperature 1; backends with top-k logprobs give the midpoint of the entropy bounds).
    """

    def __init__(self, max_tokens: int, stop: Sequence[str], measure: bool) -> None:
        self.max_tokens = max_tokens
        self.stop = stop
        self.measure = measure
        self.end: StepEnd = "end_of_text"
        self.tokens = 0
        self.prefill_tokens = 0
        self.drafted_tokens: int | None = None
        self.accepted_tokens: int | None = None
        self.token_entropies: list[float] = []
        self.token_logprobs: list[float] = []

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[str]: ...


class ModelSession(abc.ABC):
    """One model's side of one run."""

    role: Role
    model_name: str
    prompt_tokens: int
    context_window: int
    max_probe_top_k: int | None = None
    """Most logprobs a probe can return (a server's cap); None: the whole vocabulary."""
    input_tokens: int = 0
    """Context tokens this model processed over the run: the prompt, then text it had not seen
    (steps the other model wrote, after a switch); prefix-cache hits are not counted."""
    output_tokens: int = 0
    """Tokens this model generated over the run, probes and discarded steps included."""
    retries: int = 0
    """Requests of this run sent again after the model's server failed them (servers backend)."""

    @property
    @abc.abstractmethod
    def context_tokens(self) -> int:
        """Tokens in the committed context (prompt plus committed steps)."""

    @abc.abstractmethod
    async def probe(self, top_k: int | None) -> TokenDistribution:
        """Distribution of the next token after the committed context, at temperature 1.

        A backend may sample that token and hold it, so that the following `write` starts the
        step with it (transformers: the probe's forward pass is the step's first); or keep
        nothing, and the `write` samples the first token again from the same distribution (vLLM,
        servers: then a step is one request).  Calling again with a
        larger `top_k` (None: the whole vocabulary) returns more of the same distribution.
        """

    async def gated_probe(
        self, threshold: float, max_tokens: int, stop: Sequence[str], span: StepSpanning | None = None
    ) -> TokenDistribution | None:
        """H_init measured by the request that writes the step (its exact entropy, as a
        distribution, or the bounds its outcome proves): above `threshold` the request ends at once
        (discard it); at or below it the following `write` (with the same `max_tokens` and `stop`)
        goes on with it.  With `span`, the request may go on past the step's end: after the step is
        committed, the next `gated_probe` reads the gate's decision at the next step's start from
        the same request, without a new one.  None where the backend cannot (then the router
        probes)."""
        return None

    @abc.abstractmethod
    def write(
        self, max_tokens: int, stop: Sequence[str], measure: bool = False, constrained: bool = False
    ) -> StepWriter:
        """Write up to `max_tokens` tokens (a held probe token included), ending after the first
        stop string (kept in the text) or at the end of text; `measure` records per-token
        entropies and logprobs; `constrained` restricts the tokens to the session's
        `SessionSpec.constraint` grammar (the answer; never after a probe)."""

    async def candidate_logprobs(self, suffix: str, candidates: Sequence[str]) -> dict[str, float]:
        """Log-probabilities (temperature 1) of single-token `candidates` as the next token after
        the committed context followed by `suffix` (nothing is committed).  Candidates the
        backend cannot see (outside its top-k) are left out."""
        raise NotImplementedError(f"{type(self).__name__} cannot score candidate tokens")

    @abc.abstractmethod
    def commit(self) -> None:
        """Keep the pending tokens as part of the context."""

    @abc.abstractmethod
    async def discard(self) -> None:
        """Drop the pending tokens (and a held probe token); stop a step still being written."""

    @abc.abstractmethod
    async def append_text(self, text: str) -> None:
        """Add text written elsewhere (by the other model, or a closing tag) to the context.
        Pending tokens are discarded first."""

    async def append_step(self, text: str, writer: ModelSession) -> None:
        """Add the step the other role's session `writer` has just committed (its `text`).  A
        backend may take the writer's tokens as they are where both tokenizers give them the same
        ids: the context then holds exactly what was written, and when both roles share an engine
        their requests share its prefix cache (text encoded again can tokenize a step's edges
        differently, and every cached block after the first difference is missed).  Otherwise the
        text, as `append_text`."""
        await self.append_text(text)

    async def aclose(self) -> None:
        """Free what the session holds (caches, in-flight requests)."""


class TokenContextSession(ModelSession):
    """A session whose context is token ids where it knows them (the vLLM engines, the servers): a
    step committed by another such session is taken as the writer's tokens where both
    vocabularies give them the same ids (`shared_step_ids`), else as text."""

    tokenizer: Any
    """This model's HF tokenizer."""
    last_step_ids: list[int] | None = None
    """The ids of the step this session committed last, where it knows them."""

    @abc.abstractmethod
    async def append_text(self, text: str, ids: list[int] | None = None) -> None:
        """`append_text`, with the text's ids in this model's vocabulary where known."""

    async def append_step(self, text: str, writer: ModelSession) -> None:
        ids = (
            shared_step_ids(writer.last_step_ids, text, writer.tokenizer, self.tokenizer)
            if isinstance(writer, TokenContextSession)
            else None
        )
        await self.append_text(text, ids)


class ModelInfo(Protocol):
    """What a backend knows of each of its models."""

    name: str
    knows_think_tags: bool
    """True when the model's chat template or vocabulary has `<think>`."""
    context_window: int


class Backend(abc.ABC):
    """Holds both models (`models`, by role) and opens sessions on them."""

    name: str
    models: Mapping[Role, ModelInfo]
    supports_constraints: bool = False
    """True when `write(..., constrained=True)` applies `SessionSpec.constraint`."""

    def model_name(self, role: Role) -> str:
        return self.models[role].name

    def knows_think_tags(self, role: Role) -> bool:
        return self.models[role].knows_think_tags

    def context_window(self, role: Role) -> int:
        return self.models[role].context_window

    def tokenizer(self, role: Role) -> Any:
        """The model's HF tokenizer (its chat template, its added tokens); None where the backend has none."""
        return getattr(self.models.get(role), "tokenizer", None)

    @abc.abstractmethod
    async def open_session(self, role: Role, spec: SessionSpec) -> ModelSession:
        """Render the run's messages with the model's chat template (see `render_chat_prompt`);
        raise `ContextLengthError` when the prompt does not fit."""

    async def health(self) -> dict[Role, str | None]:
        """Each role's model: None when it can serve, else what is wrong with it."""
        return {role: None for role in self.models}

    def running_requests(self) -> dict[Role, int] | None:
        """Requests each role's engine is running now (one engine serving both roles is counted
        under each); None where the backend has no engine of its own to ask (transformers)."""
        return None

    def close(self) -> None:
        """Release the models."""


async def health_problem(check: Awaitable[Any]) -> str | None:
    """None when `check` completes, else what it raised, in one line."""
    try:
        await check
    except Exception as error:  # whatever a health check raises is the answer, not a crash
        return f"{type(error).__name__}: {error}"
    return None


class StopScanner:
    """Finds where a step ends in text that grows token by token."""

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = tuple(s for s in stop if s)
        self._longest = max((len(s) for s in self._stop), default=0)
        self._scanned = 0

    def found(self, text: str) -> bool:
        """True once `text` contains a stop string (only the new part is searched)."""
        start = max(0, self._scanned - self._longest + 1)
        self._scanned = len(text)
        return any(s in text[start:] for s in self._stop)


def render_think_suffix(prompt: str, open_think: bool, opening: str = THINK_MARKERS[0]) -> str:
    """The prompt, followed by `opening` and a newline when reasoning must be opened and is not yet."""
    if open_think and not prompt.rstrip().endswith(opening):
        return prompt + opening + "\n"
    return prompt


@functools.lru_cache(maxsize=8)
def vocabulary_digest(tokenizer: Any) -> str:
    """A digest of a HF tokenizer's token -> id map (added tokens included), computed once per
    tokenizer: two models with the same digest give every text the same token ids, and read each
    other's."""
    vocabulary = json.dumps(sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]))
    return hashlib.sha256(vocabulary.encode()).hexdigest()


def shared_step_ids(ids: Sequence[int] | None, text: str, writer: Any, reader: Any) -> list[int] | None:
    """The writer's step tokens `ids` where the reader can take them for the step's `text`: the
    two HF tokenizers map tokens to the same ids, and the ids hold exactly the text (a stop string
    cut inside a token leaves more in the ids than in the step).  None: the reader encodes the text."""
    if not ids or (writer is not reader and vocabulary_digest(writer) != vocabulary_digest(reader)):
        return None
    return list(ids) if writer.decode(ids, skip_special_tokens=False) == text else None


def knows_think_tags(tokenizer: Any) -> bool:
    """Whether a HF tokenizer's chat template or vocabulary has `<think>`."""
    return "<think>" in (tokenizer.chat_template or "") or "<think>" in tokenizer.get_vocab()


def render_chat_prompt(tokenizer: Any, spec: SessionSpec) -> str:
    """The prompt text from a HF tokenizer's chat template: tools through the template when it
    renders them (else described in a system message), then `<think>\\n` when asked for."""
    renders_tools = "tools" in (tokenizer.chat_template or "")
    prepared = prepare_messages(spec.messages, spec.tools, renders_tools, spec.tool_choice, spec.tool_call_parser)
    prompt = tokenizer.apply_chat_template(
        prepared,
        tools=list(spec.tools) if spec.tools and renders_tools else None,
        tokenize=False,
        add_generation_prompt=True,
    )
    return render_think_suffix(prompt, spec.open_think, spec.reasoning_markers[0])


def resolve_model_name(parameter: str, name: str) -> str:
    """A model given as a local folder (expanded, its files checked: `model_files`) or an HF id; a
    path that is not a folder is an error."""
    from pathlib import Path

    from glimp_integrations.errors import invalid

    if not isinstance(name, str) or not name.strip():
        raise invalid(parameter, name, "must name a model", "Pass a model folder or an HF model id.")
    path = Path(name).expanduser()
    if path.is_dir():
        check_model_folder(parameter, path)
        return str(path)
    if name.startswith(("/", ".", "~")) or path.exists():
        raise invalid(
            parameter,
            name,
            "is a path that is not a model folder",
            "Pass an existing folder holding config.json and weights, or an HF model id.",
        )
    return name


@functools.lru_cache(maxsize=8)
def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one token of a HF tokenizer's vocabulary holds (computed once)."""
    return max(len(token) for token in tokenizer.get_vocab())


def rendered_prompt(tokenizer: Any, spec: SessionSpec, role: Role, model_name: str, context_window: int) -> str:
    """The session's prompt as its chat template renders it; `ContextLengthError` at once, before any
    tokenizing, when it has more characters than the context window's tokens could hold (a token is
    at most `longest_token_chars` characters; the bound takes twice that, for what a tokenizer's
    normalizer drops): a 16 MB prompt is refused in milliseconds, not after seconds of tokenizing."""
    text = render_chat_prompt(tokenizer, spec)
    check_prompt_fits(role, model_name, len(text) // (2 * longest_token_chars(tokenizer)), context_window, True)
    return text


def check_prompt_fits(
    role: Role, model_name: str, prompt_tokens: int, context_window: int, at_least: bool = False
) -> None:
    """Raise `ContextLengthError` unless the prompt (of `prompt_tokens`, or `at_least` that many)
    leaves room for at least one new token."""
    from glimp_integrations.errors import ContextLengthError

    if prompt_tokens >= context_window:
        raise ContextLengthError(
            f"`messages` renders to {'at least ' if at_least else ''}{prompt_tokens} tokens for the {role} model `{model_name}`, "
            f"whose context window is {context_window} tokens. Shorten the conversation "
            f"(drop earlier turns or long documents) or use a model with a longer context.",
            parameter="messages",
        )
