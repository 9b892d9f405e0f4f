# slimship: `make demo` and `make test` are all a fresh clone needs.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PIP    := $(PY) -m pip --disable-pip-version-check -q
OUT    ?= runs/demo
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast image container-host wheel clean

setup: $(STAMP)

# torch first and pinned exactly: that takes the CPU wheel; a looser spec pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PIP) install torch==2.13.0 2>&1 | grep -v "is ignored" || true
	$(PIP) install -c constraints.txt -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import torch, transformers, optimum.onnxruntime, onnxruntime, torch_pruning, bentoml, slimship"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/slimship run --config configs/demo.yaml --out $(OUT)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not container" $(PYTEST_ARGS)

# Needs a working docker, podman or buildah; then `podman run --rm -p 3000:3000 slimship-demo:latest` (or docker).
image: setup
	$(VENV)/bin/slimship run --config configs/demo.yaml --out $(OUT) --image --image-tag slimship-demo:latest

# A Debian/Ubuntu machine without Docker, as root: install podman and, with no registry, make the base image
# locally (docs/CONTAINERS.md). slimship itself never installs anything.
container-host:
	bash tests/podman-setup.sh

# The wheel a user installs (bentofile and Dockerfiles inside); tests/test_install.py installs and runs it.
wheel: setup
	rm -rf build   # setuptools keeps stale modules in build/lib between builds
	$(PY) -m pip wheel --no-deps --no-build-isolation -q -w dist .

clean:
	rm -rf runs .pytest_cache build dist
