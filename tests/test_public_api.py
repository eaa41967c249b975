import glimp_integrations


def test_public_api_is_importable_and_pinned():
    for name in glimp_integrations.__all__:
        assert hasattr(glimp_integrations, name), name
    assert {"GlimpRouter", "RouterConfig", "RunTrace", "entropy_bounds", "ScriptedBackend"} <= set(
        glimp_integrations.__all__
    )


def test_the_engine_imports_no_framework():
    import subprocess
    import sys

    code = (
        "import sys, glimp_integrations, glimp_integrations.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('langchain_core', 'llama_index', 'torch', 'transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_server_and_the_framework_adapters_reach_no_backend_module():
    """`glimp serve`, LangChain and LlamaIndex adapt the engine's public surface: none of them
    imports a backend's module (a backend's errors or context are not theirs to read)."""
    import ast
    from pathlib import Path

    root = Path(glimp_integrations.__file__).parent.parent
    files = [
        *(root / "glimp_integrations" / "serve").glob("*.py"),
        *(root / "langchain_glimp").glob("*.py"),
        *(root / "llamaindex_glimp").glob("*.py"),
    ]
    assert len(files) > 10
    reaching = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            reaching += [
                f"{path.relative_to(root)}: {name}" for name in names if name.startswith("glimp_integrations.backends")
            ]
    assert reaching == []


def test_the_version_is_the_packages_and_shows_wherever_a_user_looks():
    import subprocess
    import sys
    from importlib.metadata import version

    from glimp_integrations import GlimpRouter
    from glimp_integrations.serve import running_server
    from tests.scripted_pairs import scripted_pair

    installed = version("glimp")
    assert glimp_integrations.__version__ == installed
    cli = subprocess.run([sys.executable, "-m", "glimp_integrations.cli", "--version"], capture_output=True, text=True)
    assert cli.stdout.strip() == f"glimp {installed}"
    router = GlimpRouter(backend=scripted_pair())
    assert router.run("Hi?").summary()["glimp_version"] == installed
    with running_server(router) as url:
        import httpx

        models = httpx.get(url + "/models")
    assert models.json()["data"][0]["glimp_version"] == installed and models.headers["x-glimp-version"] == installed
