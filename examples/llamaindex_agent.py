"""A LlamaIndex FunctionAgent whose LLM is GlimpRouterLLM, with one tool, streaming its events.

The embedded 135M default shows the plumbing (it rarely decides to call the tool); name a real
tool-calling pair to see the agent use it:

    python examples/llamaindex_agent.py
    python examples/llamaindex_agent.py --small Qwen/Qwen3-4B --large Qwen/Qwen3-32B
"""

import argparse
import asyncio

from llama_index.core.agent.workflow import AgentStream, FunctionAgent, ToolCallResult

from llamaindex_glimp import GlimpRouterLLM


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small")
    parser.add_argument("--large")
    parser.add_argument("--max-tokens", type=int, default=60)
    args = parser.parse_args()

    llm = GlimpRouterLLM(small=args.small, large=args.large, seed=0, max_tokens=args.max_tokens)
    agent = FunctionAgent(tools=[multiply], llm=llm, system_prompt="Use the tools to answer.")
    handler = agent.run("What is 6 times 7?")
    thinking = answer = ""
    async for event in handler.stream_events():
        if isinstance(event, AgentStream):
            thinking += event.thinking_delta or ""
            answer += event.delta
        elif isinstance(event, ToolCallResult):
            print(f"tool {event.tool_name}({event.tool_kwargs}) -> {event.tool_output.content}")
    result = await handler
    print("thinking:", thinking.strip()[:200])
    print("answer:", str(result).strip()[:200])


if __name__ == "__main__":
    asyncio.run(main())
