#!/usr/bin/env bash
# Build the CPU image and run it for real: the backend answers /health with its model ready, and
# `mdsvqa score` inside the container scores every shared video with the tiny random model.
# Needs root, dockerd (started here when none answers: `dockerd --bridge=none --iptables=false`)
# and, unless SMOKE_BASE_IMAGE names an image you have, debootstrap. Safe to run again: the base
# image and the build cache are reused, its container is removed however it ends.
# All container traffic stays on the host network (no registry, no bridge needed).
#   SMOKE_IMAGE           image built and run (mdsvqa:cpu-smoke)
#   SMOKE_BASE_IMAGE      base image (mdsvqa-base:bookworm: made from Debian's packages with
#                         `debootstrap --variant=minbase bookworm` + `docker import` when missing;
#                         python:3.11-slim-bookworm where a registry answers)
#   SMOKE_DEBIAN_MIRROR   debootstrap's mirror (http://deb.debian.org/debian)
#   SMOKE_VIDEOS          videos to score, mounted read-only (../shared/videos)
#   SMOKE_CA              CA bundle pip trusts in the build (/etc/ssl/certs/ca-certificates.crt if present; "" for none)
#   SMOKE_WHEELS          folder with a local CPU torch wheel (/opt/wheels); without one, or with
#                         SMOKE_TORCH_SPEC set, the Dockerfile's torch (PyTorch's CPU index) is used
#   SMOKE_TORCH_SPEC, SMOKE_TORCH_INDEX_URL   build arguments TORCH_SPEC, TORCH_INDEX_URL
#   SMOKE_BUILD_TIMEOUT (2400 s), SMOKE_HEALTH_TIMEOUT (300 s), SMOKE_SCORE_TIMEOUT (900 s)
#   SMOKE_REMOVE_IMAGES=1 remove the built image and its build stage (the next run's cache)
#                         afterwards; the base image is kept
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

image="${SMOKE_IMAGE:-mdsvqa:cpu-smoke}"
base="${SMOKE_BASE_IMAGE:-mdsvqa-base:bookworm}"
mirror="${SMOKE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
videos="${SMOKE_VIDEOS:-../shared/videos}"
ca="${SMOKE_CA-/etc/ssl/certs/ca-certificates.crt}"
wheels="${SMOKE_WHEELS:-/opt/wheels}"
build_timeout="${SMOKE_BUILD_TIMEOUT:-2400}"
health_timeout="${SMOKE_HEALTH_TIMEOUT:-300}"
score_timeout="${SMOKE_SCORE_TIMEOUT:-900}"
logs="$repo/.cache/docker-smoke"
name="mdsvqa-smoke-$$"
label="mdsvqa-smoke=1"
rootfs=""
mkdir -p "$logs"
began=$(date +%s)

say() { echo "smoke: $*"; }
die() { echo "smoke: FAILED: $*" >&2; exit 1; }

cleanup() {
  docker rm -f -v "$name" >/dev/null 2>&1 || true
  if [[ -n "$rootfs" ]]; then rm -rf "$rootfs"; fi
}
trap cleanup EXIT

[[ $(id -u) == 0 ]] || die "run as root (dockerd, debootstrap)"
command -v docker >/dev/null || die "no docker client (Debian: apt-get install docker.io)"
[[ -d "$videos" ]] || die "no videos folder $videos (set SMOKE_VIDEOS)"
videos=$(cd "$videos" && pwd)

# 1. The engine.
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || die "no Docker engine answers and no dockerd (Debian: apt-get install docker.io)"
  say "starting dockerd --bridge=none --iptables=false (log: $logs/dockerd.log; it keeps running)"
  nohup dockerd --bridge=none --iptables=false >"$logs/dockerd.log" 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || die "dockerd did not come up in 60 s; see $logs/dockerd.log"
fi
say "engine: Docker $(docker version -f '{{.Server.Version}}')"
# Containers a killed earlier run left behind.
stale=$(docker ps -aq --filter "label=$label")
if [[ -n "$stale" ]]; then
  # shellcheck disable=SC2086  # one id per word
  docker rm -f -v $stale >/dev/null
fi

# 2. The base image.
if docker image inspect "$base" >/dev/null 2>&1; then
  say "base: reusing $base"
