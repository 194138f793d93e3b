# Bootstraps everything from a fresh clone: `make demo` runs the demo, `make test` the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Byte code: pip installs none (--no-compile: 16,700 files, one by one, most never imported); a
# module is compiled when first imported and kept. Some machines set PYTHONDONTWRITEBYTECODE=1,
# under which every process (each test, CLI call and Ray worker) would compile torch again:
# not here, for these environments of the project's own.
unexport PYTHONDONTWRITEBYTECODE
# A CPU-only machine: `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu` installs
# PyTorch's CPU wheels first (about 1 GB instead of 6 with the CUDA libraries).
TORCH_INDEX ?=
# datumaro (the COCO export's importer test) pins older pandas/pyarrow/pillow: its own environment.
DATUMARO_VENV ?= .venv-datumaro
DATUMARO_STAMP := $(DATUMARO_VENV)/.installed

.PHONY: setup environments demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(PY) -m pip install --quiet --index-url $(TORCH_INDEX) torch==2.14.1 torchvision==0.29.1)
	$(PY) -m pip install --quiet --no-compile -e '.[test]'
# the references of tests/test_eval_tide.py and test_eval_lvis.py, without their requirement
# opencv-python, whose cv2 (Qt, libGL) would overwrite the headless one (see pyproject.toml)
	$(PY) -m pip install --quiet --no-compile --no-deps tidecv==1.0.1 lvis==0.5.3
	touch $(STAMP)

demo: setup
	$(VENV)/bin/mrcnn-batch demo

$(DATUMARO_STAMP):
	$(PYTHON) -m venv $(DATUMARO_VENV)
	$(DATUMARO_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DATUMARO_VENV)/bin/python -m pip install --quiet --no-compile datumaro==1.13.12
	touch $(DATUMARO_STAMP)

# Both environments built side by side; the tests in two processes (pytest-xdist), each taking
# whole test files, the files with end-to-end tests on Ray (marked slow) first (tests/conftest.py).
environments:
	$(MAKE) --no-print-directory -j2 setup $(DATUMARO_STAMP)

test: environments
	MRCNN_BATCH_DATUMARO_PYTHON=$(abspath $(DATUMARO_VENV))/bin/python $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# Everything but the end-to-end tests on Ray (marked slow): a few minutes.
test-fast: environments
	MRCNN_BATCH_DATUMARO_PYTHON=$(abspath $(DATUMARO_VENV))/bin/python $(PY) -m pytest -q -n 2 -m "not slow"

bench: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DATUMARO_VENV) build *.egg-info .pytest_cache
