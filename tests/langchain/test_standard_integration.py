"""LangChain's own integration suite, on the scripted pair and on the real embedded model."""

import pytest
from langchain_core.messages import AIMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_glimp import ChatGlimpRouter
from tests.scripted_pairs import scripted_pair


class TestScriptedPair(ChatModelIntegrationTests):
    """Exact plumbing: reasoning blocks, tools, structured output, usage, streaming."""

    @property
    def supports_model_override(self) -> bool:
        return False  # a call cannot swap the model pair (it raises); see test_chat_glimp_router.py

    @property
    def chat_model_class(self) -> type[ChatGlimpRouter]:
        return ChatGlimpRouter

    @property
    def chat_model_params(self) -> dict:
        return {"backend": scripted_pair()}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict:
        return {"invoke": ["reasoning_output"], "stream": ["reasoning_output"]}

    def invoke_with_reasoning_output(self, *, stream: bool = False) -> AIMessage:
        llm = ChatGlimpRouter(backend=scripted_pair())
        if not stream:
            return llm.invoke("Think, then answer.")
        full = None
        for chunk in llm.stream("Think, then answer."):
            full = chunk if full is None else full + chunk
        return full


SMALL_MODEL = "SmolLM2-135M cannot follow this instruction reliably"


@pytest.mark.embedded
class TestEmbeddedModel(ChatModelIntegrationTests):
    """The real embedded model; what a 135M model cannot do is marked xfail."""

    @property
    def chat_model_class(self) -> type[ChatGlimpRouter]:
        return ChatGlimpRouter

    @property
    def chat_model_params(self) -> dict:
        return {"seed": 0, "max_tokens": 24}

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return True

    @pytest.mark.xfail(reason=SMALL_MODEL + " (emit a <tool_call> with exact arguments)")
    def test_tool_calling(self, model) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason=SMALL_MODEL + " (emit a <tool_call> with exact arguments)")
    async def test_tool_calling_async(self, model) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(reason=SMALL_MODEL + " (emit a <tool_call>)")
    def test_tool_calling_with_no_arguments(self, model) -> None:
        super().test_tool_calling_with_no_arguments(model)

    @pytest.mark.xfail(reason=SMALL_MODEL + " (emit a <tool_call>)")
    def test_tool_choice(self, model) -> None:
        super().test_tool_choice(model)

    @pytest.mark.xfail(reason=SMALL_MODEL + " (emit a <tool_call>)")
    def test_bind_runnables_as_tools(self, model) -> None:
        super().test_bind_runnables_as_tools(model)

    @pytest.mark.xfail(reason=SMALL_MODEL + " (emit a <tool_call>)")
    def test_agent_loop(self, model) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason=SMALL_MODEL + " (emit a <tool_call>)")
    def test_unicode_tool_call_integration(self, *args, **kwargs) -> None:
        super().test_unicode_tool_call_integration(*args, **kwargs)

    @pytest.mark.xfail(reason=SMALL_MODEL + " (structured output through a tool call)")
    def test_structured_few_shot_examples(self, *args, **kwargs) -> None:
        super().test_structured_few_shot_examples(*args, **kwargs)

    @pytest.mark.xfail(reason=SMALL_MODEL + " (structured output through a tool call)")
    def test_structured_output(self, *args, **kwargs) -> None:
        super().test_structured_output(*args, **kwargs)

    @pytest.mark.xfail(reason=SMALL_MODEL + " (structured output through a tool call)")
    async def test_structured_output_async(self, *args, **kwargs) -> None:
        await super().test_structured_output_async(*args, **kwargs)

    @pytest.mark.xfail(reason=SMALL_MODEL + " (structured output through a tool call)")
    def test_structured_output_pydantic_2_v1(self, *args, **kwargs) -> None:
        super().test_structured_output_pydantic_2_v1(*args, **kwargs)

    @pytest.mark.xfail(reason=SMALL_MODEL + " (structured output through a tool call)")
    def test_structured_output_optional_param(self, *args, **kwargs) -> None:
        super().test_structured_output_optional_param(*args, **kwargs)
