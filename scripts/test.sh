#!/usr/bin/env bash
# The project's test command, for a fresh machine: creates .venv, installs the package with its test
# dependencies (torch pinned to the 2.13.0 CPU build), and runs the test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "$#" -eq 0 ]; then set -- tests; fi
exec python -m pytest -q "$@"
