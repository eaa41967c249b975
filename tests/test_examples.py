"""The scripts in examples/ run as written, on the embedded model."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.embedded
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_langchain_chain_example_prints_routing_then_the_answer():
    out = run_example("langchain_chain.py", "--max-tokens", "30")
    assert "step 0: " in out and "H_init=" in out
    answer = out.split("answer:", 1)[1].strip()
    assert answer


def test_langchain_agent_example_runs_the_agent():
    out = run_example("langchain_agent.py", "--max-tokens", "30")
    lines = out.splitlines()
    assert lines[0].startswith("human: ") and any(line.startswith("ai: ") for line in lines)
    assert "intervention rate" in out


def test_llamaindex_query_engine_example_retrieves_and_answers():
    out = run_example("llamaindex_query_engine.py", "--max-tokens", "30")
    assert "step 0: " in out and "H_init=" in out
    assert "source: The Glimp bakery opens at 7 am" in out
    assert out.split("answer:", 1)[1].strip()


def test_llamaindex_agent_example_runs_the_agent():
    out = run_example("llamaindex_agent.py", "--max-tokens", "30")
    assert out.split("answer:", 1)[1].strip()


def test_the_readmes_python_examples_run_as_written():
    """The README's engine, LangChain and LlamaIndex examples (not the real pairs: those need GPUs
    and hub models), run in one process on the embedded default."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    runnable = [b for b in blocks if "seed=0" in b and "Qwen" not in b]
    assert len(runnable) == 3, "the README's examples changed: update this test"
    script = "\n".join(runnable).replace("print(", "_show(")
    result = subprocess.run(
        [sys.executable, "-c", "def _show(*a):\n    print(*a, flush=True)\n" + script],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len([line for line in result.stdout.splitlines() if line.strip()]) >= 3


def test_the_docs_examples_run_as_written_unless_they_say_what_they_need():
    """Every Python block of the docs pages runs as written on the embedded default, in one process
    per page, unless its first line says what it needs (`# needs: GPUs ...`, a server, names defined
    around it); those still parse (top-level `await` allowed, as in a notebook)."""
    import ast

    ran = 0
    for page in sorted((EXAMPLES.parent / "docs").glob("*.md")):
        runnable = []
        for number, block in enumerate(page.read_text().split("```python\n")[1:]):
            source = block.split("```", 1)[0]
            compile(source, f"{page.name} block {number}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            if not source.startswith("# needs: "):
                runnable.append(source)
        if runnable:
            script = "import asyncio\nasync def _page():\n" + textwrap.indent("\n".join(runnable), "    ")
            result = subprocess.run(
                [sys.executable, "-c", script + "\nasyncio.run(_page())"],
                check=False,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert result.returncode == 0, f"{page.name}: {result.stderr[-3000:]}"
            ran += len(runnable)
    assert ran >= 2, "the docs' runnable examples went missing"
