"""Glimp's version, read once from the installed package's metadata (pyproject.toml writes it)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("glimp")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
