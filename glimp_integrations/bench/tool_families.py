"""Test models of each tool-call family, without their weights: the embedded SmolLM2 with the
families' tokens added (its embeddings resized to them) and a chat template written here per family,
in the family's own way of showing tools and calls.  The weights are written once and shared by the
families' folders, which differ only in their tokenizer's chat template."""

from __future__ import annotations

import os
from pathlib import Path

FAMILY_TOKENS = [
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁sep｜>",
    "<think>",
    "</think>",
]
"""DeepSeek's tool-call tokens (not special in its tokenizers) and the reasoning markers its
reasoning parser looks up."""
SPECIAL_TOKENS = ["<|python_tag|>"]
"""Llama 3's tool-call token, special in its tokenizer; its parser refuses a tokenizer without it."""

_CHATML_MESSAGES = """{%- for m in messages %}<|im_start|>{{ m.role }}
{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>
{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}
</tool_call>{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

TEMPLATES = {
    "hermes": """{%- if tools %}<|im_start|>system
You may call functions. <tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>
For each call reply <tool_call>{"name": <name>, "arguments": <args>}</tool_call><|im_end|>
{% endif %}"""
    + _CHATML_MESSAGES,
    "deepseek_v3": """{%- if tools %}## Tools
{% for t in tools %}{{ t | tojson }}
{% endfor %}{% endif %}{% for m in messages %}{% if m.role == 'user' %}<｜User｜>{{ m.content }}
{%- elif m.role == 'assistant' %}<｜Assistant｜>{% if m.tool_calls %}<｜tool▁calls▁begin｜>
{%- for c in m.tool_calls %}<｜tool▁call▁begin｜>function<｜tool▁sep｜>{{ c.function.name }}
```json
{{ c.function.arguments | tojson }}
```<｜tool▁call▁end｜>{% endfor %}<｜tool▁calls▁end｜>{% else %}{{ m.content }}{% endif %}<｜end▁of▁sentence｜>
{%- elif m.role == 'tool' %}<｜tool▁output▁begin｜>{{ m.content }}<｜tool▁output▁end｜>
{%- else %}{{ m.content }}{% endif %}{% endfor %}{% if add_generation_prompt %}<｜Assistant｜>{% endif %}""",
    "deepseek_v31": """{%- if tools %}## Tools
{% for t in tools %}{{ t | tojson }}
{% endfor %}{% endif %}{% for m in messages %}{% if m.role == 'user' %}<｜User｜>{{ m.content }}
{%- elif m.role == 'assistant' %}<｜Assistant｜>{% if m.tool_calls %}<｜tool▁calls▁begin｜>
{%- for c in m.tool_calls %}<｜tool▁call▁begin｜>{{ c.function.name }}<｜tool▁sep｜>{{ c.function.arguments | tojson }}
{%- endfor %}<｜tool▁call▁end｜><｜tool▁calls▁end｜>{% else %}{{ m.content }}{% endif %}<｜end▁of▁sentence｜>
{%- else %}{{ m.content }}{% endif %}{% endfor %}{% if add_generation_prompt %}<｜Assistant｜>{% endif %}""",
    "llama3_json": """<|begin_of_text|>{% if tools %}<|start_header_id|>system<|end_header_id|>

Environment: ipython
Respond with a JSON function call {"name": function name, "parameters": arguments}.
{% for t in tools %}{{ t | tojson }}
{% endfor %}<|eot_id|>{% endif %}{% for m in messages %}<|start_header_id|>{{ 'ipython' if m.role == 'tool' else m.role }}<|end_header_id|>

{% if m.tool_calls %}{% for c in m.tool_calls %}{% if builtin_tools is defined %}<|python_tag|>{% endif %}
{{- '{"name": "' + c.function.name + '", "parameters": ' + (c.function.arguments | tojson) + '}' }}
{%- endfor %}{% else %}{{ m.content }}{% endif %}<|eot_id|>{% endfor %}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}""",
}
"""Each family's chat template, as the family writes tools and calls (trimmed to what tests use)."""

OPENINGS = {
    "hermes": "<tool_call>",
    "deepseek_v3": "<｜tool▁calls▁begin｜>",
    "deepseek_v31": "<｜tool▁calls▁begin｜>",
    "llama3_json": '{"name": ',
}
"""The text each family's calls start with."""


def write_family_models(root: Path) -> dict[str, str]:
    """A model folder per family under `root` (weights shared through links); returns them by family."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glimp_integrations.embedded import embedded_model_dir

    source = embedded_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.add_tokens(FAMILY_TOKENS)
    tokenizer.add_tokens(SPECIAL_TOKENS, special_tokens=True)
    weights = root / "weights"
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(weights)
    folders = {}
    for family, template in TEMPLATES.items():
        folder = root / family
        folder.mkdir()
        for item in weights.iterdir():
            os.symlink(item, folder / item.name)
        tokenizer.chat_template = template
        tokenizer.save_pretrained(folder)
        folders[family] = str(folder)
    return folders
