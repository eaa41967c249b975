"""Answer constraints: validation before any model runs, the grammar each form compiles to, and the
loop's plumbing (only the large model's answer is constrained) on the scripted backend."""

import json

import pytest

from glimp_integrations import GlimpConfigError, GlimpRouter
from glimp_integrations.backends.base import Backend
from glimp_integrations.constraints import AnswerConstraint, answer_constraint
from tests.conftest import scripted_router, step

TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a"],
        },
    },
}
OTHER = {"type": "function", "function": {"name": "sub"}}


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
            r"`response_format schema` is rejected by the grammar engine .*objekt",
        ),
        ({"response_format": {"type": "regex", "regex": "a("}}, r"`regex` is rejected .*unclosed group"),
        ({"response_format": {"type": "choice", "choice": []}}, r"`choices` must be a non-empty list"),
        ({"response_format": {"type": "xml"}}, r"`response_format\['type'\]` must be json_schema"),
        (
            {"response_format": {"type": "grammar", "grammar": "start: item\nitem: thing"}},
            r"`grammar` is rejected by the grammar engine .*unknown name: \"thing\"",
        ),
        (
            {"tools": [TOOL], "response_format": {"type": "grammar", "grammar": 'start: "x"'}},
            r"`response_format` must be a JSON schema, JSON object, regex or choice format when given with tools",
        ),
        ({"tools": [TOOL], "tool_choice": "mul"}, r"`tool_choice` must be .* a tool name \(add\); got 'mul'"),
        ({"tools": [TOOL, TOOL]}, r"`tools` must have distinct names; \['add'\] appear more than once"),
        ({"tools": [{"type": "function"}]}, r"`tools\[0\]` must be an OpenAI function schema"),
        ({"tool_choice": "required"}, r"`tool_choice` asks for a tool call but no tools are given"),
        ({"tools": [TOOL], "response_format": {"type": "text"}}, r"`response_format` asks for free text"),
    ],
)
def test_bad_constraints_fail_before_any_model_runs_and_the_router_stays_usable(arguments, fragment):
    router, backend = scripted_router([step("Fine.")], [step("Fine.")])
    with pytest.raises(GlimpConfigError, match=fragment):
        router.run("Hi?", **arguments)
    assert backend.prompts == [] and backend.open_sessions == 0
    assert router.run("Hi?").answer == "Fine."


def test_a_backend_that_cannot_constrain_is_refused_by_name():
    class NoGrammar(Backend):
        name = "plain"
        models = {}

        async def open_session(self, role, spec):
            raise AssertionError("no session may open")

    with pytest.raises(GlimpConfigError, match="NoGrammar does not"):
        GlimpRouter(backend=NoGrammar()).run("Hi?", response_format={"type": "json_object"})


ADD_CALL = '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
SUB_CALL = '<tool_call>\n{"name": "sub", "arguments": {}}\n</tool_call>'


def test_grammars_follow_tool_choice_and_parallel_calls(accepts):
    auto = AnswerConstraint.for_tools([TOOL, OTHER]).grammar
    assert [
        accepts(auto, text)
        for text in (
            "Just text.",
            "Let me add. " + ADD_CALL,
            ADD_CALL + SUB_CALL,
            '<tool_call>{"name": "mul", "arguments": {}}</tool_call>',
            '<tool_call>{"name": "add", "arguments": {"c": 1}}</tool_call>',
        )
    ] == [True, True, True, False, False]
    named = AnswerConstraint.for_tools([TOOL, OTHER], "sub", parallel_tool_calls=False).grammar
    assert [accepts(named, text) for text in (SUB_CALL, ADD_CALL, SUB_CALL + SUB_CALL, "Text.")] == [
        True,
        False,
        False,
        False,
    ]
    assert AnswerConstraint.for_tools([TOOL], "any").tool_choice == "required"
    none = AnswerConstraint.for_tools([TOOL], "none").grammar
    assert [accepts(none, text) for text in ("Just text.", ADD_CALL)] == [True, False]


@pytest.mark.parametrize(
    "tool_choice, rule",
    [
        (None, "Call a tool only when it helps"),
        ("required", "You must call one of the tools."),
        ("sub", "You must call the tool `sub`."),
        ("none", "Do not call a tool now; answer directly."),
    ],
)
def test_the_prompt_states_the_tool_choice_the_grammar_enforces(tool_choice, rule):
    router, backend = scripted_router([step("Fine.")], [step("Fine.")])
    router.run("Hi?", tools=[TOOL, OTHER], tool_choice=tool_choice)
    assert rule in backend.prompts[0] and backend.prompts[0].count("You must call") == (rule.count("You must call"))


