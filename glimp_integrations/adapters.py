"""What the framework adapters (`langchain_glimp`, `llamaindex_glimp`) share: their settings as
`GlimpRouter` arguments, the engine they build, what each call overrides, and the checks at
construction.  Each adapter keeps only the translation to its framework."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from glimp_integrations.backends.loading import check_backend_settings
from glimp_integrations.config import CONFIG_FIELDS, RouterConfig, check_setting_names
from glimp_integrations.errors import GlimpConfigError, GlimpInputError
from glimp_integrations.router import GlimpRouter
from glimp_integrations.settings import SETTINGS, adapter_settings

ROUTER_SETTINGS: tuple[str, ...] = tuple(setting.name for setting in adapter_settings())
"""The `GlimpRouter` arguments that framework adapters expose as fields of the same names."""


def router_settings(source: Any) -> dict[str, Any]:
    """The `ROUTER_SETTINGS` attributes of a framework adapter, as `GlimpRouter` arguments; None
    means "the engine's default" and is left out (the embedded pair has defaults of its own)."""
    return {name: value for name in ROUTER_SETTINGS if (value := getattr(source, name)) is not None}


CALL_OVERRIDES: tuple[str, ...] = tuple(setting.name for setting in SETTINGS if setting.per_call)
"""`RouterConfig` fields that framework adapters accept per call, under the same names."""


def adapter_router(adapter: Any, api_key: str | None = None) -> GlimpRouter:
    """The engine of an adapter: its settings, and with backend="openai" its retries, its
    request timeout and the servers' API key as the backend's options (unless given there)."""
    settings = router_settings(adapter)
    if adapter.backend == "openai":
        options = {"max_retries": adapter.max_retries, **adapter.backend_options}
        if adapter.timeout is not None:
            options.setdefault("timeout", adapter.timeout)
        if api_key is not None:
            options.setdefault("api_key", api_key)
        settings["backend_options"] = options
    return GlimpRouter(adapter.small, adapter.large, **settings)


def call_overrides(adapter: Any, kwargs: dict[str, Any], stop: Collection[str] | None) -> dict[str, Any]:
    """What one call changes, as `GlimpRouter.astream` arguments: the per-call settings taken out of
    `kwargs`, the stop sequences, `max_tokens` (the call's, else the adapter's), and on a local
    backend the adapter's `timeout` as the limit of the whole call (with backend="openai" it is
    each request's, given to the backend instead)."""
    overrides = {name: kwargs.pop(name) for name in CALL_OVERRIDES if name in kwargs}
    if stop:
        overrides["stop"] = tuple(stop)
    if adapter.timeout is not None and adapter.backend != "openai":
        overrides["timeout"] = adapter.timeout
    max_tokens = kwargs.pop("max_tokens", adapter.max_tokens)
    if max_tokens is not None:
        overrides["max_tokens"] = max_tokens
    return overrides


def unsupported_call_arguments(
    owner: str, given: Collection[str], framework_arguments: Sequence[str]
) -> GlimpInputError:
    """The error for call arguments an adapter does not take, listing what it does: its framework's
    own (`framework_arguments`: tools, ...), then `stop`, `max_tokens` and `CALL_OVERRIDES`."""
    accepted = [*framework_arguments, "stop", "max_tokens", *CALL_OVERRIDES]
    return GlimpInputError(
        f"`{owner}` got unsupported call arguments {sorted(given)}. "
        f"Pass only {', '.join(accepted[:-1])} or {accepted[-1]}."
    )


def check_adapter_settings(owner: str, given: Mapping[str, Any], accepted: Collection[str]) -> None:
    """What a framework adapter checks before building its fields: `model=` (a pair has two) is
    refused with the fix, and every other name must be one of `accepted`."""
    if "model" in given or "model_name" in given:
        raise GlimpConfigError(
            f"`{owner}(model=...)` got {given.get('model', given.get('model_name'))!r}, but {owner} runs a pair of "
            "models. Pass small=... and large=... (HF ids or local folders; with backend='openai' the servers' "
            "URLs), or neither for the embedded default."
        )
    check_setting_names(owner, given, accepted)


def check_router_settings(settings: Mapping[str, Any]) -> None:
    """Validate `GlimpRouter` arguments (by their `ROUTER_SETTINGS` names) without loading any model,
    so that framework adapters reject a bad value at construction."""
    RouterConfig().with_overrides(**{k: v for k, v in settings.items() if k in CONFIG_FIELDS})
    check_backend_settings(
        settings.get("backend", "transformers"), settings.get("speculative", False), settings.get("backend_options")
    )
