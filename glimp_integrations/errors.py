"""Errors raised by Glimp.  Every message names the parameter, the value received and the fix."""

from __future__ import annotations

from typing import Any, Literal

RunFailure = Literal["upstream", "input", "internal"]
"""What ended a run early (`GlimpRunError.failure`): a model, or the server running it, failed or
stayed unreachable (`upstream`); a model server refused the run's request as invalid (`input`: a
context longer than it takes, say); anything else (`internal`)."""


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
    the failure, `failure` says what failed (`RunFailure`: a service answers 502, 400 or 500 by
    it).  (Typed loosely: errors sit below every other module and import none of them.)"""

    def __init__(self, message: str, partial_trace: Any | None = None, failure: RunFailure = "internal") -> None:
        super().__init__(message)
        self.partial_trace = partial_trace
        self.failure: RunFailure = failure


class UpstreamError(RuntimeError):
    """A model, or the server running it, failed or refused a request.  Backends raise it (or a
    subclass) for what is not Glimp's doing; the router turns it into a `GlimpRunError` whose
    `failure` is this error's (`upstream`, or `input` when the server refused the request as
    invalid)."""

    def __init__(self, message: str, failure: RunFailure = "upstream") -> None:
        super().__init__(message)
        self.failure: RunFailure = failure


def invalid(parameter: str, value: Any, rule: str, fix: str) -> GlimpConfigError:
    """Build a config error in the house format: parameter, rule, value received, fix."""
    return GlimpConfigError(f"`{parameter}` {rule}; got {value!r}. {fix}", parameter=parameter)


def require_module(module: str, extra: str, purpose: str) -> Any:
    """Import an optional dependency, or raise with the install command for it; warn (once) when it
    is installed at a version outside the range Glimp declares for it."""
    import importlib

    from glimp_integrations.version import warn_if_untested  # below errors too: it imports no Glimp module

    try:
        imported = importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{purpose} needs the Python package `{module}`, which is not installed. "
            f'Install it with: pip install "glimp[{extra}]"'
        ) from error
    warn_if_untested(imported, extra)
    return imported


class GlimpTimeoutError(GlimpRunError, TimeoutError):
    """A run went past its `timeout`; `partial_trace` holds the steps written before it."""
