"""An LCEL chain on ChatGlimpRouter, printing each step's routing as it happens.

python examples/langchain_chain.py                       # embedded default (CPU, offline)
python examples/langchain_chain.py --small Qwen/Qwen3-4B --large deepseek-ai/DeepSeek-R1-Distill-Qwen-32B
"""

import argparse
import asyncio

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_glimp import STEP_EVENT, ChatGlimpRouter


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small")
    parser.add_argument("--large")
    parser.add_argument("--max-tokens", type=int, default=60)
    args = parser.parse_args()

    llm = ChatGlimpRouter(
        small=args.small, large=args.large, seed=0, max_tokens=args.max_tokens, reasoning_budget=4 * args.max_tokens
    )
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You are a careful tutor. Answer in short paragraphs."),
            ("user", "{question}"),
        ]
    )
    chain = prompt | llm | StrOutputParser()

    answer = ""
    async for event in chain.astream_events({"question": "Tom has 3 apples and buys 4 more. How many?"}, version="v2"):
        if event["event"] == "on_custom_event" and event["name"] == STEP_EVENT:
            step = event["data"]
            h_init = "-" if step["h_init"] is None else f"{step['h_init']:.3f}"
            print(
                f"step {step['index']}: {step['model']:5} H_init={h_init} tokens={step['tokens']} "
                f"{step['seconds']:.2f}s"
            )
        elif event["event"] == "on_chat_model_stream":
            answer += event["data"]["chunk"].text  # the answer's text (reasoning blocks excluded)
    print("answer:", answer.strip())


if __name__ == "__main__":
    asyncio.run(main())
