"""LangChain's own unit suite for chat models."""

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_glimp import ChatGlimpRouter


class TestChatGlimpRouterUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatGlimpRouter]:
        return ChatGlimpRouter

    @property
    def chat_model_params(self) -> dict:
        return {"threshold": 0.9, "seed": 0}  # the embedded default; nothing loads until first use

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return {"GLIMP_API_KEY": "test-key"}, {"backend": "openai"}, {"api_key": "test-key"}

    @pytest.mark.xfail(
        strict=True,
        reason=(
            "langchain-core 1.8's load(allowed_objects='all') admits only the classes in its own serialization "
            "mapping, so no third-party chat model passes this test; the round trip with allowed_objects="
            "[ChatGlimpRouter] is tested in tests/langchain/test_settings.py"
        ),
    )
    def test_serdes(self, *args, **kwargs) -> None:
        super().test_serdes(*args, **kwargs)
