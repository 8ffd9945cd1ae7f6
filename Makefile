# postbell — two commands do all set-up: `make dev` runs it, `make test` tests it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: dev test lint bench schema mutate clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "postbell needs Python 3.11 or newer (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

dev: $(STAMP)
	$(BIN)/postbell dev

test: $(STAMP)
	$(BIN)/pytest

# mypy reads the package as it is installed (postbell.app, postbell.workers, ...):
# a tree of links, since it cannot follow pyproject's package-dir.
TYPECHECK := build/typecheck

lint: $(STAMP)
	$(BIN)/ruff check app workers postbell tests bench
	$(BIN)/ruff format --check app workers postbell tests bench
	@rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/postbell
	@for f in postbell/*.py; do ln -s $(CURDIR)/$$f $(TYPECHECK)/postbell/; done
	@for d in app workers sql; do ln -s $(CURDIR)/$$d $(TYPECHECK)/postbell/$$d; done
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml

# sql/schema.sql: the schema as the migrations leave it (a test checks it stays so).
schema: $(STAMP)
	$(BIN)/python -m tests.tools.dump_schema

# Mutation testing of the guarantee-holding modules (long; not part of make test).
mutate: $(STAMP)
	$(BIN)/python -m tests.tools.mutate $(ARGS)

# The bench extra (Celery, Redis client, py-spy) on top of dev; when it cannot be
# installed the Celery baseline is skipped with a message, the rest still runs.
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): pyproject.toml $(STAMP)
	-$(BIN)/pip install --quiet -e '.[dev,bench]' && touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info
