# Two commands work on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp depends on every file that decides what the venv holds: when none of them
# changed, a second `make` installs nothing.
STAMP := $(VENV)/.installed
REQ_FILES := setup.py Makefile

.PHONY: venv test demo bench gpu-check clean

venv: $(STAMP)

$(STAMP): $(REQ_FILES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Two workers, a test file each (module fixtures such as the emulated sessions are built once):
# the slow tests wait on subprocesses and one core each.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

demo: $(STAMP)
	$(PY) -m imet demo --out demo

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# The CUDA lines, once, on a GPU machine (about 5 minutes); refuses with exit 2 without CUDA.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) demo dist build *.egg-info
