# Sourced by scripts/test.sh and scripts/run_default.sh: create and activate .venv with the package installed.
# torch is pinned to 2.13.0, whose CPU build installs from a local file here; on a GPU machine install the
# torch build you need first and set SKIP_TORCH_PIN=1.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=".venv/.installed-$(cat setup.py scripts/setup_env.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip
  if [ "${SKIP_TORCH_PIN:-0}" != "1" ]; then
    python -m pip install -q "torch==2.13.0"
  fi
  python -m pip install -q -e ".[dev]"
  # OpenAI's DALL-E package, for the tests of the CAE tokenizer wrapper: it imports neither torchvision nor anything
  # that torch 2.13 lacks, but lists torchvision, which does not install beside the pinned torch; hence no deps.
  python -m pip install -q attrs requests
  python -m pip install -q --no-deps "dall-e==0.1"
  touch "$stamp"
fi
