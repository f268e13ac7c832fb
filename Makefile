# pipeline-db: `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with its dev extra

run: $(STAMP) ## Serve the API on the embedded SQLite default (config/pipeline.yaml)
	$(BIN)/pipeline-db db upgrade
	$(BIN)/pipeline-db serve --with-worker

test: $(STAMP) ## Run the whole test suite on SQLite and PostgreSQL
	$(BIN)/pytest

lint: $(STAMP) ## ruff check, ruff format --check, mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy pipeline_db server

format: $(STAMP) ## Apply ruff's formatting and autofixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The benchmark's extra (pgqueuer, procrastinate) goes in only for `make bench`.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## Run the benchmarks (ratios against raw asyncpg, pgqueuer, procrastinate)
	$(BIN)/python -m bench

up: ## Build and start the compose stack (set POSTGRES_PASSWORD and PIPELINE_API_TOKEN)
	docker compose up --detach --build --wait

down: ## Stop the compose stack (its database volume stays)
	docker compose down

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info

.PHONY: help install run test lint format bench up down clean
