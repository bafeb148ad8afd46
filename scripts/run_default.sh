#!/usr/bin/env bash
# The project's main job, for a fresh machine: sets up .venv, pre-trains MixedAE on the Fashion-MNIST subset shipped
# with the package, evaluates it (kNN, linear probe, reconstruction loss) and prints the results. Extra arguments are
# passed to examples/run_mim.py (e.g. --output_dir, --num_train_epochs, --model_type cae --config_overrides ...).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
# The embedded dataset needs no network; stay offline so nothing waits on Hub retries.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
# Without a GPU, --cpu makes accelerate give the process every physical core (otherwise it pins OMP_NUM_THREADS=1).
device_flags=()
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  device_flags=(--cpu)
fi
# -q: an error is the script's one line, without the launcher's own traceback after it.
exec accelerate launch -q "${device_flags[@]}" --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  examples/run_mim.py examples/configs/mixedae_fashion_mnist.json "$@"
