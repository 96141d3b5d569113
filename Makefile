# Two commands matter: `make demo` (set up, then run the whole loop locally) and `make test`.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: setup demo demo-check run test bench docker-check clean

setup:
	@VENV=$(VENV) scripts/setup.sh

demo: setup
	$(VENV)/bin/mdsvqa demo

demo-check: setup
	$(VENV)/bin/mdsvqa demo --check

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
