"""Benchmark problems: loading the usual JSONL layouts, and the arithmetic set Glimp ships.

A `Problem` is a question, its reference answer, the kind of checking it needs (`math`: a
number or expression, `choice`: a letter, `exact`: a string) and, for multiple choice, the options.
Layouts read from JSONL (one object per line):
- Glimp's own: {"question", "answer", optional "choices": [...]};
- AIME / MATH-500: {"problem", "answer"} (MATH-500 may add "solution");
- GPQA-Diamond: {"Question", "Correct Answer", "Incorrect Answer 1".."3"}; the options are
  shuffled with a seed per question, so the correct letter is fixed by the file.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from glimp_integrations.errors import GlimpInputError

Kind = Literal["math", "choice", "exact"]
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str
    kind: Kind
    choices: tuple[str, ...] = ()

    def prompt(self) -> str:
        """The question as asked of the models."""
        if self.kind == "choice":
            options = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(self.choices))
            return f"{self.question}\n\n{options}\n\nThink step by step, then answer with the letter of the option."
        if self.kind == "math":
            return f"{self.question}\nThink step by step, then give the final answer as \\boxed{{...}}."
        return self.question


def load_problems(path: str | Path, kind: Kind | None = None) -> list[Problem]:
    """Problems from a JSONL file in any of the layouts above; `kind` overrides the guess
    (choices -> choice, else math)."""
    problems = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                problems.append(_problem(json.loads(line), f"{Path(path).stem}-{number}", kind))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise GlimpInputError(
                    f"`{path}` line {number} is not a problem ({type(error).__name__}: {error}). Each line must be a "
                    'JSON object such as {"question": ..., "answer": ...} (or the AIME, MATH-500, GPQA layouts).'
                ) from error
    if not problems:
        raise GlimpInputError(f"`{path}` holds no problems; got an empty file. Add JSONL lines.")
    return problems


def _problem(row: dict, default_id: str, kind: Kind | None) -> Problem:
    if "Correct Answer" in row:  # GPQA
        options = [row["Correct Answer"]] + [row[f"Incorrect Answer {i}"] for i in (1, 2, 3)]
        order = list(range(4))
        random.Random(row.get("Record ID", default_id)).shuffle(order)
        choices = tuple(str(options[i]).strip() for i in order)
        return Problem(
            str(row.get("Record ID", default_id)), row["Question"].strip(), LETTERS[order.index(0)], "choice", choices
        )
    question = row["question"] if "question" in row else row["problem"]
    choices = tuple(str(c) for c in row.get("choices", ()))
    guessed: Kind = kind or ("choice" if choices else "math")
    return Problem(
        str(row.get("id", row.get("unique_id", default_id))), str(question), str(row["answer"]), guessed, choices
    )


def arithmetic_problems(count: int = 40, seed: int = 0) -> list[Problem]:
    """Two-step arithmetic word problems with numbers from 1 to 5, easy enough that a 135M
    model solves some.  Glimp ships `count=40, seed=0` as `glimp_integrations/data/arithmetic.jsonl`."""
    rng = random.Random(seed)
    names = ["Tom", "Ana", "Li", "Sam", "Maya", "Omar", "Zoe", "Ben"]
    things = ["apples", "pencils", "stickers", "marbles", "cookies", "books"]
    problems = []
    for index in range(count):
        name, thing = rng.choice(names), rng.choice(things)
        a, b, c = rng.randint(1, 5), rng.randint(1, 5), rng.randint(1, 3)
        if index % 2 == 0:
            question = (
                f"{name} has {a} {thing}. {name} gets {b} more {thing}. Then {name} gets {c} more {thing}. "
                f"How many {thing} does {name} have now?"
            )
            answer = a + b + c
        else:
            question = (
                f"{name} has {a + c} {thing}. {name} gets {b} more {thing}. Then {name} gives {c} {thing} "
                f"to a friend. How many {thing} does {name} have now?"
            )
            answer = a + b
        problems.append(Problem(f"arithmetic-{index}", question, str(answer), "math"))
    return problems


def shipped_arithmetic_path() -> Path:
    """The arithmetic set shipped with Glimp."""
    return Path(str(resources.files("glimp_integrations") / "data" / "arithmetic.jsonl"))


def write_problems(problems: list[Problem], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for p in problems:
            row: dict[str, Any] = {"id": p.id, "question": p.question, "answer": p.answer}
            if p.choices:
                row["choices"] = list(p.choices)
            out.write(json.dumps(row) + "\n")
