"""A real `vllm serve` on 127.0.0.1 for the tests that need one."""

import contextlib
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from glimp_integrations.embedded import embedded_model_dir
from glimp_integrations.local_fleet import free_port


@contextlib.contextmanager
def vllm_server(max_logprobs: str, *extra: str, model: str | None = None):
    """`vllm serve` (python -m vllm.entrypoints.openai.api_server) on `model` (a folder; the
    embedded model by default); yields its URL."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model or str(embedded_model_dir()),
        "--served-model-name",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-logprobs",
        max_logprobs,
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",
        "--enforce-eager",
        "--max-model-len",
        "4096",
        "--no-enable-chunked-prefill",
        *extra,
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"vllm server exited: {process.stderr.read()[-3000:]}")
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("vllm server did not start within 300 s")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
