"""Questions the benchmarks ask: multi-paragraph answers, so that runs have several steps."""

QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have? Think step by step.",
    "A train travels 60 km in 1 hour. How far does it go in 3 hours? Explain your steps.",
    "List three facts about the moon, one paragraph each.",
    "Write a short story about a cat in three paragraphs.",
    "Explain how to make tea, step by step, with a blank line between steps.",
    "What are the four seasons? Describe each in a paragraph.",
    "Give three tips for learning to swim, each in its own paragraph.",
    "Explain why the sky is blue in a few short paragraphs.",
]

FRESH_TEMPLATES = [
    "Tom has {a} apples and buys {b} more. How many apples does he have? Think step by step.",
    "A train travels {a} km in 1 hour. How far does it go in {b} hours? Explain your steps.",
    "A shop sells {a} pens a day. How many pens does it sell in {b} days? Explain your steps.",
    "Explain how to share {a} sweets fairly among {b} children, step by step, with a blank line between steps.",
]


def fresh_question(index: int) -> str:
    """Question `index` of an endless set in which none repeats (as in production, where the prefix
    cache holds at most the chat template's opening for a question never asked before)."""
    template = FRESH_TEMPLATES[index % len(FRESH_TEMPLATES)]
    return template.format(a=100 + index, b=2 + index % 9)
