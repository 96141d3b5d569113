#!/usr/bin/env bash
# Install Label Studio 1.23.2 into its own virtualenv: it is a separate service (in production
# too) and pins its own Django, label-studio-sdk and friends. Prints the label-studio binary.
#
#   MDSVQA_LABEL_STUDIO_VENV  where the venv goes (default: <repo>/.cache/labelstudio-venv)
#   PYTHON                    interpreter to build it with (default: python3)
#
# Takes about 70 s and ~1 GB; does nothing when the right version is already there.
set -euo pipefail

VERSION="1.23.2"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MDSVQA_LABEL_STUDIO_VENV:-$REPO/.cache/labelstudio-venv}"
PYTHON="${PYTHON:-python3}"
BIN="$VENV/bin/label-studio"

installed_version() {
    "$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('label-studio'))" 2>/dev/null || true
}

if [ -x "$BIN" ] && [ "$(installed_version)" = "$VERSION" ]; then
    echo "$BIN"
    exit 0
fi

echo "installing label-studio==$VERSION into $VENV (about 70 s)" >&2
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "label-studio==$VERSION" >&2

if [ "$(installed_version)" != "$VERSION" ]; then
    echo "error: label-studio $VERSION did not install into $VENV" >&2
    exit 1
fi
echo "$BIN"
