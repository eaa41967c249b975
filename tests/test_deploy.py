"""deploy/: the Kubernetes manifests pass the API's schemas (kubernetes-validate, offline) and
hold together (selectors, ports, URLs, probe paths, the gate's name); compose names the same
topology; the entropy gate loads into a vLLM image with no more of Glimp than the package."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from glimp_integrations import GlimpRouter
from glimp_integrations.backends.gate_arguments import GATE_PROCESSOR
from glimp_integrations.serve import create_app
from tests.scripted_pairs import scripted_pair

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


def validate(*paths: Path) -> subprocess.CompletedProcess:
    validator = Path(sys.executable).with_name("kubernetes-validate")
    return subprocess.run([str(validator), "--strict", "--quiet", *map(str, paths)], capture_output=True, text=True)


def resources() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def of_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in resources() if doc["kind"] == kind}


def containers(deployment: dict) -> list[dict]:
    return deployment["spec"]["template"]["spec"]["containers"]


def test_manifests_pass_the_kubernetes_schemas():
    assert len(MANIFESTS) >= 3
    checked = validate(*MANIFESTS)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_schema_check_catches_a_broken_manifest(tmp_path):
    broken = yaml.safe_load_all((DEPLOY / "k8s" / "glimp.yaml").read_text())
    deployment = next(doc for doc in broken if doc["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = ["http"]
    deployment["spec"]["replica"] = 3  # a misspelt field: refused under --strict
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(deployment))
    assert validate(path).returncode != 0


def test_manifests_hold_together():
    deployments, services = of_kind("Deployment"), of_kind("Service")
    pod_labels = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments.items()}
    for name, service in services.items():  # each Service selects the pods of a Deployment, on a port they name
        selector = service["spec"]["selector"]
        matches = [d for d, labels in pod_labels.items() if selector.items() <= labels.items()]
        assert matches, f"Service {name} selects no pods"
        ports = {p["name"] for d in matches for c in containers(deployments[d]) for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    for deployment in deployments.values():
        for container in containers(deployment):
            named = {p["name"] for p in container["ports"]}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["port"] in named
    glimp = containers(deployments["glimp"])[0]
    routers = [arg for arg in glimp["args"] if arg.startswith("http://")]
    assert {url.split("//")[1].split(":")[0] for url in routers} == {"vllm-router-small", "vllm-router-large"}
    assert all(url.endswith("/v1") for url in routers)
    for role in ("small", "large"):  # each router discovers its model's pods by their label
        args = containers(deployments[f"vllm-router-{role}"])[0]["args"]
        label = args[args.index("--selector") + 1]
        assert label == f"glimp.role={role}" and pod_labels[f"vllm-{role}"] == {"glimp.role": role}
    small_args = containers(deployments["vllm-small"])[0]["args"]
    assert small_args[small_args.index("--logits-processors") + 1] == GATE_PROCESSOR
    assert "--logits-processors" not in containers(deployments["vllm-large"])[0]["args"]


def test_glimp_probes_are_routes_of_glimp_serve():
    glimp = containers(of_kind("Deployment")["glimp"])[0]
    paths = {glimp[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe")}
    with GlimpRouter(backend=scripted_pair()) as router:
        routes = {route.path for route in create_app(router).routes}
    assert paths == {"/readyz", "/livez"} and paths <= routes
    assert of_kind("Deployment")["glimp"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60


def test_glimp_runs_unprivileged_with_its_key_from_a_secret():
    """The image's user is not root; the pod runs it on a read-only root filesystem without
    capabilities, takes the key from a Secret, waits before it stops listening (preStop), and
    gives its probes time to answer on a busy server."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    deployment = of_kind("Deployment")["glimp"]
    pod = deployment["spec"]["template"]["spec"]
    glimp = containers(deployment)[0]
    assert pod["securityContext"]["runAsNonRoot"] is True and str(pod["securityContext"]["runAsUser"]) == users[-1]
    context = glimp["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert any(mount["mountPath"] == "/tmp" for mount in glimp["volumeMounts"])  # the one place it writes
    key = next(env for env in glimp["env"] if env["name"] == "GLIMP_API_KEY")
    assert key["valueFrom"]["secretKeyRef"]["name"] == "glimp-api-key"
    pause = glimp["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep" and 0 < int(pause[1]) < pod["terminationGracePeriodSeconds"]
    assert all(glimp[probe]["timeoutSeconds"] >= 3 for probe in ("readinessProbe", "livenessProbe"))


def test_compose_publishes_only_the_api_with_its_key_from_an_env_file():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"front"}
    glimp = services["glimp"]
    assert glimp["env_file"] and glimp["read_only"] is True and glimp["cap_drop"] == ["ALL"]
    assert "--api-key" not in " ".join(glimp["command"])
    front = (DEPLOY / "nginx-front.conf").read_text()
    proxied = [line.split()[1:3] for line in front.splitlines() if "location" in line and "proxy_pass" in line]
    assert proxied == [["/v1/", "{"], ["=", "/"]] and "return 404" in front


def test_compose_describes_the_same_fleet():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    for name, service in services.items():
        assert set(service.get("depends_on", [])) <= set(services), name
    urls = [arg for arg in services["glimp"]["command"] if arg.startswith("http://")]
    assert {url.split("//")[1].split(":")[0] for url in urls} == {"router-small", "router-large"}
    for role in ("small", "large"):
        workers = [url.split("//")[1].split(":")[0] for url in services[f"router-{role}"]["command"][1:]]
        assert len(workers) >= 2 and set(workers) <= set(services)
        for worker in workers:
            gated = "--logits-processors" in services[worker]["command"]
            assert gated == (role == "small")
    assert (DEPLOY / "Dockerfile.vllm-gate").exists()


@pytest.mark.parametrize("module", ["glimp_integrations", "glimp_integrations.backends.gate_arguments"])
def test_the_package_imports_with_the_standard_library_alone(module):
    """A vLLM image gets the gate with `pip install --no-deps glimp`: importing the package (which
    vLLM's workers do to reach the gate) may load nothing outside the standard library."""
    script = (
        f"import sys; before = set(sys.modules); import {module}; "
        "loaded = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(loaded - set(sys.stdlib_module_names) - {'glimp_integrations'}))"
    )
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def large_server_commands() -> list[list[str]]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return [containers(of_kind("Deployment")["vllm-large"])[0]["args"], compose["services"]["large-0"]["command"]]


@pytest.mark.vllm
@pytest.mark.realtok
def test_the_large_servers_drafting_agrees_with_glimp_check_on_the_real_pair():
    """The deployed pair is the paper's (Qwen3-4B drafting for R1-Distill): its speculative config is
    what `speculative_config` builds for the real files (vLLM maps the draft's tokens by text), and
    the structured outputs read Glimp's grammars (llguidance)."""
    import json

    from glimp_integrations.backends.vllm import speculative_config
    from tests.real_pairs import LARGE_R1, QWEN3, R1_DISTILL, SMALL_QWEN3, tiny_model

    small, large = str(tiny_model(QWEN3, SMALL_QWEN3)), str(tiny_model(R1_DISTILL, LARGE_R1))
    expected = {**speculative_config(small, large, True), "model": "Qwen/Qwen3-4B"}
    for args in large_server_commands():
        assert args[args.index("--model") + 1] == "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"
        assert json.loads(args[args.index("--speculative-config") + 1]) == expected
        assert json.loads(args[args.index("--structured-outputs-config") + 1]) == {"backend": "guidance"}
