# NEX Collector — every command a developer, an operator or CI needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
PROTO_OUT := client
PROTO_FILES := $(shell find proto -name '*.proto' | sort)

.PHONY: install dev test test-fast fuzz lint proto proto-check sync-client sync-client-check bench clean

# The client distribution (./client) and the server (.), both editable, in one
# resolve so the server's `nex-collector-client` requirement is the local one;
# every other package at the version constraints.txt pins.
$(STAMP): pyproject.toml client/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e './client[progress]' -e '.[embedded,dev]'
	touch $(STAMP)

install: $(STAMP) ## a .venv with the client, the server (+ embedded PostgreSQL/Redis) and dev tools

.PHONY: constraints breaking
constraints: $(STAMP) ## re-pin constraints.txt to exactly what .venv holds now
	{ echo "# The exact versions make install, CI and the image use; make constraints rewrites it."; \
	  $(BIN)/pip freeze --exclude-editable --local | sort -f; } > constraints.txt
	touch $(STAMP)

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

dev: $(STAMP) ## embedded PostgreSQL + Redis, migrations, server and worker
	$(BIN)/nex-collector dev $(ARGS)

test: $(STAMP) ## the whole suite, starting whatever it needs
	$(BIN)/pytest $(PYTEST_ARGS)

# unit, contract and providers (markers set by folder in tests/conftest.py):
# 593 tests, about 47 s on the 2-core box while other work ran (10 s of it
# collecting). Any marker works the same: pytest -m "e2e and not chaos".
test-fast: $(STAMP) ## the quick tests, for every save: no collector, no chaos
	$(BIN)/pytest -m "unit or contract or providers" $(PYTEST_ARGS)

fuzz: $(STAMP) ## the property tests with many more examples (a few minutes)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest tests/fuzz tests/e2e/test_template_sandbox.py \
	  -p no:cacheprovider --timeout 1800 $(PYTEST_ARGS)

proto: $(STAMP) ## regenerate the committed code in client/ from proto/
	rm -f $(PROTO_OUT)/nex/collector/v1/*_pb2*.py $(PROTO_OUT)/nex/collector/v1/*_pb2*.pyi
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -Iproto \
	  --python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
	  --mypy_out=$(PROTO_OUT) --mypy_grpc_out=$(PROTO_OUT) $(PROTO_FILES)

proto-check: proto ## fails when the committed generated code is stale
	git diff --exit-code -- $(PROTO_OUT)/nex/collector/v1
	@test -z "$$(git status --porcelain -- $(PROTO_OUT)/nex/collector/v1)" || \
	  (git status --porcelain -- $(PROTO_OUT)/nex/collector/v1; echo "generated code is stale: run make proto"; exit 1)

SYNC_CLIENT := client/nex/collector/client/_sync_client.py
sync-client: $(STAMP) ## regenerate the blocking Client (_sync_client.py) from the AsyncClient
	$(BIN)/python client/tools/gen_sync_client.py

sync-client-check: sync-client ## fails when the committed _sync_client.py is stale
	@git diff --exit-code -- $(SYNC_CLIENT) || \
	  (echo "$(SYNC_CLIENT) is stale: run make sync-client"; exit 1)

# The schema against the previous commit (CI's clone is main, so HEAD~1 is main
# before the change under test) and against the newest release tag, if any.
# BREAKING_AGAINST='.git#branch=main' (any buf input) compares against that instead.
breaking: $(BUF) ## buf breaking against the previous commit and the last tag
	@if [ -n "$(BREAKING_AGAINST)" ]; then against='$(BREAKING_AGAINST)'; \
	else \
	  against=''; \
	  git rev-parse --quiet --verify 'HEAD~1^{commit}' >/dev/null && against='.git#ref=HEAD~1'; \
	  tag=$$(git describe --tags --abbrev=0 2>/dev/null) && against="$$against .git#tag=$$tag"; \
	fi; \
	if [ -z "$$against" ]; then echo "buf breaking: no previous commit or tag to compare with; skipped"; fi; \
	for a in $$against; do echo "buf breaking --against $$a"; $(BUF) breaking --against "$$a" || exit 1; done

lint: $(STAMP) $(BUF) ## buf lint/format, ruff, mypy, import layers (lint-imports)
	$(BUF) lint
	$(BUF) format --diff --exit-code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy client server tests bench
	$(BIN)/lint-imports

# 18-28 min on the 2-core box, by how busy it is (limited.py alone takes 5-9,
# provider_batch.py about 3). Bigger runs:
#   make bench BENCH_RUNS=2000 BENCH_REPEATS=3 DATASET_SIZES=200000,500000
BENCH_RUNS ?= 400
BENCH_REPEATS ?= 1
DATASET_SIZES ?= 20000,100000
PROVIDER_BATCH_RUNS ?= 100000
bench: $(STAMP) ## benchmarks, printed as ratios against same-run peers (Curator: bench/.venv-curator, made on first use)
	$(BIN)/python bench/collect.py --runs $(BENCH_RUNS) --repeats $(BENCH_REPEATS)
	$(BIN)/python bench/limited.py
	$(BIN)/python bench/dataset.py --sizes $(DATASET_SIZES)
	$(BIN)/python bench/watch.py --runs 2000 --watchers 1,200,1000
	$(BIN)/python bench/read.py --sizes 20000,100000
	$(BIN)/python bench/provider_batch.py --runs $(PROVIDER_BATCH_RUNS)

clean:
	rm -rf $(VENV) bench/.venv-curator bench/.venv-curator.log bench/.curator-pass.log .tools .pytest_cache .mypy_cache .ruff_cache build *.egg-info \
	  client/build client/*.egg-info server/*.egg-info
