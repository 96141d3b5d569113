#!/usr/bin/env bash
# Create .venv and install the project with its test tools. Safe to run again: it only
# reinstalls when pyproject.toml changed.
#   TORCH_SPEC  torch and torchvision installed first (default: "torch==2.14.1 torchvision==0.29.1",
#               the pair reference parity is measured on; PyPI's build, which runs on the CPU too)
#   PYTHON      interpreter for the venv (default: python3.11, else python3)
#   VENV        venv folder (default: .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
stamp="$VENV/.mdsvqa-installed"
wanted="$(sha256sum pyproject.toml | cut -c1-16) $TORCH_SPEC"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
  exit 0
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup: creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
echo "setup: installing $TORCH_SPEC"
# shellcheck disable=SC2086  # TORCH_SPEC holds several requirements
"$VENV/bin/python" -m pip install --quiet $TORCH_SPEC
echo "setup: installing mdsvqa with test extras (and ray: the Ray pool is tested on a local cluster)"
"$VENV/bin/python" -m pip install --quiet -e ".[test,ray]"
echo "$wanted" > "$stamp"
echo "setup: done ($("$VENV/bin/python" -c 'import torch, torchvision, transformers; print("torch", torch.__version__, "torchvision", torchvision.__version__, "transformers", transformers.__version__)'))"
