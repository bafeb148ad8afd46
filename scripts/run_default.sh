#!/usr/bin/env bash
# The project's main job, for a fresh machine: sets up .venv, pre-trains MixedAE on the Fashion-MNIST subset shipped
# with the package, evaluates it (kNN, linear probe, reconstruction loss) and prints the results. Extra arguments are
# passed to examples/run_mim.py (e.g. --output_dir, --num_train_epochs, --model_type cae --config_overrides ...).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
# The embedded dataset needs no network; stay offline so nothing waits on Hub retries.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
# One process, so no launcher: the script's exit status reaches the caller as is (2 for a bad argument, 143 after a
# SIGTERM checkpoint), where `accelerate launch` turns any failure into 1. The in-script Accelerator takes the GPU when
# there is one, every core otherwise, and reads no accelerate config file.
exec python examples/run_mim.py examples/configs/mixedae_fashion_mnist.json "$@"
