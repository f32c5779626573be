# The two commands of the README: `make run` (set up, then run the main job on the embedded default)
# and `make test` (set up, then run the test suite). The environment lives in .venv/ and is reused.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.spin-ray-installed

.PHONY: setup run test test-slow bench clean-venv image

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
	@SPIN_RAY_TEST_BROWSER=1 bash scripts/system-deps.sh
	$(PY) -m pytest -q

# The long end-to-end checks (per-mode learning, the fidelity smoke study, 64 simulated fitters).
test-slow: setup
	$(PY) -m pytest -q -m slow

clean-venv:
	rm -rf $(VENV)

# Container images for clusters (docker/, deploy/). The tags are the ones deploy/ray-cluster.yaml and
# deploy/k8s/ name (a test keeps them equal); to push, build with IMAGE=registry/team/spin-ray and
# put the same name in those files.
IMAGE ?= spin-ray
image:
	@command -v docker >/dev/null || { echo "make image needs the docker CLI and a Docker engine (none found)"; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "make image: no Docker engine is reachable (docker info failed); start one or set DOCKER_HOST, then retry"; exit 1; }
	docker build -f docker/Dockerfile -t $(IMAGE):cpu .
	docker build -f docker/Dockerfile.cuda -t $(IMAGE):cuda .
