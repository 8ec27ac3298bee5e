# Two commands set everything up from nothing: `make demo` and `make test`.
# The virtualenv and the Delta jars are cached outside the clone, keyed by the
# hash of what defines them (setup.py, conf/maven/pom.xml), so a second clone
# (CI) reuses them in seconds.

SHELL := /bin/bash
PYTHON_BOOT ?= python3
CACHE ?= $(HOME)/.cache/tsa-suite
REQ_HASH := $(shell cat setup.py | sha256sum | cut -c1-12)
POM_HASH := $(shell cat conf/maven/pom.xml | sha256sum | cut -c1-12)
VENV_DIR := $(CACHE)/venv-$(REQ_HASH)
JARS_DIR := $(CACHE)/jars-$(POM_HASH)
PY := .venv/bin/python
export PYTHONPATH := $(CURDIR)
export PYSPARK_PYTHON := $(CURDIR)/.venv/bin/python
export PYSPARK_DRIVER_PYTHON := $(CURDIR)/.venv/bin/python
export TSA_DELTA_JARS := $(CURDIR)/.deps/jars
PYTEST_ARGS ?=
# Airflow lives in its own virtualenv (its pins clash with the suite's); only the DAG test uses it.
AIRFLOW_SPEC := apache-airflow>=3,<4 pytest>=8 pyyaml>=6
AF_HASH := $(shell echo '$(AIRFLOW_SPEC)' | sha256sum | cut -c1-12)
AF_VENV := $(CACHE)/airflow-venv-$(AF_HASH)
# The model tests run once more under the torch the GPU nodes have preinstalled, in a virtualenv without
# Spark: an API or kernel that setup.py's torch pin allows but that version lacks fails here, not there.
NODE_TORCH := 2.11.0
NODE_SPEC := torch==$(NODE_TORCH) numpy>=1.26 pandas>=2.1,<3 pyarrow>=16 pyyaml>=6 safetensors>=0.4 \
             pytest>=8 hypothesis>=6
NODE_HASH := $(shell echo '$(NODE_SPEC)' | sha256sum | cut -c1-12)
NODE_VENV := $(CACHE)/node-torch-venv-$(NODE_HASH)

.PHONY: setup venv jars airflow-venv node-torch-venv test test-airflow test-node-torch demo replay clean

setup: venv jars

venv: .venv/.ready
.venv/.ready: setup.py
	@if [ ! -f "$(VENV_DIR)/.ready" ]; then \
	  echo "[setup] creating virtualenv $(VENV_DIR) (first time: a few minutes for pyspark and torch)"; \
	  rm -rf "$(VENV_DIR)" && mkdir -p "$(CACHE)" && \
	  $(PYTHON_BOOT) -m venv "$(VENV_DIR)" && \
	  "$(VENV_DIR)/bin/pip" install -q --upgrade pip && \
	  "$(VENV_DIR)/bin/pip" install -q ".[test]" && \
	  "$(VENV_DIR)/bin/pip" uninstall -q -y tsa_lib && \
	  rm -rf build tsa_lib.egg-info && \
	  touch "$(VENV_DIR)/.ready"; \
	else echo "[setup] reusing virtualenv $(VENV_DIR)"; fi
	@rm -rf .venv && ln -s "$(VENV_DIR)" .venv

jars: .deps/jars/.ready
.deps/jars/.ready: conf/maven/pom.xml
	@if [ ! -f "$(JARS_DIR)/.ready" ]; then \
	  echo "[setup] fetching Delta jars with Maven into $(JARS_DIR)"; \
	  rm -rf "$(JARS_DIR)" && mkdir -p "$(JARS_DIR)" && \
	  mvn -q -B -f conf/maven/pom.xml dependency:copy-dependencies \
	      -DincludeScope=runtime -DoutputDirectory="$(JARS_DIR)" && \
	  touch "$(JARS_DIR)/.ready"; \
	else echo "[setup] reusing Delta jars $(JARS_DIR)"; fi
	@mkdir -p .deps && rm -rf .deps/jars && ln -s "$(JARS_DIR)" .deps/jars

airflow-venv: $(AF_VENV)/.ready
$(AF_VENV)/.ready:
	@echo "[setup] creating the Airflow virtualenv $(AF_VENV) (first time: about 2 minutes)"
	@rm -rf "$(AF_VENV)" && mkdir -p "$(CACHE)" && $(PYTHON_BOOT) -m venv "$(AF_VENV)" && \
	  "$(AF_VENV)/bin/pip" install -q $(foreach r,$(AIRFLOW_SPEC),"$(r)") && touch "$(AF_VENV)/.ready"

node-torch-venv: $(NODE_VENV)/.ready
$(NODE_VENV)/.ready:
	@echo "[setup] creating the torch $(NODE_TORCH) virtualenv $(NODE_VENV) (first time: about a minute)"
	@rm -rf "$(NODE_VENV)" && mkdir -p "$(CACHE)" && $(PYTHON_BOOT) -m venv "$(NODE_VENV)" && \
	  "$(NODE_VENV)/bin/pip" install -q $(foreach r,$(NODE_SPEC),"$(r)") && touch "$(NODE_VENV)/.ready"

test: setup
	$(PY) -m pytest tests -q -p no:cacheprovider $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-airflow
	$(MAKE) --no-print-directory test-node-torch

test-airflow: airflow-venv
	AIRFLOW_HOME=$$(mktemp -d) "$(AF_VENV)/bin/python" -m pytest tests/test_orchestration.py -q -p no:cacheprovider -k with_airflow

test-node-torch: node-torch-venv
	"$(NODE_VENV)/bin/python" -m pytest tests/test_models.py -q -p no:cacheprovider

demo: setup
	$(PY) -m tsa_lib.demo --config conf/local.yaml --fresh

# The DAG's tasks for 21 nights on a local standalone Spark cluster (bench/replay/README.md);
# e.g. REPLAY_ARGS="--kill-task score@3 --sabotage-night 2026-03-01".
replay: setup
	$(PY) -m tsa_lib.orchestration.replay --config conf/local.yaml --start 2026-02-22 --nights 21 $(REPLAY_ARGS)

clean:
	rm -rf .venv .deps warehouse artifacts
