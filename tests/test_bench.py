"""`glimp bench` and `glimp calibrate`: checkers, statistics, loaders, calibration, and the real run."""

import asyncio
import json
import math
import os
import subprocess
import sys

import pytest

from glimp_integrations import GlimpConfigError, GlimpRouter
from glimp_integrations.bench.calibrate import split_problems, threshold_for_rate
from glimp_integrations.bench.checking import (
    extract_choice,
    is_correct,
)
from glimp_integrations.bench.harness import (
    RunRecord,
    grid,
    markdown_table,
    run_grid,
    summarize,
)
from glimp_integrations.bench.problems import (
    Problem,
    arithmetic_problems,
    load_problems,
    shipped_arithmetic_path,
)
from glimp_integrations.bench.stats import bootstrap_mean, paired_difference
from glimp_integrations.errors import GlimpInputError
from tests.scripted_pairs import scripted_pair

MATH = Problem("m", "q", "7", "math")


@pytest.mark.parametrize(
    "response, correct",
    [
        ("\\boxed{7}", True),
        ("The answer is 7.0", True),
        ("\\boxed{14/2}", True),
        ("\\boxed{8}", False),
        ("I don't know", False),
        ("so the total is \\boxed{7}. Later 9 apples", True),
    ],
)
def test_math_answers_are_checked_by_value(response, correct):
    assert is_correct(response, MATH) is correct


def test_nested_boxed_competition_answers_compare_by_value():
    root = Problem("r", "q", "\\frac{\\sqrt{2}}{2}", "math")
    assert is_correct("so \\boxed{\\frac{1}{\\sqrt{2}}}", root)
    assert not is_correct("so \\boxed{\\frac{1}{2}}", root)


@pytest.mark.parametrize(
    "response, letter",
    [("The answer is (B).", "B"), ("Answer: c", "C"), ("I pick (D) over (A)... final: (A)", "A"), ("None", None)],
)
def test_extract_choice(response, letter):
    assert extract_choice(response, 4) == letter


def test_choice_and_exact_checking():
    assert is_correct("answer is (C)", Problem("c", "q", "C", "choice", ("a", "b", "c", "d")))
    assert is_correct("  Paris ", Problem("e", "q", "paris", "exact"))
    assert not is_correct("Lyon", Problem("e", "q", "paris", "exact"))


def test_bootstrap_interval_contains_the_mean_and_is_repeatable():
    values = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1]
    interval = bootstrap_mean(values, seed=3)
    assert interval.low <= interval.mean == 0.7 <= interval.high
    assert interval == bootstrap_mean(values, seed=3)
    assert bootstrap_mean([2.0] * 5) == bootstrap_mean([2.0] * 5, seed=9)
    constant = bootstrap_mean([2.0] * 5)
    assert constant.low == constant.high == 2.0


def test_paired_difference_uses_the_pairs():
    difference = paired_difference([3.0, 4.0, 5.0], [1.0, 2.0, 3.0])
    assert difference.mean == difference.low == difference.high == 2.0
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([1.0], [1.0, 2.0])


def test_threshold_for_rate_and_disjoint_splits():
    entropies = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    tau = threshold_for_rate(entropies, 0.3)
    assert sum(h > tau for h in entropies) == 3 and tau == 0.7
    assert sum(h > threshold_for_rate(entropies, 0.0) for h in entropies) == 0
    calibration, evaluation = split_problems(arithmetic_problems(10), 0.5, seed=1)
    assert len(calibration) == 5 and not {p.id for p in calibration} & {p.id for p in evaluation}


