"""Glimp as a user installs it: the wheel built from this tree, in a fresh environment of its own."""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from glimp_integrations.local_fleet import free_port
from scripts.matrix import Profile, build, find_python, install

SERVERS_ONLY = Profile("openai,serve", tests="")
"""The servers backend and glimp serve, no torch: what deploy/Dockerfile installs."""


def installed_wheel(folder: Path) -> Path:
    """Build the wheel into `folder` and install it with `SERVERS_ONLY` into a fresh environment
    there, on this interpreter's Python version; the environment's bin folder."""
    wheel = build(folder / "dist")
    env = folder / "env"
    install(env, find_python(f"{sys.version_info.major}.{sys.version_info.minor}"), wheel, SERVERS_ONLY)
    return env / "bin"


def outside_the_tree(bin_folder: Path, *command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run an installed program from the environment's folder, where the source tree is not importable."""
    return subprocess.run(
        [str(bin_folder / command[0]), *command[1:]],
        cwd=bin_folder,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "NO_COLOR": "1"},
    )


@contextlib.contextmanager
def installed_glimp_serve(bin_folder: Path, *arguments: str):
    """`glimp serve` from the installed environment; yields its root URL once /readyz answers 200."""
    port = free_port()
    process = subprocess.Popen(
        [str(bin_folder / "glimp"), "serve", *arguments, "--port", str(port)],
        cwd=bin_folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"the installed glimp serve exited: {process.stderr.read()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    yield url
                    return
            time.sleep(0.5)
        raise AssertionError("the installed glimp serve was not ready within 120 s")
    finally:
        process.terminate()
        process.wait(timeout=30)
