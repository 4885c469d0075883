# Two commands matter: `make demo` runs real agent runs on an embedded stack,
# `make test` runs the suite. Both install what they need on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo dev test lint docs chaos chaos-quick chaos-cluster bench bench-quick bench-deps recovery clean eval deploy-check

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(PY) -m examples.support_desk.demo

# The support desk's evaluation, each part on an embedded stack: its scenarios, 3 trials
# each (prints pass^k), and the adversarial suite against it; then support_desk_v2 in
# shadow of it (prints `tether shadow report`). Every part runs; exit 1 if any failed.
# A judge expectation is skipped unless TETHER_JUDGE_BASE_URL and TETHER_JUDGE_MODEL are set.
TRIALS ?= 3
eval: install
	@status=0; \
	$(VENV)/bin/tether eval examples/support_desk/scenarios --adversarial support_desk \
		--embedded --trials $(TRIALS) || status=1; \
	$(PY) -m examples.support_desk.shadow_compare || status=1; \
	exit $$status

dev: install
	$(VENV)/bin/tether dev

# Four test processes: most tests wait on real workers, so four share 2 cores well
# (1,201 tests: 9m17s with -n 4, 10m30s with -n 3, on this 2-core machine).
test: install
	$(PY) -m pytest -n 4

# 1,000 runs while workers and Redis are killed at random, workers are SIGSTOPped past
# their heartbeat (15-30 s) and Redis is away for 15 s; exits non-zero on any
# lost run, doubled side effect, or log entry missing from the lifecycle stream. chaos-quick is the 60-run version CI runs
# (one pause and one long outage among its kills). The summary line counts them: paused= long_outages=.
# SEED picks the run of chance: `make chaos SEED=8`.
SEED ?= 7
chaos: install
	$(PY) -m bench.chaos --seed $(SEED) --json bench/results/chaos-seed$(SEED).json

chaos-quick: install
	$(PY) -m bench.chaos --quick

# The same with run state on a three-node Redis Cluster; the Redis kills fall on
# the broker and each node in turn.
chaos-cluster: install
	$(PY) -m bench.chaos --cluster --seed $(SEED) --json bench/results/chaos-cluster-seed$(SEED).json

# Per-step overhead against bare Celery, throughput, runs in flight, cost of state:
# a table on stdout, JSON and a PNG in bench/results/ (about 7 minutes; quick: about 2).
bench: bench-deps
	$(PY) -m bench

bench-quick: bench-deps
	$(PY) -m bench --quick

# The bench extra (pyproject.toml): LangGraph and PostgresSaver, the peer `make bench`
# measures beside Tether (bench.peer; PostgreSQL from Debian's postgresql package).
BENCH_STAMP := $(VENV)/.bench-stamp
bench-deps: $(BENCH_STAMP)

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

# Seconds from SIGKILL of a worker to its run going on, default settings (also in `make bench`).
recovery: install
	$(PY) -m bench.recovery

# mypy reads bench.peer's LangGraph types, so lint installs the bench extra too.
lint: bench-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Every deploy file as it would be applied: each Kubernetes overlay (deploy/k8s/overlays/*)
# rendered by `kubectl kustomize` (the kubectl of the dev extra) and validated against
# Kubernetes', KEDA's and the ServiceMonitor's schemas; docker-compose.yml, the Prometheus and
# Grafana files and the image checked against their schemas and the code.
deploy-check: install
	$(PY) -m pytest -q tests/unit/test_deploy_*.py

# The docs site (mkdocs.yml) into site/; any warning (a broken link, a missing page or
# snippet) fails it. The reference pages come from `python docs/gen_reference.py`.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf .tether .pytest_cache .mypy_cache .ruff_cache site
