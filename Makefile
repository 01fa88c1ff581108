# NEX Collector — every command a developer, an operator or CI needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
PROTO_OUT := client
PROTO_FILES := $(shell find proto -name '*.proto' | sort)

.PHONY: install dev test lint proto proto-check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## a .venv with the project and its dev tools

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

dev: $(STAMP) ## embedded PostgreSQL + Redis, migrations, server and worker
	$(BIN)/nex-collector dev $(ARGS)

test: $(STAMP) ## the whole suite, starting whatever it needs
	$(BIN)/pytest $(PYTEST_ARGS)

proto: $(STAMP) ## regenerate the committed code in client/ from proto/
	rm -f $(PROTO_OUT)/nex/collector/v1/*_pb2*.py $(PROTO_OUT)/nex/collector/v1/*_pb2*.pyi
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -Iproto \
	  --python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
	  --mypy_out=$(PROTO_OUT) --mypy_grpc_out=$(PROTO_OUT) $(PROTO_FILES)

proto-check: proto ## fails when the committed generated code is stale
	git diff --exit-code -- $(PROTO_OUT)/nex/collector/v1
	@test -z "$$(git status --porcelain -- $(PROTO_OUT)/nex/collector/v1)" || \
	  (git status --porcelain -- $(PROTO_OUT)/nex/collector/v1; echo "generated code is stale: run make proto"; exit 1)

lint: $(STAMP) $(BUF) ## buf lint/format, ruff, mypy
	$(BUF) lint
	$(BUF) format --diff --exit-code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy client server tests bench

bench: $(STAMP) ## benchmarks, printed as ratios against a same-run baseline
	$(BIN)/python bench/collect.py
	$(BIN)/python bench/limited.py
	$(BIN)/python bench/dataset.py --sizes 50000,200000

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache build *.egg-info
