"""Answer checking: math answers (boxed or final number, through `math-verify`), multiple-choice
letters, and exact match."""

from __future__ import annotations

import re
import threading

from glimp_integrations.bench.problems import LETTERS, Problem
from glimp_integrations.errors import require_module

_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")


def extract_math_answer(response: str) -> str | None:
    """The last \\boxed{...} content, else the last number in the response."""
    boxed = _BOXED.findall(response)
    if boxed:
        return boxed[-1].strip()
    numbers = _NUMBER.findall(response)
    return numbers[-1].replace(",", "") if numbers else None


def extract_choice(response: str, options: int) -> str | None:
    """The chosen letter: "answer is (B)", "Answer: B", "(B)", or a lone letter, last one wins."""
    letters = LETTERS[:options]
    patterns = [rf"answer\s*(?:is|:)?\s*\(?([{letters}])\)?\b", rf"\(([{letters}])\)", rf"\b([{letters}])\b"]
    for pattern in patterns:
        found = re.findall(pattern, response, flags=re.IGNORECASE if pattern.startswith("answer") else 0)
        if found:
            return found[-1].upper()
    return None


def is_correct(response: str, problem: Problem) -> bool:
    """Whether `response` answers `problem`."""
    if problem.kind == "choice":
        return extract_choice(response, len(problem.choices)) == problem.answer.strip().upper()
    if problem.kind == "exact":
        return response.strip().lower() == problem.answer.strip().lower()
    predicted = extract_math_answer(response)
    if predicted is None:
        return False
    math_verify = require_module("math_verify", "bench", "Checking math answers")
    # math-verify times out through signal.alarm, which only the main thread may set.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold = math_verify.parse(f"${problem.answer}$", parsing_timeout=timeout)
    return bool(math_verify.verify(gold, math_verify.parse(f"${predicted}$", parsing_timeout=timeout),
                                   timeout_seconds=timeout))
