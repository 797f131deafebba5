VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test check bench bench-tenant bench-otlp bench-provider-reports bench-reprice clean messages

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tokenledger run-local

# The suite on both cores (TEST_WORKERS=0: one process), a test file per process at a time;
# the schema fuzzing alone after it: pytest-xdist drops the results schemathesis reports
# per operation, so there it would pass whatever they said.
TEST_WORKERS ?= 2
FUZZING := tests/test_schema_fuzzing.py

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --ignore=$(FUZZING) $(PYTEST_ARGS)
	$(PY) -m pytest -q $(FUZZING) $(PYTEST_ARGS)

check: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/ingest.py
	$(PY) bench/gateway.py
	$(PY) bench/tenant.py
	$(PY) bench/hot_reads.py
	BENCH_KEYS=100 BENCH_LEDGER_EVENTS=20000 BENCH_TAG=-small $(PY) bench/provider_reports.py

bench-tenant: $(STAMP)
	$(PY) bench/tenant.py

bench-otlp: $(STAMP)
	$(PY) bench/otlp.py

# The full size of issue 19: a 31-day sync of 1,000 keys x 20 models (620,000 rows).
bench-provider-reports: $(STAMP)
	$(PY) bench/provider_reports.py

bench-reprice: $(STAMP)
	$(PY) bench/reprice.py

messages: $(STAMP)
	$(PY) scripts/messages.py

clean:
	rm -rf $(VENV) build src/*.egg-info
