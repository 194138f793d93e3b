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
# The test environment's versions (Linux x86_64, CPython 3.11): `make lock` writes it from a fresh one.
LOCK := requirements-lock.txt
CUDA_STACK := ^(torch|torchvision|triton|nvidia-|cuda-)
# datumaro (the COCO export's importer test) pins older pandas/pyarrow/pillow: its own environment.
DATUMARO_VENV ?= .venv-datumaro
DATUMARO_STAMP := $(DATUMARO_VENV)/.installed
# the references of tests/test_eval_tide.py and test_eval_lvis.py, installed without their requirement
# opencv-python, whose cv2 (Qt, libGL) would overwrite the headless one (see pyproject.toml)
REFERENCE_TOOLS := tidecv==1.0.1 lvis==0.5.3

.PHONY: setup environments demo test test-fast bench lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(PY) -m pip install --quiet --index-url $(TORCH_INDEX) torch==2.14.1 torchvision==0.29.1)
# A warm start from the lock, without resolving, in two pip processes side by side (pip unpacks on
# one core): the CUDA torch stack (left out when TORCH_INDEX gave the CPU wheels) and the rest.
# Where the lock does not apply (another platform or Python) this fails and the next line does it all.
	grep -iE '$(CUDA_STACK)' $(LOCK) > $(VENV)/lock-torch.txt; grep -viE '$(CUDA_STACK)' $(LOCK) > $(VENV)/lock-rest.txt
	-$(if $(TORCH_INDEX),,$(PY) -m pip install --quiet --no-compile --no-deps -r $(VENV)/lock-torch.txt &) \
		$(PY) -m pip install --quiet --no-compile --no-deps -r $(VENV)/lock-rest.txt; wait
	$(PY) -m pip install --quiet --no-compile -e '.[test]'
	$(PY) -m pip install --quiet --no-compile --no-deps $(REFERENCE_TOOLS)
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

# The lock, from an environment made from pyproject.toml alone (resolved afresh, in a temporary folder).
lock:
	rm -rf $(VENV)-lock && $(PYTHON) -m venv $(VENV)-lock && $(VENV)-lock/bin/python -m pip install --quiet --upgrade pip
	$(VENV)-lock/bin/python -m pip install --quiet --no-compile -e '.[test]'
	$(VENV)-lock/bin/python -m pip install --quiet --no-compile --no-deps $(REFERENCE_TOOLS)
	{ sed -n '1,3p' $(LOCK); $(VENV)-lock/bin/python -m pip freeze --exclude-editable; } > $(LOCK).new && mv $(LOCK).new $(LOCK)
	rm -rf $(VENV)-lock

clean:
	rm -rf $(VENV) $(DATUMARO_VENV) build *.egg-info .pytest_cache
