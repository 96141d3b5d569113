# Two commands matter: `make demo` (set up, then run the whole loop locally) and `make test`.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: setup browser demo demo-check run lint test bench docker-check docker-smoke clean

setup:
	@VENV=$(VENV) scripts/setup.sh

demo: setup
	$(VENV)/bin/mdsvqa demo

demo-check: setup
	$(VENV)/bin/mdsvqa demo --check

run: setup
	@VENV=$(VENV) scripts/score_shared.sh

# ruff and mypy read their settings from pyproject.toml; any finding fails the target.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Debian's chromium + chromium-driver for the browser tests (a no-op once installed)
browser:
	@scripts/install_chromium.sh

test: lint browser
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python benchmarks/video_decode.py

clean:
	rm -rf .cache .pytest_cache .mypy_cache .ruff_cache scores.json

# hadolint + compose config, no engine: needs Debian's docker-compose or `docker compose`.
docker-check:
	scripts/docker_check.sh

# Builds and runs the CPU image for real (/health, `mdsvqa score` on ../shared/videos with the tiny
# model): needs root, dockerd (started if none answers) and debootstrap (for the base image).
docker-smoke:
	scripts/docker_smoke.sh
