# Developer commands. `make test` is what CI runs (through .ci/run).
PY ?= .venv/bin/python
BUF ?= node_modules/.bin/buf
# gRPC port of `make serve`: PORT=50052 make serve
PORT ?= 50051

.PHONY: venv setup generate check-generated check-migrations lint typecheck format test bench serve

venv:             ## virtualenv with the package and its dev tools
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./client -e '.[dev]'

setup: venv       ## plus buf, from the npm registry
	npm ci --no-audit --no-fund --silent  # the lock file lists every platform: the tree stays clean

generate:         ## regenerate generated/ from protos/
	$(PY) scripts/generate_protos.py

check-generated: generate  ## fail when generated/ differs from what protos/ produce
	git diff --exit-code --stat -- generated/
	test -z "$$(git status --porcelain -- generated/)"

lint: typecheck mypy breaking deploy-check  ## ruff + buf lint + buf format check + type checks + buf breaking
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(BUF) lint
	$(BUF) format -d --exit-code protos

typecheck:        ## mypy --strict on a caller of the built client distribution, as it sees the stubs
	rm -rf build/typecheck
	$(PY) -m pip install -q --no-deps --no-build-isolation --target build/typecheck ./client
	MYPYPATH=build/typecheck $(PY) -m mypy --strict examples/typed_consumer.py

.PHONY: mypy breaking proto-baseline

.PHONY: deploy-check

deploy-check:     ## deploy/kubernetes against the Kubernetes schemas (strict, offline) and their cross-references
	$(PY) deploy/check_manifests.py

mypy:             ## mypy over server, client, CLI and emulator ([tool.mypy] in pyproject.toml)
	$(PY) scripts/run_mypy.py

breaking:         ## buf breaking: protos/ against the image of the last release (protos/baseline.binpb)
	$(BUF) breaking protos --against protos/baseline.binpb --exclude-imports

proto-baseline: generate  ## at a release: rewrite protos/baseline.binpb, what `make breaking` compares with
	$(BUF) build protos --exclude-source-info -o protos/baseline.binpb

format:
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .
	$(BUF) format -w protos

check-migrations:  ## fail when the store's models and its Alembic migrations differ
	$(PY) -m gemini_gateway.server.store check

test: setup check-generated lint check-migrations  ## everything CI checks
	$(PY) -m pytest -q

bench: venv      ## benchmark table: gateway vs direct REST (not part of `make test`)
	$(PY) -m bench

serve: venv node_modules/.bin/buf  ## the gateway on its embedded emulator, port $(PORT); buf for `npx buf curl`
	.venv/bin/gemini-gateway serve --emulator --port $(PORT)

node_modules/.bin/buf: package.json package-lock.json  ## what `setup` installs, again only when the lock file changes
	npm ci --no-audit --no-fund --silent
	touch $@
