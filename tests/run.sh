#!/usr/bin/env bash
# Set up .venv with all extras (scripts/setup_env.sh) and the system packages only the tests use
# (scripts/setup_test_env.sh), then run the default test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/setup_test_env.sh
.venv/bin/python -m pytest -q "$@"
