"""Shared test configuration.

Tests marked ``synapse`` start a real Synapse homeserver on loopback; run them
alone with ``make test-synapse`` (or ``pytest -m synapse``).
"""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_CORPUS = REPO_ROOT.parent / "shared" / "corpus"
