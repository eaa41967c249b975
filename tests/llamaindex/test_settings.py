"""GlimpRouterLLM's settings: none silently ignored, all validated at construction; metadata loads nothing."""

import pytest

from llamaindex_glimp import GlimpRouterLLM


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"temprature": 0.2}, r"`GlimpRouterLLM\(temprature=...\)` is not a setting.*Did you mean `temperature`"),
        ({"reasoning_effort": "high"}, r"`GlimpRouterLLM\(reasoning_effort=...\)` is not a setting"),
        ({"model": "Qwen/Qwen3-4B"}, r"runs a pair of models. Pass small=... and large=..."),
        ({"threshold": -1}, r"`threshold` must be a number >= 0"),
        ({"reasoning_budget": 0}, r"`reasoning_budget` must be a positive int"),
        ({"backend": "sglang"}, r"`backend` must be one of transformers, vllm, openai"),
    ],
)
def test_bad_settings_fail_at_construction(settings, fragment):
    with pytest.raises(ValueError, match=fragment):
        GlimpRouterLLM(**settings)


def test_metadata_describes_the_pair_without_loading_it():
    llm = GlimpRouterLLM()
    metadata = llm.metadata
    assert metadata.model_name == "SmolLM2-135M-Instruct+SmolLM2-135M-Instruct"
    assert metadata.context_window == 8192 and metadata.is_function_calling_model
    assert llm._engine is None
    named = GlimpRouterLLM(small="org/small", large="org/large").metadata
    assert named.model_name == "org/small+org/large"
