# Sourced by scripts/test.sh and scripts/run_default.sh: create and activate .venv with the package installed.
# torch is pinned to 2.13.0, whose CPU build installs from a local file here; on a GPU machine install the
# torch build you need first and set SKIP_TORCH_PIN=1.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=".venv/.installed-$(cat setup.py | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip
  if [ "${SKIP_TORCH_PIN:-0}" != "1" ]; then
    python -m pip install -q "torch==2.13.0"
  fi
  python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
