"""LlamaIndex integration of Glimp: `GlimpRouterLLM` and its `GlimpStepEvent`."""

from llamaindex_glimp.base import GlimpRouterLLM, GlimpStepEvent

__all__ = ["GlimpRouterLLM", "GlimpStepEvent"]
