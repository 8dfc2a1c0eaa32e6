# The two commands of the README: `make run` and `make test` (both set up what is missing).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test eval bench clean help

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: $(STAMP)  ## create .venv with the project and its test extras

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install  ## validate the knowledge base, migrate the database, serve on http://127.0.0.1:8000
	$(BIN)/vssbot kb validate
	$(BIN)/vssbot db upgrade
	$(BIN)/vssbot serve

test: install  ## run the whole test suite (PostgreSQL too when VSSBOT_TEST_POSTGRES_URL is set)
	$(BIN)/pytest

eval: install  ## the project's own evaluation sets, with the list of misses
	$(BIN)/vssbot eval tests/eval
	$(BIN)/vssbot eval tests/heldout
	$(BIN)/vssbot eval tests/blind

bench: install  ## matcher latency and memory, shipped size and 2,000 entries, against a naive baseline
	$(BIN)/python benchmarks/matcher.py

clean:  ## remove the virtualenv and local data
	rm -rf $(VENV) var .pytest_cache
