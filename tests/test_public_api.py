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
