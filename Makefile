# Two commands matter: `make run` (set up, then score the shared videos) and `make test`.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: setup run test bench docker-check clean

setup:
	@VENV=$(VENV) scripts/setup.sh

run: setup
	@VENV=$(VENV) scripts/score_shared.sh

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python benchmarks/video_decode.py

clean:
	rm -rf .cache .pytest_cache scores.json

docker-check:
	scripts/docker_check.sh
