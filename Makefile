# Short verbs for a fresh machine: `make run` (service on the embedded default), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-ml test-service test-ui bench lint migrate messages screenshots fuzz

install: $(STAMP)

# torch is installed first with an exact pin: here that pin resolves to the CPU wheel on disk,
# where a looser requirement would pull several GB of CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: install
	$(BIN)/notetune serve

migrate: install
	$(BIN)/notetune migrate

test: install
	bash scripts/ensure_services.sh
	bash scripts/ensure_browser.sh
	$(BIN)/python -m pytest -q -rs

test-ml: install
	$(BIN)/python -m pytest -q tests/ml

test-service: install
	bash scripts/ensure_services.sh
	$(BIN)/python -m pytest -q tests/service

test-ui: install
	bash scripts/ensure_services.sh
	bash scripts/ensure_browser.sh
	$(BIN)/python -m pytest -q tests/ui

# The README's screenshots: the browser test's run, photographed at a laptop's width.
screenshots: install
	bash scripts/ensure_services.sh
	bash scripts/ensure_browser.sh
	NOTETUNE_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q tests/ui/test_browser.py

# The pages' strings: extract them (babel.cfg) and merge them into each language's catalog; the
# app reads the .po files directly, so there is nothing to compile.
messages: install
	$(BIN)/pybabel extract -F babel.cfg -k N_ --no-location --omit-header --sort-output -o api/locale/messages.pot .
	$(BIN)/pybabel update -i api/locale/messages.pot -d api/locale --no-location --no-wrap

# The schemathesis run of the test suite, longer: more examples per operation, another seed.
FUZZ_EXAMPLES ?= 200
FUZZ_SEED ?= 1
fuzz: install
	bash scripts/ensure_services.sh
	NOTETUNE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) NOTETUNE_FUZZ_SEED=$(FUZZ_SEED) \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/service/test_schemathesis.py

bench: install
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/quality.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
