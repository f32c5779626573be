# The two commands of the README: `make run` (set up, then run the main job on the embedded default)
# and `make test` (set up, then run the test suite). The environment lives in .venv/ and is reused.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.spin-ray-installed

.PHONY: setup run test bench clean-venv

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (spin-ray targets Python 3.11)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)
	@bash scripts/system-deps.sh

run: setup
	$(PY) -m spin_ray.launch configs/local.yaml

test: setup
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
