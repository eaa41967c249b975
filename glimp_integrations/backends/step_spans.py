"""Where steps start inside one request, for the entropy gate (in vLLM's workers) and the sessions
that read the request (in Glimp's process): both scan the same tokens the same way.

A *span* is one request of the small model that writes consecutive steps: it goes on past each
step's end, and at every step start the gate measures H_init and either lets it go on (the small
model writes that step too) or ends the request there (the large model writes it).  A step ends
after the token that completes the separator in the text (as vLLM's stop strings see it: the
token's text after the step's text so far), or after `step_tokens` tokens.  Standard library only:
`vllm_gate` imports it in every worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class StepScanner:
    """Fed a request's tokens one by one; says after which token a new step starts."""

    def __init__(self, separator: str, token_texts: Sequence[str], step_tokens: int | None = None) -> None:
        self.separator = separator
        self._texts = token_texts
        self._step_tokens = step_tokens
        self._keep = len(separator) - 1
        self._tail = ""
        """The step's last `len(separator) - 1` characters: a separator may straddle two tokens."""
        self.step_length = 0
        """Tokens of the current step scanned so far."""
        self.steps = 0
        """Step ends seen so far."""

    def text_of(self, token: int) -> str:
        return self._texts[token] if 0 <= token < len(self._texts) else ""

    def feed(self, token: int) -> str | None:
        """Scan the next token; `separator` or `step_tokens` when a step ends after it, else None."""
        text = self._tail + self.text_of(token)
        self.step_length += 1
        if self.separator in text:
            ended = "separator"
        elif self._step_tokens is not None and self.step_length >= self._step_tokens:
            ended = "step_tokens"
        else:
            self._tail = text[-self._keep :] if self._keep else ""
            return None
        self._tail, self.step_length = "", 0
        self.steps += 1
        return ended


def split_text(text: str, ids: Sequence[int], cut: int, scanner: StepScanner) -> tuple[str, str]:
    """The text of `ids[:cut]` and of `ids[cut:]`, given `text`, the text a server streamed for all
    of `ids`.  Exact where the tokens' own texts add up to `text` (so for all but a few characters
    split across tokens, such as a multi-byte character); otherwise everything after the first
    separator is taken to belong to the tokens after the cut."""
    head = "".join(scanner.text_of(token) for token in ids[:cut])
    if head + "".join(scanner.text_of(token) for token in ids[cut:]) == text:
        return head, text[len(head) :]
    found = text.find(scanner.separator)
    if found < 0:
        return text, ""
    end = found + len(scanner.separator)
    return text[:end], text[end:]


def through_separator(step_text: str, head: str, separator: str) -> str:
    """`head` cut just after the separator that ends the step (`step_text` is the step's text before
    `head`): the rest of the token that completed it is not shown, as a stop string cuts text."""
    joined = step_text + head
    found = joined.find(separator, max(0, len(step_text) - len(separator) + 1))
    if found < 0:
        return head
    return joined[len(step_text) : found + len(separator)]


def token_texts(tokenizer: Any) -> list[str]:
    """Each token's text by id, special tokens as empty text (as vLLM's output text leaves them
    out).  One pass over a HF tokenizer's vocabulary: call once per model and keep the result."""
    return tokenizer.batch_decode([[index] for index in range(len(tokenizer))], skip_special_tokens=True)


STEP_ENDS = {"separator": "stop_string", "step_tokens": "max_tokens", "room": "max_tokens"}
"""A step's end (`StepWriter.end`) for each reason `SpanBuffer.take` gives."""


class SpanBuffer:
    """A request's tokens as its session reads them step by step: what has been read from the
    request but not yet given to a step, and how the request ended, once it has."""

    def __init__(self, scanner: StepScanner | None) -> None:
        self.scanner = scanner
        """None for a request that writes one step (it ends where the step does)."""
        self.ids: list[int] = []
        self.text = ""
        self.finish: object = None
        """The backend's record of how the request ended (None while it runs)."""

    @property
    def empty(self) -> bool:
        return not self.ids and not self.text

    def ends_step(self, ended: str | None) -> bool:
        """Whether the step ends with what `take` just gave: it said so, or the request has ended."""
        return ended is not None or (self.empty and self.finish is not None)

    def cut_short(self, ended: str | None) -> bool:
        """Whether the step ended at its `room` while the request still runs: it cannot go on."""
        return ended == "room" and self.finish is None

    def add(self, ids: Sequence[int], text: str) -> None:
        self.ids += ids
        self.text += text

    def take(self, step_text: str, room: int) -> tuple[list[int], str, str | None]:
        """The next part of the current step from what was read (at most `room` tokens), its text
        and why the step ends there: `separator` or `step_tokens` (the scanner's), `room`, or None
        (it goes on).  `step_text` is the step's text so far (a separator may straddle)."""
        for index, token in enumerate(self.ids):
            ended = self.scanner.feed(token) if self.scanner is not None else None
            if ended is None and index + 1 == room:
                ended = "room"
            if ended is not None:
                head, self.text = (
                    split_text(self.text, self.ids, index + 1, self.scanner)
                    if self.scanner is not None
                    else (self.text, "")
                )
                ids, self.ids = self.ids[: index + 1], self.ids[index + 1 :]
                if ended == "separator":
                    head = through_separator(step_text, head, self.scanner.separator)  # type: ignore[union-attr]
                return ids, head, ended
        ids, text, self.ids, self.text = self.ids, self.text, [], ""
        return ids, text, None
