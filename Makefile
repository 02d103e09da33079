# Two commands set everything up:  make demo  and  make test.
# The environment is created on first use (.venv), with the CPU build of torch pinned.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[demo,test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m extractor.demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(VENV)/.installed
	$(PY) bench/extract_bench.py --out bench/results/extract.json
	$(PY) bench/probe_bench.py --out bench/results/probe.json
	$(PY) bench/compare_bench.py --out bench/results/compare.json
	$(PY) bench/neurons_bench.py --out bench/results/neurons.json

clean:
	rm -rf demo_out
