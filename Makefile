# The three commands a contributor needs; CI (.ci/run) runs the same lint and test commands in a fresh environment.
.PHONY: install test lint

install:  ## the project, editable, with the test and lint tools; and the git hooks of .pre-commit-config.yaml
	python -m pip install -e ".[dev]"
	pre-commit install

test:  ## the default suite (pytest -m slow for the long trainings)
	pytest

lint:  ## ruff (lint and format check), mypy as configured in pyproject.toml, and the docs site built strictly
	ruff check .
	ruff format --check .
	mypy
	site=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir "$$site"; rc=$$?; rm -rf "$$site"; exit $$rc
