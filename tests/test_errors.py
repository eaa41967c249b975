"""Bad input gets an error naming the parameter, the value and the fix; the router stays usable."""

import math
import sys
import types
import warnings

import pytest

from glimp_integrations import (
    ContextLengthError,
    GlimpConfigError,
    GlimpInputError,
    GlimpRouter,
    RouterConfig,
    SamplingConfig,
    UntestedVersionWarning,
)
from glimp_integrations.errors import require_module
from glimp_integrations.version import declared_range
from tests.conftest import scripted_router, step


@pytest.mark.parametrize(
    "fields, names",
    [
        ({"threshold": -0.1}, ["`threshold`", "-0.1", "math.inf"]),
        ({"threshold": math.nan}, ["`threshold`", "nan"]),
        ({"policy": "smartest"}, ["`policy`", "'smartest'", "glimpse"]),
        ({"random_rate": 2}, ["`random_rate`", "2"]),
        ({"reasoning_budget": 0}, ["`reasoning_budget`", "0"]),
        ({"reasoning_mode": "deep"}, ["`reasoning_mode`", "'deep'"]),
        ({"probe_ladder": (20, -5)}, ["`probe_ladder`"]),
        ({"step_separator": ""}, ["`step_separator`"]),
        ({"max_repeated_steps": 1}, ["`max_repeated_steps`", "1", "None"]),
    ],
)
def test_invalid_config_names_parameter_value_and_fix(fields, names):
    with pytest.raises(GlimpConfigError) as info:
        RouterConfig(**fields)
    for name in names:
        assert name in str(info.value)


@pytest.mark.parametrize("fields, name", [({"temperature": -1}, "`temperature`"), ({"top_p": 0}, "`top_p`")])
def test_invalid_sampling(fields, name):
    with pytest.raises(GlimpConfigError, match=name):
        SamplingConfig(**fields)


def test_unknown_backend_and_unknown_keyword():
    with pytest.raises(GlimpConfigError, match="`backend`.*'sglang-turbo'"):
        GlimpRouter(backend="sglang-turbo")
    with pytest.raises(
        GlimpConfigError, match=r"`GlimpRouter\(thresold=...\)` is not a setting.*Did you mean `threshold`"
    ):
        GlimpRouter(backend=scripted_router([], [])[1], thresold=0.5)
    router = scripted_router([], [])[0]
    with pytest.raises(GlimpConfigError, match=r"`run\(temprature=...\)`.*Did you mean `temperature`"):
        router.run("Hi?", temprature=0.2)


def test_missing_model_path_is_named():
    with pytest.raises(GlimpConfigError, match="`small`.*/no/such/model"):
        GlimpRouter("/no/such/model", "/no/such/model")
    with pytest.raises(GlimpConfigError, match="`large`"):
        GlimpRouter(small="/tmp")


@pytest.mark.parametrize(
    "prompt, fragment",
    [
        ("", "empty question"),
        ("   ", "empty question"),
        ([], "empty message list"),
        ([{"role": "system", "content": "be brief"}], "no user message"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}],
            "`prompt[0]['content']`.*['image_url']",
        ),
        ([{"role": "user", "content": None}], "`prompt[0]['content']` must be text.*NoneType"),
        ([{"role": "wizard", "content": "hi"}], "`prompt[0]['role']`"),
        (42, "`prompt` must be a question"),
    ],
)
def test_bad_prompts_are_rejected_and_the_router_stays_usable(prompt, fragment):
    router, _ = scripted_router([step("fine")], [])
    with pytest.raises(GlimpInputError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        router.run(prompt)
    assert router.run("a real question").answer == "fine"


def test_openai_message_shapes_are_read_as_text():
    """Text parts are joined by newlines; an assistant message that only calls tools has no content,
    and its call's arguments, JSON text in OpenAI's shape, reach the prompt as an object."""
    router, backend = scripted_router([step("fine")], [])
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    router.run(
        [
            {"role": "user", "content": [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Two."}]},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "done"},
        ]
    )
    assert (
        'user: Part one.\nTwo.\nassistant: <tool_call>{"name": "f", "arguments": {}}</tool_call>\ntool: done'
        in backend.prompts[0]
    )


def test_prompt_longer_than_the_context_window():
    router, _ = scripted_router([step("fine")], [], context_window=10)
    with pytest.raises(ContextLengthError, match="context window is 10 tokens"):
        router.run("word " * 50)
    assert router.run("short").answer == "fine"


def test_a_run_stops_at_the_context_window():
    router, _ = scripted_router([step("a b c d e f g h i j k l m n o p\n\n")] * 5, [], context_window=20)
    trace = router.run("q")
    assert trace.finish_reason == "budget"
    assert trace.prompt_tokens + trace.completion_tokens < 20


def test_an_unknown_backend_option_is_named_before_any_model_loads():
    from glimp_integrations import GlimpConfigError, GlimpRouter

    with pytest.raises(GlimpConfigError, match=r"backend_options of VLLMBackend\(block_size=.*engine_args"):
        GlimpRouter(backend="vllm", backend_options={"block_size": 32})
    with pytest.raises(
        GlimpConfigError, match=r"TransformersBackend\(max_model_len=.*accepted names are: max_batch_size"
    ):
        GlimpRouter(backend="transformers", backend_options={"max_model_len": 32})


def _module(name: str, version: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__version__ = version  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize("installed", ["0.33.0", "0.31.2"])
def test_an_optional_dependency_outside_the_declared_range_warns_once_naming_the_range(monkeypatch, installed):
    """A vLLM installed by hand at a release Glimp was not tested with: one warning naming the range
    pyproject.toml declares (read from the installed metadata) and the install that gives a tested one."""
    monkeypatch.setitem(sys.modules, "vllm", _module("vllm", installed))
    with pytest.warns(UntestedVersionWarning) as caught:
        require_module("vllm", "vllm", "The vLLM backend")
        require_module("vllm", "vllm", "The vLLM backend")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"vllm {installed} is installed" in message and "vllm<0.33,>=0.32" in message
    assert 'pip install "glimp[vllm]"' in message
    assert caught[0].filename == __file__  # points at the caller, not at Glimp's insides


@pytest.mark.parametrize("installed", ["0.32.0", "0.32.4+cpu"])
def test_a_tested_version_imports_without_a_warning(monkeypatch, installed):
    monkeypatch.setitem(sys.modules, "vllm", _module("vllm", installed))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert require_module("vllm", "vllm", "The vLLM backend").__version__ == installed


def test_the_range_is_the_one_declared_for_the_extra_asked_for():
    assert declared_range("torch", "hf") == "<2.14,>=2.4"
    assert declared_range("torch", "openai") is None  # the servers backend runs no model here
    assert declared_range("not-a-dependency", "hf") is None
