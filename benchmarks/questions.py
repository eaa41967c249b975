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
