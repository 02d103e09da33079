# Two commands set everything up:  make demo  and  make test.
# The environment is created on first use (.venv), with the CPU build of torch pinned.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test bench bench-gpu gpu-bundle clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[demo,test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m extractor.demo

# Two pytest workers, one per core of the project's machines (TEST_WORKERS=0 runs in one
# process); --dist loadfile keeps each test file on one worker, so a module's fixtures
# (the shared probe run, the reference stores) are built once.
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

bench: $(VENV)/.installed
	$(PY) bench/extract_bench.py --out bench/results/extract.json
	$(PY) bench/probe_bench.py --out bench/results/probe.json
	$(PY) bench/compare_bench.py --out bench/results/compare.json
	$(PY) bench/neurons_bench.py --out bench/results/neurons.json
	$(PY) bench/codec_bench.py --out bench/results/blosc_blocksize.json

# On a machine with a GPU, CuPy (pip install -e '.[gpu]') and a CUDA build of torch in .venv
# (the recipe above installs the CPU build): the same benchmarks with
# --device cuda, bigger batches for the bare loops and token budgets; results in bench/results/gpu/.
bench-gpu: $(VENV)/.installed
	$(PY) bench/extract_bench.py --device cuda --batches 32,128,512 --budgets 2048,4096,16384 \
		--skip memory,compression --out bench/results/gpu/extract_gpu.json
	$(PY) bench/probe_bench.py --device cuda --out bench/results/gpu/probe_gpu.json
	$(PY) bench/compare_bench.py --device cuda --out bench/results/gpu/compare_gpu.json
	$(PY) bench/neurons_bench.py --device cuda --out bench/results/gpu/neurons_gpu.json

# For a borrowed GPU machine without network (README, On a GPU): the ignored .gpu_bundle/ (wheels of
# strata's dependencies the device lacks, the MiniLM in float16, EWT subsets) that bench/gpu_session.sh uses.
gpu-bundle: $(VENV)/.installed
	$(PY) bench/gpu_bundle.py

clean:
	rm -rf demo_out