elif [[ "$base" != mdsvqa-base:* ]]; then
  die "base image $base is not here and cannot be made here (pull it, or leave SMOKE_BASE_IMAGE unset)"
else
  command -v debootstrap >/dev/null || die "no debootstrap to make $base (Debian: apt-get install debootstrap)"
  rootfs=$(mktemp -d /var/tmp/mdsvqa-base.XXXXXX)
  say "base: debootstrap --variant=minbase bookworm from $mirror (log: $logs/debootstrap.log)"
  timeout 900 debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$logs/debootstrap.log" 2>&1 \
    || { tail -20 "$logs/debootstrap.log" >&2; die "debootstrap failed; see $logs/debootstrap.log"; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' - "$base" >/dev/null || die "docker import failed"
  rm -rf "$rootfs"
  rootfs=""
  say "base: made $base ($(docker image inspect -f '{{.Size}}' "$base" | awk '{printf "%.0f MB", $1/1e6}'))"
fi

# 3. The image. Optional inputs go into docker/local/ (git-ignored; the Dockerfile builds without them).
build_args=(--build-arg "BASE_IMAGE=$base")
mkdir -p docker/local/wheels
if [[ -n "$ca" ]]; then
  [[ -f "$ca" ]] || die "no CA bundle $ca (set SMOKE_CA=\"\" for none)"
  cmp -s "$ca" docker/local/ca-bundle.crt || cp "$ca" docker/local/ca-bundle.crt
  build_args+=(--build-arg CA_BUNDLE=ca-bundle.crt)
fi
torch_spec="${SMOKE_TORCH_SPEC:-}"
torch_index="${SMOKE_TORCH_INDEX_URL:-}"
cpu_wheel=$(find "$wheels" -maxdepth 1 -name 'torch-*+cpu-cp311-*.whl' 2>/dev/null | sort | tail -1)
if [[ -z "$torch_spec" && -n "$cpu_wheel" ]]; then
  # A local CPU torch, and the torchvision PyPI has for it (its minor release is torch's + 15).
  version=$(basename "$cpu_wheel" | cut -d- -f2)       # 2.13.0+cpu
  IFS=. read -r major minor _ <<<"${version%%+*}"
  torch_spec="torch==$version torchvision==0.$((minor + 15)).0"
  [[ "$major" == 2 ]] || die "unexpected torch wheel $cpu_wheel"
  torch_index="${torch_index:-https://pypi.org/simple}"
  cmp -s "$cpu_wheel" "docker/local/wheels/$(basename "$cpu_wheel")" || cp "$cpu_wheel" docker/local/wheels/
  say "torch: local CPU wheel $(basename "$cpu_wheel") with PyPI's torchvision ($torch_spec)"
fi
if [[ -n "$torch_spec" ]]; then build_args+=(--build-arg "TORCH_SPEC=$torch_spec"); fi
if [[ -n "$torch_index" ]]; then build_args+=(--build-arg "TORCH_INDEX_URL=$torch_index"); fi
say "build: $image from docker/Dockerfile.cpu (log: $logs/build.log)"
old_id=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
start=$(date +%s)
if ! timeout "$build_timeout" docker build --network host -f docker/Dockerfile.cpu "${build_args[@]}" -t "$image" . \
    >"$logs/build.log" 2>&1; then
  tail -30 "$logs/build.log" >&2
  die "docker build failed or ran past ${build_timeout}s; see $logs/build.log"
fi
build_s=$(( $(date +%s) - start ))
# What a rebuild replaces: the old image, and all but the newest build stage (the next run's cache;
# the Dockerfile labels it), instead of dangling images piling up.
new_id=$(docker image inspect -f '{{.Id}}' "$image")
if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then docker rmi "$old_id" >/dev/null 2>&1 || true; fi
stages=$(docker images -q --filter dangling=true --filter label=mdsvqa.build-stage=true | tail -n +2)
if [[ -n "$stages" ]]; then
  # shellcheck disable=SC2086  # one id per word
  docker rmi $stages >/dev/null 2>&1 || true
