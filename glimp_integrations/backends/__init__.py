"""Backends: where the two models run.  `base` (the `Backend` and `ModelSession` interface and
the pieces every backend shares), `loading` (a backend from `GlimpRouter`'s settings), then one
backend per concern pair: `transformers` (+ `batching`, the model worker), `vllm` (+ `vllm_engine`,
`speculative`, `vllm_gate`, `gate_arguments`, `step_spans`), `openai` (+ `openai_server`), and
`scripted` (written-out steps, for tests and examples)."""
