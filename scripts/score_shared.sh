#!/usr/bin/env bash
# The main job: score every video in ../shared/videos (or $VIDEOS) into scores.json.
# Uses MDSVQA_BASE/MDSVQA_ADAPTER when set, else the published checkpoints if they are
# in the local Hugging Face cache, else a tiny random model (said plainly: its scores
# are meaningless, but every part of the pipeline runs).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
VIDEOS="${VIDEOS:-../shared/videos}"
OUT="${OUT:-scores.json}"
mdsvqa="$VENV/bin/mdsvqa"
if [[ -z "${MDSVQA_BASE:-}" ]]; then
  if "$VENV/bin/python" - <<'PY' 2>/dev/null
from ml_backend.model.loading import resolve_model
from ml_backend.settings import load_settings
resolve_model(load_settings(offline=True))
PY
  then
    echo "score: using the published checkpoints from the local Hugging Face cache"
    export MDSVQA_OFFLINE=1
  else
    tiny=".cache/tiny-model"
    [[ -f "$tiny/adapter/adapter_config.json" ]] || "$mdsvqa" tiny-model "$tiny" >/dev/null
    echo "score: real checkpoints not available offline -> using the TINY RANDOM model in $tiny"
    echo "score: (scores are meaningless; set MDSVQA_BASE/MDSVQA_ADAPTER or download the checkpoints)"
    export MDSVQA_BASE="$tiny/base" MDSVQA_ADAPTER="$tiny/adapter"
  fi
fi
set +e
"$mdsvqa" score "$VIDEOS" --out "$OUT"
status=$?
set -e
echo "score: wrote $OUT"
cat "$OUT"
exit $status
