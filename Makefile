.PHONY: setup demo test ui lint bench

setup:
	bash scripts/setup.sh

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

ui:
	bash scripts/ui.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

bench:
	.venv/bin/python benchmarks/embeddings.py --json artifacts/embeddings.json
	.venv/bin/python benchmarks/incremental.py --json artifacts/incremental.json
