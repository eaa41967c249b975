"""Glimp as a user installs it: the wheel and sdist build and pass `twine check`, and the wheel,
installed into a fresh environment without torch, carries its data and runs its command line.
(Against a real model server: tests/test_openai_servers.py.  Every Python: scripts/matrix.py.)"""

import tarfile
import textwrap

import pytest

import glimp_integrations
from tests.installed_wheel import installed_wheel, outside_the_tree

pytestmark = pytest.mark.release


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    return installed_wheel(tmp_path_factory.mktemp("release"))


def test_the_installed_command_line_reports_its_version_and_explains_itself(installed):
    version = outside_the_tree(installed, "glimp", "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"glimp {glimp_integrations.__version__}"
    ask = outside_the_tree(installed, "glimp", "ask", "--help")
    assert ask.returncode == 0 and "--backend {transformers,vllm,openai}" in ask.stdout


def test_the_installed_package_carries_its_data_and_type_markers_and_needs_no_torch(installed):
    check = textwrap.dedent(
        """
        import importlib.resources, importlib.util, glimp_integrations
        root = importlib.resources.files("glimp_integrations")
        for name in ("py.typed", "serve/playground.html", "data/arithmetic.jsonl"):
            assert root.joinpath(name).is_file(), name
        for package in ("langchain_glimp", "llamaindex_glimp"):
            assert importlib.util.find_spec(package).submodule_search_locations, package
        assert importlib.util.find_spec("torch") is None, "the servers extras pulled torch"
        print(glimp_integrations.__file__)
        """
    )
    result = outside_the_tree(installed, "python", "-c", check)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(installed.parent)), "imported the source tree, not the wheel"


def test_a_vllm_outside_the_declared_range_warns_once_in_the_installed_package(installed, tmp_path):
    """A vLLM installed by hand at an untested release: the range comes from the installed metadata."""
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text('__version__ = "0.99.0"\n')
    script = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "from glimp_integrations.errors import require_module\n"
        "for _ in range(2): require_module('vllm', 'vllm', 'The vLLM backend')\n"
    )
    result = outside_the_tree(installed, "python", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("UntestedVersionWarning") == 1
    assert "vllm 0.99.0 is installed" in result.stderr and "vllm<0.33,>=0.32" in result.stderr


def test_the_sdist_carries_the_license_and_changelog_and_the_wheel_its_license(installed):
    dist = installed.parent.parent / "dist"
    (sdist,) = dist.glob(f"glimp-{glimp_integrations.__version__}.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[-1] for name in archive.getnames()}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "glimp_integrations/py.typed"} <= names
    assert not any(name.startswith("tests/") for name in names)
    license_files = list(installed.parent.glob("lib/python*/site-packages/glimp-*.dist-info/licenses/LICENSE"))
    assert license_files and "Apache License" in license_files[0].read_text()
