"""A scripted model pair that answers according to its prompt, for framework test suites.

It is a test fixture, not a model: the small model writes two low-entropy reasoning steps (the
second closes `</think>`); the large model answers.  When the prompt offers tools, does not
forbid a call, and no tool result has come back yet, the answer is a call to the tool (named by
`tool_choice`, else the first), with arguments filled from its JSON schema (integers 3, strings
"glimp"); a LlamaIndex
ReAct prompt gets an Action, then an Answer once an Observation is in the prompt; when JSON is
asked for, the answer is a JSON object (filled from the schema the prompt gives, if any).
Otherwise the answer is `PLAIN_ANSWER`.
"""

from __future__ import annotations

import json
import re

from glimp_integrations import ScriptedBackend, ScriptedModel, ScriptedStep
from glimp_integrations.tools import tool_instructions
from tests.conftest import step

PLAIN_ANSWER = "Hello! The scripted pair answers: 42."
_TOOL_HEADER = tool_instructions([], None).split("\n")[0]
_VALUES = {"integer": 3, "number": 3.5, "string": "glimp", "boolean": True}


def _fill(schema: dict, prompt: str) -> dict:
    """Arguments for `schema`: strings copy the last quoted name in the prompt, if any."""
    quoted = re.findall(r"'([^'\n]+)'", prompt)
    values = {**_VALUES, "string": quoted[-1] if quoted else _VALUES["string"]}
    return {name: values.get(spec.get("type"), "glimp") for name, spec in schema.get("properties", {}).items()}


def _react_answer(prompt: str) -> str:
    """LlamaIndex's ReAct format: act with the first listed tool, then answer after its observation."""
    if "Observation:" in prompt.split("## Current Conversation")[-1]:
        return "Thought: I can answer without using any more tools.\nAnswer: " + PLAIN_ANSWER
    name = re.search(r"> Tool Name: (\S+)", prompt).group(1)
    schema = json.loads(re.search(r"Tool Args: (\{.*\})", prompt).group(1))
    return (
        f"Thought: I need to use a tool to help me answer the question.\nAction: {name}\n"
        f"Action Input: {json.dumps(_fill(schema, prompt))}"
    )


def _answer(prompt: str) -> str:
    if "> Tool Name:" in prompt:
        return _react_answer(prompt)
    tools = []
    if _TOOL_HEADER in prompt:
        block = prompt.split(_TOOL_HEADER, 1)[1].split("\n\n", 1)[0]
        tools = [json.loads(line) for line in block.strip().splitlines() if line.startswith("{")]
    tool_answered = re.search(r"\ntool: ", prompt.rsplit("\nuser: ", 1)[-1]) is not None
    if tools and not tool_answered and "Do not call a tool" not in prompt:
        forced = re.search(r"must call the tool `([^`]+)`", prompt)
        tool = next((t for t in tools if forced and t["name"] == forced.group(1)), tools[0])
        return (
            "<tool_call>"
            + json.dumps(
                {"name": tool["name"], "arguments": _fill(tool.get("parameters", {}), prompt)}, ensure_ascii=False
            )
            + "</tool_call>"
        )
    schema = re.search(r"matches this JSON schema, and nothing else:\n(\{.*\})", prompt)
    if schema:
        return json.dumps(_fill(json.loads(schema.group(1)), prompt))
    if "JSON" in prompt and not tool_answered:
        return json.dumps(
            {"setup": "Why did the cat sit on the computer?", "punchline": "To keep an eye on the mouse."}
        )
    return PLAIN_ANSWER


def _large_script(prompt: str) -> list[ScriptedStep]:
    return [ScriptedStep(tokens=[_answer(prompt)])]


def scripted_pair() -> ScriptedBackend:
    """A think-mode pair: two delegated reasoning steps, then the large model's answer."""
    small = [step("Let me think about it.\n\n", 0.2), step("I know what to do. </think>", 0.3)]
    return ScriptedBackend(
        ScriptedModel("scripted-small", small, knows_think_tags=True),
        ScriptedModel("scripted-large", _large_script, knows_think_tags=True),
    )
