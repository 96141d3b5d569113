#!/usr/bin/env bash
# Install Label Studio 1.23.2 into its own virtualenv (it pins its own Django and SDK, and is a
# separate service in production too); prints the label-studio binary. Does nothing when the
# right version is there already. MDSVQA_LABEL_STUDIO_VENV moves the venv (default
# .cache/labelstudio-venv); MDSVQA_LABEL_STUDIO_BIN points at an existing installation instead.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON_BIN:-.venv/bin/python}" -c \
  "from ml_backend.demo.processes import label_studio_binary; print(label_studio_binary())"