def test_loaders_read_the_usual_layouts(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [
        {"question": "1+1?", "answer": "2"},
        {"problem": "AIME-style?", "answer": "204", "id": "aime-1"},
        {"problem": "MATH?", "solution": "...", "answer": "\\frac{1}{2}", "unique_id": "math/1"},
        {"question": "Pick", "answer": "B", "choices": ["x", "y"]},
        {
            "Question": "GPQA?",
            "Correct Answer": "right",
            "Incorrect Answer 1": "w1",
            "Incorrect Answer 2": "w2",
            "Incorrect Answer 3": "w3",
            "Record ID": "rec1",
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    problems = load_problems(path)
    assert [p.kind for p in problems] == ["math", "math", "math", "choice", "choice"]
    assert [p.id for p in problems[1:3]] == ["aime-1", "math/1"]
    gpqa = problems[4]
    assert gpqa.choices[ord(gpqa.answer) - ord("A")] == "right" and sorted(gpqa.choices) == ["right", "w1", "w2", "w3"]
    assert gpqa == load_problems(path)[4]  # the shuffle is seeded by the record


def test_a_bad_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "ok", "answer": "1"}\n{"no": "fields"}\n')
    with pytest.raises(GlimpInputError, match="bad.jsonl` line 2"):
        load_problems(path)


def test_the_shipped_set_is_what_the_generator_makes():
    assert load_problems(shipped_arithmetic_path()) == arithmetic_problems()
    assert all(int(p.answer) > 0 for p in arithmetic_problems())


def _record(policy, threshold, seed, problem, correct, latency, rate=0.0):
    return RunRecord(policy, threshold, seed, problem, correct, latency, rate, 10, 5, 0, "a")


def test_summary_numbers_follow_from_the_runs():
    records = [
        _record("always_large", None, s, p, c, 2.0)
        for s, p, c in [(0, "p1", True), (1, "p1", True), (0, "p2", False), (1, "p2", True)]
    ]
    records += [
        _record("glimpse", 0.9, s, p, c, 1.0, 0.25)
        for s, p, c in [(0, "p1", True), (1, "p1", False), (0, "p2", False), (1, "p2", False)]
    ]
    rows = {r["policy"]: r for r in summarize(records)}
    assert rows["always_large"]["pass_at_1"]["mean"] == pytest.approx(0.75)  # (1 + 0.5) / 2
    assert rows["glimpse"]["pass_at_1"]["mean"] == pytest.approx(0.25)
    versus = rows["glimpse"]["vs_always_large"]
    assert versus["pairs"] == 4 and versus["accuracy_difference"]["mean"] == pytest.approx(-0.5)
    assert versus["latency_ratio"] == pytest.approx(0.5)
    assert "| glimpse | 0.9 | 4 |" in markdown_table(list(rows.values()))


def test_grid_gives_thresholds_only_to_threshold_policies():
    settings = grid(["glimpse", "always_large", "specreason"], [0.6, 0.9])
    assert [(s.policy, s.threshold) for s in settings] == [
        ("glimpse", 0.6),
        ("glimpse", 0.9),
        ("always_large", None),
        ("specreason", 0.6),
        ("specreason", 0.9),
    ]


@pytest.mark.parametrize("concurrency", [1, 3])
def test_run_grid_keeps_grid_order_and_runs_that_many_at_once(concurrency):
    backend = scripted_pair()
    open_session, open_counts = backend.open_session, []

    async def open_slowly(role, spec):  # hold each session open a moment, so concurrent runs overlap
        session = await open_session(role, spec)
        open_counts.append(backend.open_sessions)
        await asyncio.sleep(0.01)
        return session

    backend.open_session = open_slowly
    problems = [Problem(f"p{i}", "q", "42", "math") for i in range(3)]
    settings = grid(["glimpse"], [0.9, 1.8])
    records = run_grid(
        GlimpRouter(backend=backend), problems, settings, [0, 1], concurrency=concurrency, progress=False
    )
    assert [(r.policy, r.seed, r.problem_id) for r in records] == [
        (s.policy, seed, p.id) for s in settings for seed in (0, 1) for p in problems
    ]
    assert all(r.correct for r in records)
    assert max(open_counts) == 2 * concurrency  # each run holds a small and a large session
    assert backend.open_sessions == 0


def test_run_grid_rejects_a_bad_concurrency():
    with pytest.raises(GlimpConfigError, match="`concurrency`.*0"):
        run_grid(GlimpRouter(backend=scripted_pair()), [MATH], grid(["always_large"], []), [0], concurrency=0)


def _glimp(*args):
    return subprocess.run(
        [sys.executable, "-m", "glimp_integrations.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.embedded
def test_glimp_bench_on_the_embedded_model_writes_consistent_files(tmp_path):
    out = tmp_path / "bench"
    result = _glimp(
        "bench",
        "--limit",
        "2",
        "--seeds",
        "2",
        "--policies",
        "glimpse,always_large",
        "--thresholds",
        "0.9",
        "--reasoning-budget",
        "30",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "runs.json").read_text())
    runs = data["runs"]
    assert len(runs) == 2 * 2 * 2 and {r["policy"] for r in runs} == {"glimpse", "always_large"}
    for row in data["summary"]:
        mine = [r for r in runs if r["policy"] == row["policy"]]
        per_problem = {}
        for r in mine:
            per_problem.setdefault(r["problem_id"], []).append(r["correct"])
        expected = sum(sum(v) / len(v) for v in per_problem.values()) / len(per_problem)
        assert row["pass_at_1"]["mean"] == pytest.approx(expected)
        assert row["intervention_rate"] == pytest.approx(sum(r["intervention_rate"] for r in mine) / len(mine))
        assert row["pass_at_1"]["low"] <= row["pass_at_1"]["mean"] <= row["pass_at_1"]["high"]
    assert all(r["intervention_rate"] == 1.0 for r in runs if r["policy"] == "always_large")
    assert "| glimpse | 0.9 | 4 |" in (out / "summary.md").read_text()
    for picture in ("pareto.png", "steps.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| always_large |" in result.stdout


@pytest.mark.embedded
def test_glimp_calibrate_hits_its_target_on_the_calibration_split(tmp_path):
    result = _glimp(
        "calibrate",
        "--limit",
        "4",
        "--seeds",
        "1",
        "--target-rate",
        "0.5",
        "--reasoning-budget",
        "30",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "calibration.json").read_text())
    assert data["calibration_rate"] <= 0.5 and data["calibration_probes"] > 0
    assert not set(data["calibration_problems"]) & set(data["evaluation_problems"])
    assert "threshold" in result.stdout and math.isfinite(data["threshold"])
