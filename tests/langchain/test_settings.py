"""ChatGlimpRouter's settings: none silently ignored, all validated at construction, all in the
cache key; serialization and the model profile."""

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.load import dumps, loads

from langchain_glimp import ChatGlimpRouter
from langchain_glimp.chat_models import _NOT_IN_OUTPUT
from tests.scripted_pairs import scripted_pair


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"temprature": 0.2}, r"`ChatGlimpRouter\(temprature=...\)` is not a setting.*Did you mean `temperature`"),
        ({"reasoning_effort": "high"}, r"`ChatGlimpRouter\(reasoning_effort=...\)` is not a setting"),
        ({"model": "Qwen/Qwen3-4B"}, r"runs a pair of models. Pass small=... and large=..."),
        ({"threshold": -1}, r"`threshold` must be a number >= 0"),
        ({"policy": "coin"}, r"policy\n  Input should be 'glimpse'"),
        ({"backend": "sglang"}, r"`backend` must be one of transformers, vllm, openai"),
        ({"speculative": "yes"}, r"speculative.bool\n  Input should be a valid boolean"),
        ({"max_tokens": 0}, r"max_tokens"),
    ],
)
def test_bad_settings_fail_at_construction_without_loading_a_model(settings, fragment):
    with pytest.raises(ValueError, match=fragment):
        ChatGlimpRouter(**settings)


CHANGED = {
    "small": "a",
    "large": "b",
    "device": "cpu",
    "speculative": True,
    "backend_options": {"max_model_len": 99},
    "threshold": 1.5,
    "policy": "random",
    "random_rate": 0.5,
    "temperature": 0.1,
    "top_p": 0.5,
    "seed": 7,
    "reasoning_mode": "think",
    "reasoning_budget": 99,
    "max_tokens": 9,
    "stop": ["X"],
    "output_version": "v1",
    "tool_call_parser": "llama3_json",
    "reasoning_parser": "deepseek_r1",
    "answer_budget": 99,
    "max_step_tokens": 9,
    "max_repeated_steps": 5,
    "step_separator": "\n",
    "span_steps": False,
    "probe_ladder": (20, None),
    "small_model_failure": "fail",
}
"""A value other than the default for every field that changes the answer (each engine setting
among them: `tests/test_settings.py` checks the adapter has them all)."""


def test_every_setting_that_changes_the_output_is_in_the_cache_key():
    output_fields = set(ChatGlimpRouter.model_fields) - _NOT_IN_OUTPUT
    assert output_fields == set(CHANGED), "a new setting must be listed here and be part of the cache key"
    backend, cache = scripted_pair(), InMemoryCache()
    base = ChatGlimpRouter(backend=backend, cache=cache, seed=0)
    first = base.invoke("Hello?")
    assert base.invoke("Hello?") is not None and backend.steps_taken["large"] == 1  # served from the cache
    for name, value in CHANGED.items():
        other = ChatGlimpRouter(**{"backend": backend, "cache": cache, "seed": 0, name: value})
        assert other._get_llm_string() != base._get_llm_string(), name
    assert first.text


def test_dumps_loads_round_trip_keeps_the_settings_and_the_key_secret():
    llm = ChatGlimpRouter(
        small="http://a:8001/v1",
        large="http://b:8000/v1",
        backend="openai",
        threshold=1.2,
        seed=3,
        api_key="sk-secret",
        stop=["Observation:"],
    )
    text = dumps(llm)
    assert "sk-secret" not in text
    again = loads(
        text,
        valid_namespaces=["langchain_glimp"],
        allowed_objects=[ChatGlimpRouter],
        secrets_map={"GLIMP_API_KEY": "sk-secret"},
    )
    assert isinstance(again, ChatGlimpRouter) and again._identifying_params == llm._identifying_params
    assert again.api_key.get_secret_value() == "sk-secret"


def test_the_profile_says_what_the_model_supports():
    profile = ChatGlimpRouter().profile
    assert profile["tool_calling"] and profile["structured_output"] and profile["reasoning_output"]
    assert profile["image_inputs"] is False
