# The two commands a fresh machine needs: `make demo` and `make test`.
# Each one installs what it needs first (scripts/bootstrap.sh).
.PHONY: bootstrap demo test test-fast test-synapse bench bench-matrix element-deps

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/referral-bot demo

test: bootstrap
	.venv/bin/python -m pytest -q

test-fast: bootstrap
	.venv/bin/python -m pytest -q -m "not synapse"

test-synapse: bootstrap
	.venv/bin/python -m pytest -q -m synapse

bench: bootstrap
	.venv/bin/python bench/bench_sanitize.py

bench-matrix: bootstrap
	.venv/bin/python bench/bench_matrix.py --referrals 50 --inflight 20

element-deps: bootstrap  # Element's SDK for tests/matrix/test_element_shield.py (bootstrap does it when npm exists)
