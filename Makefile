# The two commands of the README: `make run` and `make test`. Both create the environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# extra snakemake arguments, e.g. make run SMK="--config preset=tiny"
SMK ?=

.PHONY: run sim test test-fast lint report bench gpu-check slurm-up slurm-down clean

# torch first and pinned: an unpinned torch requirement pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# the closed loop's simulators (the extra .[sim]: Meta-World and LIBERO on one MuJoCo), in the same venv
$(VENV)/.installed-sim: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test,sim]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/snakemake --profile profiles/local $(SMK)

# the whole suite (what .ci/run runs): real Snakemake runs, the loopback Hub, real Slurm when one answers. Two
# workers (pytest-xdist), a test file each at a time: most of a test's time is one single-threaded process (a job's
# imports, one Snakemake job after another, a Slurm poll), so two files share 2 cores (docs/performance.md#the-suite)
TEST_WORKERS ?= 2
test: $(VENV)/.installed-sim
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

# the inner loop, under 2 minutes: no Slurm, no DAG runs (the tests marked slow are left out)
test-fast: $(VENV)/.installed-sim
	$(BIN)/pytest -q -m "not slow"

# the closed-loop study on Meta-World, on the CPU, offline (docs/closed-loop.md): demos -> train -> rollouts
sim: $(VENV)/.installed-sim
	$(BIN)/snakemake --profile profiles/local --configfile configs/metaworld.yaml $(SMK)

# the HTML report of the last run: every figure with its caption, and the tables
report: $(VENV)/.installed
	$(BIN)/snakemake --report results/report.html $(SMK)
	@echo "report: results/report.html"

# speed goals as ratios measured side by side (results/bench/summary.{json,md}, rewritten as each benchmark
# starts and ends; a line per benchmark on stdout): about 10 minutes on 2 idle cores (estimated). The whole
# study, with 1,000 samples in 1 and 8 shards, 5 repeats and 3 training seeds (about 50 minutes):
# make bench BENCH="--full"
BENCH ?=
bench: $(VENV)/.installed
	$(BIN)/python -m mimic_redundancy.tools.bench --out results/bench $(BENCH)

# on a CUDA machine: features + head stages there, every tensor's device, timings and peak memory per stage;
# the 7B-shaped backbone: make gpu-check GPU_CHECK="--backbone full --dtype bfloat16"
GPU_CHECK ?=
gpu-check: $(VENV)/.installed
	$(BIN)/python -m mimic_redundancy.tools.gpu_check --device cuda $(GPU_CHECK)

# a real single-node Slurm cluster on this machine (root; see tools/slurm/README.md)
slurm-up:
	tools/slurm/start.sh

slurm-down:
	tools/slurm/stop.sh

lint: $(VENV)/.installed
	$(BIN)/snakemake --lint

clean:
	rm -rf results .snakemake
