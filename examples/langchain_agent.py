"""A LangChain agent (`create_agent`) whose model is ChatGlimpRouter, with one tool and a
structured final answer.

Every answer is valid by construction: a well-formed call to the tool, or JSON in the response
format.  The embedded 135M default cannot decide by itself when to call the tool, so on it the
`CallToolThenAnswer` middleware requires a call first and then the answer; a real tool-calling
pair decides by itself:

    python examples/langchain_agent.py
    python examples/langchain_agent.py --small Qwen/Qwen3-4B --large Qwen/Qwen3-32B
"""

import argparse

from langchain.agents import create_agent
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from langchain_glimp import ChatGlimpRouter
from langchain_glimp.agents import CallToolThenAnswer


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return f"It is sunny and 21 C in {location}."


class WeatherReport(BaseModel):
    """The agent's final answer."""

    location: str = Field(max_length=40)
    conditions: str = Field(max_length=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small")
    parser.add_argument("--large")
    parser.add_argument("--max-tokens", type=int, default=160)
    args = parser.parse_args()

    embedded = args.small is None and args.large is None
    # plain mode on the embedded model: its answer follows the tool result directly
    llm = ChatGlimpRouter(
        small=args.small,
        large=args.large,
        seed=0,
        max_tokens=args.max_tokens,
        reasoning_mode="plain" if embedded else None,
    )
    agent = create_agent(
        llm, [get_weather], response_format=WeatherReport, middleware=[CallToolThenAnswer()] if embedded else []
    )
    result = agent.invoke({"messages": [("user", "What is the weather in Paris?")]})
    for message in result["messages"]:
        routing = message.response_metadata.get("glimp") if message.type == "ai" else None
        summary = (
            (f"  [{len(routing['steps'])} steps, intervention rate {routing['intervention_rate']:.0%}]")
            if routing
            else ""
        )
        calls = (
            f" tool_calls={[(c['name'], c['args']) for c in message.tool_calls]}"
            if getattr(message, "tool_calls", None)
            else ""
        )
        print(f"{message.type}: {message.text.strip()[:200]!r}{calls}{summary}")
    print("structured_response:", repr(result["structured_response"]))


if __name__ == "__main__":
    main()
