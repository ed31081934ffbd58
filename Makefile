# Mesial: every target a developer or CI runs. `make help` lists them.
# CI calls these same targets (.ci/run), so a green `make test` here is a green CI.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
# -P: never put the working directory on sys.path. The repository root holds a folder
# named `operator`, which would shadow the standard library's module of that name
# (`python -m pip` in a new virtualenv fails with "cannot import name 'eq'").
PY := $(VENV)/bin/python -P
TOOLS := .tools
STAMP := $(VENV)/.installed
# The aligner's compiled mesh-query kernel (setup.py): rebuilt in place when its C source changes.
KERNEL := $(VENV)/.kernel-built
export PATH := $(CURDIR)/$(TOOLS)/bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help install test e2e e2e-kind cluster-tools cluster-up cluster-down lint format demo bench chart services-up services-down clean image image-test

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  \033[1m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml setup.py scripts/install-system-deps.sh scripts/install_k8s_tools.py
	bash scripts/install-system-deps.sh
	test -x $(VENV)/bin/python || $(PYTHON) -P -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) scripts/install_k8s_tools.py $(TOOLS)
	touch $@

$(KERNEL): aligner/_meshquery.c aligner/_nearest.c aligner/_raster.c aligner/_clean.c aligner/_field.c aligner/_prep.c setup.py | $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP) $(KERNEL) ## Create .venv, install the project (compiling the aligner's kernel), its tools and the Debian packages it needs
	@bash scripts/install-system-deps.sh

test: install cluster-tools ## Run the whole test suite against real services and a real control plane (started and stopped by the suite)
	$(PY) -m pytest $(PYTEST_ARGS)

e2e: install cluster-tools ## End-to-end on a real control plane built from Go modules (chart, operator, tenant lifecycle)
	$(PY) -m pytest tests/e2e_cluster $(PYTEST_ARGS)

e2e-kind: install ## The e2e scenarios of `make e2e` on a kind cluster with the `make image` image (needs Docker; exits 2 saying so without it)
	bash scripts/e2e-kind.sh

cluster-tools: ## Build etcd, kube-apiserver, kube-controller-manager, kube-scheduler (tests/cluster/go.mod) into .tools/bin
	bash scripts/cluster-tools.sh

cluster-up: install cluster-tools ## Start the control plane and the node agent on loopback; prints the kubeconfig
	$(PY) scripts/cluster.py up

cluster-down: ## Stop what cluster-up started
	$(PY) scripts/cluster.py down

lint: install ## ruff (lint + format check) and mypy --strict over the whole tree
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	bash scripts/typecheck.sh

format: install ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: install ## The main job on embedded defaults: generate a case, align it, report
	$(PY) scripts/demo.py

bench: install ## Benchmarks, printed as tables with the hardware and the baselines
	@status=0; for bench in bench/bench_*.py; do \
		echo "== $$bench"; $(VENV)/bin/python $$bench $(BENCH_ARGS) || status=1; \
	done; exit $$status

chart: install ## Regenerate the chart's values.schema.json, README.md and crds/ from their sources
	$(PY) scripts/chart.py write

image: install ## Build the OCI image with buildah (root, no Docker): .tools/image/mesial.oci.tar, its SBOM and digest
	bash scripts/image.sh

image-test: image ## Build the image, then run its entrypoints inside it as the chart's UID (tests/image/test_image.py)
	MESIAL_IMAGE=$(CURDIR)/$(TOOLS)/image/mesial.oci.tar $(PY) -m pytest tests/image/test_image.py $(PYTEST_ARGS)

services-up: install ## Start PostgreSQL, OpenBao and SeaweedFS (S3) on free ports; print URLs and credentials
	$(VENV)/bin/mesial services up

services-down: install ## Stop what services-up started
	$(VENV)/bin/mesial services down

clean: ## Remove the virtualenv, tools, caches and local data
	-$(VENV)/bin/mesial services down 2>/dev/null
	rm -rf $(VENV) $(TOOLS) .mesial build .pytest_cache .mypy_cache .ruff_cache .hypothesis demo-out aligner/_meshquery_lib*.so
