"""A LlamaIndex query engine over a few documents, answered by GlimpRouterLLM.

The index is in memory and the embedding runs offline (a hashing bag-of-words stand-in; use
any LlamaIndex embedding model in practice).  Each step's routing is printed by an
instrumentation event handler as it happens.

    python examples/llamaindex_query_engine.py
    python examples/llamaindex_query_engine.py --small Qwen/Qwen3-4B --large deepseek-ai/DeepSeek-R1-Distill-Qwen-32B
"""

import argparse
import hashlib
import math
import re
from typing import Any

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler

from llamaindex_glimp import GlimpRouterLLM, GlimpStepEvent

DOCUMENTS = [
    "The Glimp bakery opens at 7 am and closes at 6 pm. It sells sourdough bread and croissants.",
    "The town library lends books for three weeks. Late returns cost 20 cents per day.",
    "The swimming pool is heated to 27 degrees and is closed on Mondays for cleaning.",
]


class HashingEmbedding(BaseEmbedding):
    """Offline embedding: words hashed into a fixed number of buckets, L2-normalised."""

    dimensions: int = 256

    def _embed(self, text: str) -> list[float]:
        vector = [0.0] * self.dimensions
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dimensions] += 1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._embed(query)


class PrintSteps(BaseEventHandler):
    @classmethod
    def class_name(cls) -> str:
        return "PrintSteps"

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, GlimpStepEvent):
            step = event.routing
            h_init = "-" if step["h_init"] is None else f"{step['h_init']:.3f}"
            print(f"step {step['index']}: {step['model']:5} H_init={h_init} tokens={step['tokens']}")


def build_query_engine(llm: GlimpRouterLLM):
    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCUMENTS], embed_model=HashingEmbedding())
    return index.as_query_engine(llm=llm, similarity_top_k=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small")
    parser.add_argument("--large")
    parser.add_argument("--max-tokens", type=int, default=60)
    args = parser.parse_args()

    get_dispatcher().add_event_handler(PrintSteps())
    llm = GlimpRouterLLM(small=args.small, large=args.large, seed=0, max_tokens=args.max_tokens)
    response = build_query_engine(llm).query("When does the bakery open?")
    print("source:", response.source_nodes[0].node.get_content())
    print("answer:", str(response).strip())


if __name__ == "__main__":
    main()
