"""Glimp's version, read once from the installed package's metadata (pyproject.toml writes it), and
the check that an optional dependency is installed at a version in the range Glimp was tested with
(the bounds pyproject.toml declares, read from the same metadata)."""

from __future__ import annotations

import functools
import importlib.metadata
import warnings
from types import ModuleType

try:
    __version__ = importlib.metadata.version("glimp")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


class UntestedVersionWarning(UserWarning):
    """An optional dependency is installed at a version outside the range this release of Glimp
    declares (and was tested with)."""


def declared_range(package: str, extra: str) -> str | None:
    """The version range Glimp's metadata declares for `package` under `extra` (e.g. ">=0.32,<0.33"
    for vllm under "vllm"), or None where it declares none or Glimp is not installed."""
    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
    except ImportError:  # packaging comes with every optional dependency checked here; without it, no check
        return None
    try:
        declared = importlib.metadata.requires("glimp") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for line in declared:
        requirement = Requirement(line)
        in_extra = requirement.marker is None or requirement.marker.evaluate({"extra": extra})
        if canonicalize_name(requirement.name) == canonicalize_name(package) and in_extra and requirement.specifier:
            return str(requirement.specifier)
    return None


@functools.cache
def warn_if_untested(module: ModuleType, extra: str) -> None:
    """Warn once per module when its installed version is outside the range Glimp declares for it
    under `extra` (a vLLM installed by hand, say), naming the range and the install that gives one."""
    package = module.__name__.split(".")[0]
    declared = declared_range(package, extra)
    installed = getattr(module, "__version__", None)
    if declared is None or not isinstance(installed, str):
        return
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion

    try:
        inside = SpecifierSet(declared).contains(installed, prereleases=True)
    except InvalidVersion:
        return
    if not inside:
        warnings.warn(
            f"{package} {installed} is installed, but Glimp {__version__} is tested with {package}{declared}: "
            f"Glimp uses parts of {package} that change between releases, so it may fail in ways that name "
            f'{package}\'s code rather than yours. Install a tested version with: pip install "glimp[{extra}]"',
            UntestedVersionWarning,
            stacklevel=3,
        )
