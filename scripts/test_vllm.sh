#!/usr/bin/env bash
# The vLLM engine's tests (pytest -m vllm) in .venv-vllm, which scripts/setup_vllm.sh creates or updates
# first. Arguments go to pytest (make test passes PYTEST_ARGS); when they select no vLLM test, that is
# not a failure here (pytest's exit status 5).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLLM_VENV:-.venv-vllm}"
VLLM_VENV="$VENV" scripts/setup_vllm.sh
set +e
"$VENV/bin/python" -m pytest -m vllm tests/test_vllm_engine.py "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
  echo "test_vllm: the arguments selected no vLLM test"
  exit 0
fi
exit $status
