"""Answer checking: math answers (extracted and compared by `math-verify`: the last `\\boxed{}`,
nested LaTeX included, else the final answer), multiple-choice letters, and exact match."""

from __future__ import annotations

import re
import threading

from glimp_integrations.bench.problems import LETTERS, Problem
from glimp_integrations.errors import require_module


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
    math_verify = require_module("math_verify", "bench", "Checking math answers")
    # math-verify times out through signal.alarm, which only the main thread may set.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold = math_verify.parse(f"${problem.answer}$", parsing_timeout=timeout)
    predicted = math_verify.parse(response, parsing_timeout=timeout)  # its own boxed / final-answer extraction
    return bool(predicted) and bool(math_verify.verify(gold, predicted, timeout_seconds=timeout))
