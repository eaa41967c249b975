"""LangChain's own unit suite for chat models."""

from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_glimp import ChatGlimpRouter


class TestChatGlimpRouterUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatGlimpRouter]:
        return ChatGlimpRouter

    @property
    def chat_model_params(self) -> dict:
        return {"threshold": 0.9, "seed": 0}  # the embedded default; nothing loads until first use
