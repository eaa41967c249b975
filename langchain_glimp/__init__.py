"""LangChain integration of Glimp: `ChatGlimpRouter`."""

from langchain_glimp.chat_models import STEP_EVENT, ChatGlimpRouter

__all__ = ["STEP_EVENT", "ChatGlimpRouter"]
