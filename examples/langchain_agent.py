"""A LangGraph ReAct agent whose model is ChatGlimpRouter, with one tool.

The embedded 135M default shows the plumbing (it rarely decides to call the tool); name a real
tool-calling pair to see the agent use it:

    python examples/langchain_agent.py
    python examples/langchain_agent.py --small Qwen/Qwen3-4B --large Qwen/Qwen3-32B
"""

import argparse
import warnings

from langchain_core.messages import HumanMessage
from langchain_core.tools import tool

from langchain_glimp import ChatGlimpRouter


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small")
    parser.add_argument("--large")
    parser.add_argument("--max-tokens", type=int, default=60)
    args = parser.parse_args()

    from langgraph.prebuilt import create_react_agent

    llm = ChatGlimpRouter(small=args.small, large=args.large, seed=0, max_tokens=args.max_tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LangGraph 1.x notes create_react_agent's move to `langchain.agents`
        agent = create_react_agent(llm, [multiply])
    result = agent.invoke({"messages": [HumanMessage("What is 6 times 7? Use the multiply tool.")]})
    for message in result["messages"]:
        routing = message.response_metadata.get("glimp") if message.type == "ai" else None
        summary = (f"  [{len(routing['steps'])} steps, "
                   f"intervention rate {routing['intervention_rate']:.0%}]") if routing else ""
        calls = f" tool_calls={[(c['name'], c['args']) for c in message.tool_calls]}" if getattr(
            message, "tool_calls", None) else ""
        print(f"{message.type}: {message.text.strip()[:200]!r}{calls}{summary}")


if __name__ == "__main__":
    main()
