"""Each model family's own tool-call format: chosen per model, constrained, and read back by vLLM.

A *tool-call parser* is a family's format, named as vLLM names it (`--tool-call-parser`):
`hermes` (`<tool_call>{...}</tool_call>`: Qwen, SmolLM2, Hermes), `llama3_json` (Llama 3.x's bare
JSON), `deepseek_v3` (DeepSeek-R1 and its distills) and `deepseek_v31`.  Where the caller names
none, `detect_tool_call_parser` reads it from the large model's chat template; Hermes stays the
format of templates that show no other.

- **Constrained** in that format: vLLM's structural-tag registry (xgrammar's family templates, the
  one source of each family's syntax, as `vllm serve` uses them) gives the family's structure,
  which `structural_tag_lark` compiles into llguidance's Lark dialect, the one grammar engine of
  every Glimp backend (the transformers matcher, vLLM's `guidance` structured outputs in process
  and on servers).  Why not hand vLLM the structural tag itself: vLLM V1 runs one
  structured-output backend per engine (`StructuredOutputManager.grammar_init`), its `guidance`
  backend reads only the legacy structural-tag form, and the other answer constraints (and the
  user's own `grammar`) are Lark; one dialect keeps them all on one engine.
- **Read back** by vLLM's parser of the family (`ToolCallReader`), whole and streamed.  Without
  vLLM (the slim `glimp[openai]` install) only `hermes` is available, read by Glimp's own reader.
- **Reasoning**: the family's reasoning parser (`--reasoning-parser`) gives the markers that open
  and close the reasoning (`reasoning_markers`).  Families whose reasoning does not split into
  steps (gpt-oss's harmony channels) are refused, with the reason.

The package: `families` (the registry, detection, reasoning markers, each family's structure),
`lark` (a structure compiled to Lark), `readers` (calls read back, whole and streamed).
"""

from glimp_integrations.tool_formats.families import (
    HERMES,
    REFUSED_FAMILIES,
    THINK_MARKERS,
    TOOL_FAMILIES,
    ToolFamily,
    call_openings,
    check_tool_call_parser,
    detect_tool_call_parser,
    hermes_structure,
    load_vllm_parsers,
    reasoning_markers,
    render_call,
    tool_call_structure,
)
from glimp_integrations.tool_formats.lark import structural_tag_lark, text_lexeme
from glimp_integrations.tool_formats.readers import (
    CallDelta,
    MarkersAsTokens,
    ToolCall,
    ToolCallReader,
    parse_tool_calls,
)

__all__ = [
    "HERMES",
    "REFUSED_FAMILIES",
    "THINK_MARKERS",
    "TOOL_FAMILIES",
    "CallDelta",
    "MarkersAsTokens",
    "ToolCall",
    "ToolCallReader",
    "ToolFamily",
    "call_openings",
    "check_tool_call_parser",
    "detect_tool_call_parser",
    "hermes_structure",
    "load_vllm_parsers",
    "parse_tool_calls",
    "reasoning_markers",
    "render_call",
    "structural_tag_lark",
    "text_lexeme",
    "tool_call_structure",
]