fi
size=$(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.2f GB", $1/1e9}')
torch_line=$(grep -a -m1 -o 'torch [0-9][^ ]* torchvision [0-9][^ ]*' "$logs/build.log" || echo "torch: cached layer")
say "build: ${build_s}s, image $size ($torch_line)"

# 4. Run it: the tiny random model, then the backend on a free port of the host network.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
docker run -d --name "$name" --label "$label" --network host \
  -e MDSVQA_HOST=127.0.0.1 -e MDSVQA_PORT="$port" -e MDSVQA_DEVICE=cpu \
  -e MDSVQA_OFFLINE=true -e HF_HUB_OFFLINE=1 -e TRANSFORMERS_OFFLINE=1 \
  -e MDSVQA_BASE=/models/tiny/base -e MDSVQA_ADAPTER=/models/tiny/adapter \
  -v "$videos:/videos:ro" \
  "$image" sh -c 'mdsvqa tiny-model /models/tiny >/dev/null && exec mdsvqa serve' >/dev/null \
  || die "docker run failed"
say "run: container $name, backend on 127.0.0.1:$port"

health=""
start=$(date +%s)
deadline=$(( start + health_timeout ))
while :; do
  if [[ $(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null) != true ]]; then
    docker logs --tail 40 "$name" >&2 || true
    die "the container stopped before /health answered"
  fi
  health=$(docker exec "$name" python -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=4).read().decode())" 2>/dev/null || true)
  state=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1]).get("model", "?"))' "$health" 2>/dev/null || true)
  [[ "$state" == ready ]] && break
  if [[ "$state" == failed ]]; then
    docker logs --tail 40 "$name" >&2 || true
    die "the model failed to load: $health"
  fi
  (( $(date +%s) < deadline )) || { docker logs --tail 40 "$name" >&2 || true; die "no ready /health in ${health_timeout}s (last: ${health:-no answer})"; }
  sleep 2
done
python3 -c 'import json, sys; h = json.loads(sys.argv[1]); assert h["status"] == "UP", h' "$health" \
  || die "/health is not UP: $health"
health_s=$(( $(date +%s) - start ))
say "health: model ready after ${health_s}s: $health"

# 5. Score the videos inside the container; one entry per video.
start=$(date +%s)
set +e
timeout "$score_timeout" docker exec "$name" mdsvqa score /videos --out /data/smoke-scores.json --offline --no-progress \
  >"$logs/score.log" 2>&1
status=$?
set -e
score_s=$(( $(date +%s) - start ))
docker exec "$name" cat /data/smoke-scores.json >"$logs/scores.json" 2>/dev/null \
  || { tail -30 "$logs/score.log" >&2; die "mdsvqa score wrote no scores (exit $status); see $logs/score.log"; }
summary=$(python3 - "$videos" "$logs/scores.json" <<'PY'
import json, sys
from pathlib import Path

suffixes = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp", ".yuv"}
expected = sorted(p.name for p in Path(sys.argv[1]).rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
scores = json.loads(Path(sys.argv[2]).read_text())
missing = [n for n in expected if n not in scores]
failed = [f"{n}: {scores[n].get('error')}" for n in expected if n in scores and scores[n].get("score") is None]
if not expected:
    sys.exit("no videos found")
if missing or failed:
    sys.exit(f"missing {missing}, failed {failed}")
print(f"{len(expected)}/{len(expected)} videos scored: " + ", ".join(f"{n}={scores[n]['score']}" for n in expected))
PY
) || { tail -30 "$logs/score.log" >&2; die "scores incomplete: see $logs/scores.json and $logs/score.log"; }
[[ $status == 0 ]] || { tail -30 "$logs/score.log" >&2; die "mdsvqa score exited $status"; }
say "score: ${score_s}s, $summary (tiny random model: meaningless values)"

if [[ "${SMOKE_REMOVE_IMAGES:-0}" == 1 ]]; then
  docker rm -f -v "$name" >/dev/null
  docker rmi "$image" >/dev/null
  stages=$(docker images -q --filter dangling=true --filter label=mdsvqa.build-stage=true)
  # shellcheck disable=SC2086  # one id per word
  if [[ -n "$stages" ]]; then docker rmi $stages >/dev/null; fi
fi
echo "smoke: OK in $(( $(date +%s) - began ))s: image $image $size, build ${build_s}s, /health ready in ${health_s}s, $summary"
