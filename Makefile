# One command to set up and run the main job, one to set up and test (see README).
# `make setup` is idempotent: it rebuilds .venv only when the pins change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.capmix-installed
CORES ?= all

# The SLURM tests start a real single-node cluster: Debian's daemons, installed as root.
SLURM_PACKAGES := slurmctld slurmd slurm-client munge

.PHONY: setup run smoke replicates cost gpu-check test lint figures report clean-results slurm-deps

$(STAMP): pyproject.toml requirements/lock.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "capmix needs Python 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements/lock.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Config files are checked before Snakemake parses them (a file that is not UTF-8 or not YAML
# is named with its line, not a traceback). Extra files: make run CONFIG=my.yaml
CONFIG ?=
CONFIGFILE = $(if $(CONFIG),--configfile $(CONFIG))

run: setup
	$(BIN)/python -m capmix.config check $(CONFIG)
	$(BIN)/snakemake --cores $(CORES) $(CONFIGFILE)

smoke: setup
	$(BIN)/python -m capmix.config check config/smoke.yaml
	$(BIN)/snakemake --cores $(CORES) --configfile config/smoke.yaml

# What a config will cost on GPUs, per pool and stage, before it runs (README: "Cost before
# commitment"; every `snakemake -n` prints the same table): make cost CONFIG=config/datacomp_medium.yaml
cost: setup
	$(BIN)/python -m capmix.cost $(CONFIG)

# On a GPU node: the real-size captioners, scorer and a few training steps, checked and timed
# in one run of a few minutes (README: "Checking a GPU node"); figures to $OUT/gpu_check.json if OUT
# is set, else results/gpu_check/. Refuses to fall back to the CPU smoke when CUDA is missing.
GPU_CHECK_ARGS ?=
gpu-check: setup
	$(BIN)/python bench/gpu_check.py --require-gpu $(GPU_CHECK_ARGS)

# The default over several seeds, each into its own results root (runs/seedN/, nothing
# overwritten; a finished seed is not re-run), then the findings table across seeds.
SEEDS ?= 0 1 2
replicates: setup
	for seed in $(SEEDS); do \
	  $(BIN)/snakemake --cores $(CORES) --directory runs/seed$$seed --config seed=$$seed \
	  || exit 1; done
	$(BIN)/python -m capmix.findings combine runs/findings \
	  $(foreach seed,$(SEEDS),runs/seed$(seed)/results/toy_default/findings.json)

# Every figure and table the FINISHED results support (README "Paper figures and tables"), for
# every pool of the config, re-running nothing upstream: only the analyses and the figure rules
# may run (--allowed-rules; a missing upstream result stops with an error instead of a run),
# and a finished upstream output counts as done whatever changed in its code or params since
# (--rerun-triggers mtime). make figures CONFIG=config/smoke.yaml
FIGURE_RULES := analyses draw_figures figure_8_pools figures
figures: setup
	$(BIN)/snakemake figures --cores $(CORES) $(CONFIGFILE) \
	  --allowed-rules $(FIGURE_RULES) --rerun-triggers mtime

# The Snakemake report of a finished run: every figure and table with its caption, grouped by
# category, and the code version on its landing page (workflow/report/workflow.rst).
REPORT ?= report.zip
report: setup
	$(BIN)/snakemake --cores $(CORES) $(CONFIGFILE) --report $(REPORT)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint

slurm-deps:
	@test -x /usr/sbin/slurmctld -a -x /usr/sbin/slurmd -a -x /usr/sbin/munged \
	  -a -x /usr/bin/sbatch || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends $(SLURM_PACKAGES) \
	  || { apt-get update -q && apt-get install -y -q --no-install-recommends $(SLURM_PACKAGES); }; }

# Two workers, a test file each at a time (module fixtures built once): the SLURM and smoke
# DAG tests spend much of their time waiting on their jobs. One file alone: .venv/bin/pytest FILE
test: lint slurm-deps
	$(BIN)/pytest -n 2 --dist loadfile

clean-results:
	rm -rf results/toyworld results/toy_*