@pytest.fixture(scope="module")
def accepts():
    """accepts(grammar, text): whether `text` is a complete answer under `grammar` (llguidance,
    the embedded model's tokens)."""
    import llguidance.hf
    from transformers import AutoTokenizer

    from glimp_integrations.embedded import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    tokens = llguidance.hf.from_tokenizer(tokenizer)

    def check(grammar: str, text: str) -> bool:
        matcher = llguidance.LLMatcher(tokens, grammar, log_level=0)
        return matcher.consume_tokens(tokenizer.encode(text, add_special_tokens=False)) and matcher.is_accepting()

    return check


def test_tools_with_a_response_format_answer_with_calls_or_that_format_never_free_text(accepts):
    """OpenAI's tools plus response_format (what LangChain's create_agent sends for a structured
    final answer): under `auto` the answer is calls or the format's JSON; `required` and a tool's
    name still force a call; `none` is the format alone."""
    answer_schema = {
        "type": "json_schema",
        "json_schema": {
            "name": "sum",
            "schema": {"type": "object", "properties": {"total": {"type": "integer"}}, "required": ["total"]},
        },
    }
    call, json_answer = '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>', '{"total": 3}'
    auto = answer_constraint([TOOL, OTHER], None, None, answer_schema)
    assert auto.kind == "tools" and auto.answer_format.kind == "json_schema"
    assert [accepts(auto.grammar, text) for text in (call, json_answer, "The total is 3.", '{"sum": 3}')] == [
        True,
        True,
        False,
        False,
    ]
    required = answer_constraint([TOOL, OTHER], "required", None, answer_schema)
    assert [accepts(required.grammar, text) for text in (call, json_answer)] == [True, False]
    none = answer_constraint([TOOL, OTHER], "none", None, answer_schema)
    assert [accepts(none.grammar, text) for text in (call, json_answer)] == [False, True]
    assert auto.instructions().startswith("Unless you call a tool, reply with a single JSON value")
    assert none.instructions() == auto.answer_format.instructions()
    with pytest.raises(GlimpConfigError, match="`response_format` must be a JSON schema, JSON object"):
        AnswerConstraint.for_tools([TOOL], answer_format=AnswerConstraint.for_tools([OTHER]))


def test_objects_are_closed_and_strict_requires_every_property():
    loose = AnswerConstraint.json_schema(TOOL["function"]["parameters"]).grammar
    strict = AnswerConstraint.json_schema(TOOL["function"]["parameters"], strict=True).grammar
    assert '"additionalProperties": false' in loose and '"required": ["a"]' in loose
    assert '"required": ["a", "b"]' in strict
    refs = {"type": "object", "properties": {"x": {"$ref": "#/$defs/X"}}, "$defs": {"X": {"type": "integer"}}}
    grammar = AnswerConstraint.for_tools([{"type": "function", "function": {"name": "f", "parameters": refs}}]).grammar
    arguments = json.loads(grammar.split("%json ", 1)[1].split(' ("}', 1)[0])
    assert arguments["$defs"] == {"X": {"type": "integer"}}  # at the root of the arguments, where `#/$defs` points


def test_think_mode_constrains_only_the_large_models_answer():
    router, backend = scripted_router([step("Reason.\n\n"), step("Done. </think>")], [step('{"a": 1}')], think=True)
    trace = router.run("Add?", response_format={"type": "json_object"})
    assert [(s.model, s.phase) for s in trace.steps] == [
        ("small", "reasoning"),
        ("small", "reasoning"),
        ("large", "answer"),
    ]
    assert [role for role, _ in backend.constrained_writes] == ["large"]
    assert "Reply with a single JSON object" in backend.prompts[0]


def test_plain_mode_with_a_constraint_is_answered_by_the_large_model_alone():
    router, backend = scripted_router([step("Small writes.")], [step('{"a": 1}')])
    trace = router.run("Add?", response_format={"type": "json_object"}, max_tokens=7)
    assert [(s.model, s.phase, s.decision) for s in trace.steps] == [("large", "answer", "forced")]
    assert trace.answer == '{"a": 1}' and backend.steps_taken["small"] == 0
    assert router.run("Add?").steps[0].model == "small"  # unconstrained runs are routed as before
