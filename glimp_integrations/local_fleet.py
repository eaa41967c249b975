"""A vLLM fleet on this machine: `vllm serve` replicas of each role behind the vLLM project's router.

The topology of the docs' scale-out section (docs/serving.md) (and of `deploy/`), started on 127.0.0.1 for the
tests, the benchmarks, and for trying the fleet path before a cluster.  Each role's replicas sit
behind one `vllm-router` (`pip install vllm-router`), which hashes the `X-Session-Id` header Glimp
sends (`consistent_hash`, the default) so a conversation's requests reach the replica that holds
its prefix cache; a role with one replica and no router is served directly.  The small model's
replicas load the entropy gate (`--logits-processors`), so a delegated step is one request.

    with LocalFleet(model) as fleet:
        router = GlimpRouter(fleet.url("small"), fleet.url("large"), backend="openai")

Replicas can be killed (`kill`, SIGKILL to the whole server) and started again (`start`) to see
what a dying replica costs.  On a CPU each replica takes `VLLM_CPU_KVCACHE_SPACE` GiB of KV cache
(1 by default here) and about 4 GB in all.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from glimp_integrations.backends.gate_arguments import GATE_PROCESSOR
from glimp_integrations.backends.vllm import CPU_BLOCK_SIZE
from glimp_integrations.config import Role
from glimp_integrations.errors import require_module

SERVED_NAME = {"small": "glimp-small", "large": "glimp-large"}
"""The model id each role's replicas serve (`--served-model-name`)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Replica:
    """One `vllm serve` process (with its engine's processes, in a session of their own)."""

    role: Role
    model: str
    port: int
    extra_args: Sequence[str] = ()
    log: Path | None = None
    cpus: str | None = None
    """On vllm-cpu, the cores this replica computes on (`VLLM_CPU_OMP_THREADS_BIND`, e.g. "1" or
    "0-3"), and it runs with `CPU_BLOCK_SIZE` KV blocks; None: a GPU, vLLM's own choices."""
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model,
            "--served-model-name",
            SERVED_NAME[self.role],
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-logprobs",
            "-1",
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",
            "--enforce-eager",
            "--max-model-len",
            "4096",
            *self.extra_args,
        ]
        if self.role == "small":
            command += ["--logits-processors", GATE_PROCESSOR]
        if self.cpus is not None:  # vllm-cpu, started as the in-process backend starts it (see backends.vllm)
            command += ["--block-size", str(CPU_BLOCK_SIZE), "--no-enable-chunked-prefill"]
        output = open(self.log, "ab") if self.log else subprocess.DEVNULL
        env = {"VLLM_CPU_KVCACHE_SPACE": "1", **os.environ}
        if self.cpus is not None:
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", self.cpus)
        self.process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def kill(self) -> None:
        """SIGKILL the server and its engine: what an out-of-memory kill or a lost node does."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, number: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, number)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@dataclass
class Router:
    """One `vllm-router` in front of a role's replicas."""

    role: Role
    port: int
    workers: Sequence[str]
    policy: str
    log: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        require_module("vllm_router", "test", "A local vLLM fleet (pip install vllm-router)")
        binary = Path(sys.executable).with_name("vllm-router")
        command = [
            str(binary),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--policy",
            self.policy,
            "--worker-urls",
            *self.workers,
            "--prometheus-port",
            str(free_port()),
            # fail over fast: a dead replica is retried elsewhere and then left alone
            "--retry-max-retries",
            "3",
            "--retry-initial-backoff-ms",
            "50",
            "--retry-max-backoff-ms",
            "500",
            "--cb-failure-threshold",
            "2",
            "--health-check-interval-secs",
            "2",
            "--health-failure-threshold",
            "1",
            "--worker-startup-timeout-secs",
            "600",
            "--log-level",
            "warning",
        ]
        output = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


class LocalFleet:
    """Replicas of each role (`replicas`), each role's behind a router when it has more than one.

    `policy`: the routers' `--policy` (`consistent_hash` hashes `X-Session-Id`; `round_robin`,
    `cache_aware`, ...); `replica_args`: more `vllm serve` arguments for every replica (e.g.
    `--otlp-traces-endpoint`); `log_dir`: where each process writes its log."""

    def __init__(
        self,
        model: str | Path,
        replicas: dict[Role, int] | None = None,
        *,
        policy: str = "consistent_hash",
        replica_args: Sequence[str] = (),
        log_dir: str | Path | None = None,
    ) -> None:
        replicas = replicas or {"small": 1, "large": 2}
        folder = Path(log_dir) if log_dir else None
        if folder:
            folder.mkdir(parents=True, exist_ok=True)
        cores = sorted(os.sched_getaffinity(0))
        self.replicas: dict[Role, list[Replica]] = {
            role: [
                Replica(role, str(model), free_port(), replica_args, folder / f"{role}-{index}.log" if folder else None)
                for index in range(count)
            ]
            for role, count in replicas.items()
        }
        if not _has_gpu():
            for number, replica in enumerate(r for group in self.replicas.values() for r in group):
                # vllm-cpu binds every server's compute thread to the first core by itself: spread them
                replica.cpus = str(cores[number % len(cores)])
        self.routers: dict[Role, Router] = {
            role: Router(
                role, free_port(), [r.url for r in group], policy, folder / f"router-{role}.log" if folder else None
            )
            for role, group in self.replicas.items()
            if len(group) > 1
        }

    def url(self, role: Role) -> str:
        """The base URL (…/v1) Glimp's servers backend takes for `role`: its router, or its one replica."""
        front = self.routers.get(role) or self.replicas[role][0]
        return front.url + "/v1"

    def start(self, timeout: float = 600) -> LocalFleet:
        for group in self.replicas.values():
            for replica in group:
                replica.start()
        for replica in (r for group in self.replicas.values() for r in group):
            wait_until_serving(replica.url, timeout, replica)
        for router in self.routers.values():
            router.start()
        for router in self.routers.values():
            wait_until_serving(router.url, timeout, router)
        return self

    def stop(self) -> None:
        for router in self.routers.values():
            router.stop()
        for group in self.replicas.values():
            for replica in group:
                replica.stop()

    def __enter__(self) -> LocalFleet:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *_: object) -> None:
        self.stop()


def wait_until_serving(base_url: str, timeout: float, process_owner: Replica | Router | None = None) -> None:
    """Wait until `base_url/v1/models` answers 200; fail early when the process has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_owner is not None and process_owner.process is not None and process_owner.process.poll() is not None:
            raise RuntimeError(
                f"{base_url} exited with {process_owner.process.returncode} before serving "
                f"(log: {process_owner.log or 'not kept: pass log_dir'})"
            )
        try:
            with urllib.request.urlopen(base_url + "/v1/models", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{base_url} did not serve within {timeout:.0f} s")


def vllm_metric(base_url: str, name: str) -> float:
    """A metric of a `vllm serve` (its /metrics), summed over its series (e.g.
    `vllm:num_requests_running`, `vllm:prefix_cache_hits_total`)."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$"
    return sum(float(value) for value in re.findall(pattern, text, re.M))


def _has_gpu() -> bool:
    """Whether vLLM runs on a GPU here (else it is vllm-cpu)."""
    from vllm.platforms import current_platform

    return not current_platform.is_cpu()
