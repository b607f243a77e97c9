# jobstream: `make run` starts everything, `make test` checks everything.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test lint node-test pytest pytest-pg docker-smoke migrate install install-dev clean bench

$(VENV)/.installed-runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-runtime requirements-dev.txt
	$(PIP) install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed-runtime
install-dev: $(VENV)/.installed-dev

migrate: install
	$(PY) manage.py migrate --noinput

## run: virtualenv, pinned install, migrate, a Redis, then web + worker + Flower; for
## development, so DEBUG is on (the settings default to off) unless the shell sets it
run: export DEBUG ?= true
run: migrate
	$(PY) -m core.devstack

## test: the system packages the tests drive, lint, type-check, the browser modules' unit
## tests, the whole suite (it starts its own Redis) on SQLite, then again on PostgreSQL when
## one answers, then the Docker smoke test
test: system-packages install-dev lint node-test pytest pytest-pg docker-smoke

# system-packages: Debian's chromium, docker-compose, nginx, redis-server and nodejs;
# installed with apt-get when missing and root, else it stops naming the command to run.
.PHONY: system-packages
system-packages:
	@bin/system-packages

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

## node-test: the browser modules' unit tests (jobs/static/jobs/), Node's own runner, no packages
node-test:
	@command -v node >/dev/null 2>&1 || { echo "node-test: node not found; install Debian's nodejs (apt-get install nodejs)"; exit 1; }
	node --test tests/js/

pytest: install-dev
	$(VENV)/bin/pytest

# pytest-pg: the whole suite again on PostgreSQL, when a server answers at PG_URL (CI
# machines: 127.0.0.1:5432, trust auth for `postgres`); skipped, saying so, otherwise.
# Each run names its own database (pid and time), so runs side by side never share
# one; pytest-django creates test_<name> and drops it, and the end of the recipe drops
# it again in case pytest died before it could.
PG_URL ?= postgres://postgres@127.0.0.1:5432
PG_ANSWERS = import sys, psycopg; psycopg.connect(sys.argv[1] + "/postgres", connect_timeout=3).close()
PG_DROP = import sys, psycopg; psycopg.connect(sys.argv[1] + "/postgres", autocommit=True).execute( \
	"DROP DATABASE IF EXISTS test_" + sys.argv[2] + " WITH (FORCE)")

pytest-pg: install-dev
	@if ! $(PY) -c '$(PG_ANSWERS)' '$(PG_URL)' 2>/dev/null; then \
		echo "pytest-pg: SKIPPED: no PostgreSQL answers at $(PG_URL) (start one, or set PG_URL=postgres://user@host:port)"; \
	else \
		name="jobstream_ci_$$$$_$$(date +%s)"; \
		echo "pytest-pg: the whole suite on PostgreSQL at $(PG_URL), test database test_$$name"; \
		status=0; DATABASE_URL="$(PG_URL)/$$name" $(VENV)/bin/pytest || status=$$?; \
		$(PY) -c '$(PG_DROP)' '$(PG_URL)' "$$name" || echo "pytest-pg: could not drop test_$$name"; \
		exit $$status; \
	fi

docker-smoke: install-dev
	$(VENV)/bin/pytest -o addopts="" -p tests.environment -p celery tests/docker -m docker -ra

clean:
	rm -rf $(VENV) var staticfiles .mypy_cache .ruff_cache .pytest_cache

## bench: every benchmark (about 10 minutes), then docs/performance.md
bench: install-dev
	bash bench/run.sh
