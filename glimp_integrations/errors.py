"""Errors raised by Glimp.  Every message names the parameter, the value received and the fix."""

from __future__ import annotations

from typing import Any


class GlimpError(Exception):
    """Base class of every error Glimp raises on purpose.  `parameter` names the parameter at
    fault, where there is one (`glimp serve` reports it as the OpenAI error's `param`)."""

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class GlimpConfigError(GlimpError, ValueError):
    """A parameter passed by the user is invalid; nothing was started."""


class GlimpInputError(GlimpError, ValueError):
    """The question or messages of a run are invalid; the router stays usable."""


class ContextLengthError(GlimpInputError):
    """The prompt does not fit in a model's context window."""


class MissingDependencyError(GlimpError, ImportError):
    """An optional dependency needed by the chosen backend is not installed."""


class GlimpRunError(GlimpError, RuntimeError):
    """A run failed part-way; `partial_trace` (a `trace.RunTrace`) holds the steps written before
    the failure.  (Typed loosely: errors sit below every other module and import none of them.)"""

    def __init__(self, message: str, partial_trace: Any | None = None) -> None:
        super().__init__(message)
        self.partial_trace = partial_trace


def invalid(parameter: str, value: Any, rule: str, fix: str) -> GlimpConfigError:
    """Build a config error in the house format: parameter, rule, value received, fix."""
    return GlimpConfigError(f"`{parameter}` {rule}; got {value!r}. {fix}", parameter=parameter)


def require_module(module: str, extra: str, purpose: str) -> Any:
    """Import an optional dependency, or raise with the install command for it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{purpose} needs the Python package `{module}`, which is not installed. "
            f'Install it with: pip install "glimp[{extra}]"'
        ) from error


class GlimpTimeoutError(GlimpRunError, TimeoutError):
    """A run went past its `timeout`; `partial_trace` holds the steps written before it."""
