# jobstream: `make run` starts everything, `make test` checks everything.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test lint pytest docker-smoke migrate install install-dev clean bench

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

## run: virtualenv, pinned install, migrate, a Redis, then web + worker + Flower
run: migrate
	$(PY) -m core.devstack

## test: lint, type-check, the whole suite (it starts its own Redis), the Docker smoke test
test: install-dev lint pytest docker-smoke

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

pytest: install-dev
	$(VENV)/bin/pytest

docker-smoke: install-dev
	$(VENV)/bin/pytest -o addopts="" -p celery tests/docker -m docker -ra

clean:
	rm -rf $(VENV) var staticfiles .mypy_cache .ruff_cache .pytest_cache

## bench: every benchmark (about 10 minutes), then docs/performance.md
bench: install-dev
	bash bench/run.sh
