# Conveyor: `make run` trains and pushes a model on the bundled data; `make test` runs the suite.
SHELL := /bin/bash
.DEFAULT_GOAL := run

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

# Python 3.10: `python3.10` on PATH if it really runs, else the newest 3.10 under pyenv.
PYTHON310 := $(shell \
	if python3.10 -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then command -v python3.10; \
	else root=$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv); \
	  ls -d $$root/versions/3.10.*/bin/python 2>/dev/null | sort -V | tail -n 1; fi)

.PHONY: run test lint unit image compile clean venv flink-jar

venv: $(STAMP)

$(STAMP): setup.py constraints.txt
	@if [ -z "$(PYTHON310)" ]; then \
	  echo "Python 3.10 not found: install it (e.g. 'pyenv install 3.10.13' or 'apt-get install python3.10') so that python3.10 is on PATH, then re-run make." >&2; exit 1; fi
	@test -x $(PY) || $(PYTHON310) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade 'pip==24.3.1'
	$(PY) -m pip install --quiet -e '.[test]' -c constraints.txt
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/conveyor run $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Two test processes (pytest-xdist), one per core; each file's tests stay in one process, so a file's
# module and session fixtures are built once there. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2

test: lint
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

unit: $(STAMP)
	$(VENV)/bin/pytest -m "not e2e" $(PYTEST_ARGS)

# Build and push the Kubeflow pipeline image (needs a Docker engine; not run in tests).
IMAGE ?= ghcr.io/conveyor-ml/conveyor:latest
image:
	docker build -f kubeflow/Dockerfile -t $(IMAGE) \
	  --build-arg GIT_COMMIT=$$(git rev-parse HEAD) \
	  --build-arg GIT_DIRTY=$$(if [ -n "$$(git status --porcelain)" ]; then echo yes; else echo no; fi) .
	docker push $(IMAGE)

# Beam's Flink job server for `conveyor run --engine flink`, into ~/.cache/conveyor (needs Java and Maven).
flink-jar:
	.ci/flink-jar

compile: $(STAMP)
	$(VENV)/bin/conveyor compile --image $(IMAGE) $(ARGS)

clean:
	rm -rf output
