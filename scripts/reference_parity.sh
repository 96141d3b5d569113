#!/usr/bin/env bash
# Regenerate the reference parity goldens (tests/data/reference_inputs.{json,npz} and
# tests/data/reference_evaluation.json) with the MDS-VQA reference's own pinned packages,
# in their own virtualenv. See scripts/reference_parity/README.md.
#
# Environment:
#   REFERENCE_VENV     the reference virtualenv (default .cache/reference-venv; created and
#                      filled when it lacks the pins)
#   REFERENCE_SRC      a folder holding the MDS-VQA reference's src/utils.py (evaluation);
#                      REFERENCE_LABEL names it in the output (e.g. "MDS-VQA <commit>")
#   REFERENCE_GIT_DIR  or: a git dir (bare mirror) of the reference; src/utils.py is taken
#                      from REFERENCE_GIT_REV (default HEAD) into a temp folder
#   OUT_DIR            where the goldens go (default tests/data)
# Without REFERENCE_SRC / REFERENCE_GIT_DIR, reference_evaluation.json is left as it is.
# Extra arguments go to scripts/reference_parity/make_goldens.py.
set -euo pipefail

start=$(date +%s)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${REFERENCE_VENV:-$repo/.cache/reference-venv}
out_dir=${OUT_DIR:-$repo/tests/data}
pins=(torch==2.6.0 torchvision==0.21.0 transformers==4.49.0 qwen-vl-utils==0.0.10 decord==0.6.0)
extras=(av numpy scipy)

pins_ok() {
    [[ -x $venv/bin/python ]] || return 1
    "$venv/bin/python" - "${pins[@]}" <<'EOF' 2>/dev/null
import importlib.metadata as md, sys
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    if md.version(name).split("+")[0] != want:
        sys.exit(1)
import av, decord, numpy, qwen_vl_utils, scipy, torchvision, transformers  # noqa: F401
EOF
}

if ! pins_ok; then
    echo "== setting up the reference virtualenv in $venv"
    [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
    # This machine caps torch in its pip config; the reference pins need the cap lifted,
    # for this virtualenv only.
    PIP_CONSTRAINT= PIP_CONFIG_FILE=/dev/null "$venv/bin/pip" install --quiet "${pins[@]}" "${extras[@]}"
    pins_ok || { echo "reference virtualenv $venv does not hold ${pins[*]}" >&2; exit 1; }
fi

args=(--out-dir "$out_dir")
tmp=""
trap 'if [[ -n $tmp ]]; then rm -rf "$tmp"; fi' EXIT
if [[ -n ${REFERENCE_SRC:-} ]]; then
    args+=(--reference-src "$REFERENCE_SRC" --reference-label "${REFERENCE_LABEL:-$REFERENCE_SRC/src/utils.py}")
elif [[ -n ${REFERENCE_GIT_DIR:-} ]]; then
    rev=${REFERENCE_GIT_REV:-HEAD}
    commit=$(git --git-dir="$REFERENCE_GIT_DIR" rev-parse --verify "$rev^{commit}")
    tmp=$(mktemp -d)
    mkdir -p "$tmp/src"
    if ! git --git-dir="$REFERENCE_GIT_DIR" show "$commit:src/utils.py" >"$tmp/src/utils.py" 2>/dev/null; then
        echo "no src/utils.py at $rev ($commit) in $REFERENCE_GIT_DIR; set REFERENCE_GIT_REV or REFERENCE_SRC" >&2
        exit 1
    fi
    args+=(--reference-src "$tmp" --reference-label "MDS-VQA $commit:src/utils.py")
fi

# qwen-vl-utils reads these at import; the goldens are for its defaults.
unset VIDEO_MAX_PIXELS FORCE_QWENVL_VIDEO_READER
echo "== writing goldens to $out_dir with $venv/bin/python"
"$venv/bin/python" "$repo/scripts/reference_parity/make_goldens.py" "${args[@]}" "$@"
ls -l "$out_dir"/reference_inputs.json "$out_dir"/reference_inputs.npz "$out_dir"/reference_evaluation.json 2>/dev/null || true
echo "== reference parity goldens done in $(( $(date +%s) - start )) s"
