"""Run Python code in a fresh process in which `transformers_mixedae` cannot be imported.

`python -I` drops PYTHONPATH, the user site and the working directory from `sys.path`, but an editable install
(`pip install -e .`, as scripts/test.sh does) is still found through site-packages. A meta-path finder placed
first refuses the package by name, so the process behaves like one where it was never installed; the code that
runs can check that with `import transformers_mixedae` (which must raise `ModuleNotFoundError`).
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

_PRELUDE = """
import importlib.abc
import os
import sys


class _RefuseTransformersMixedAE(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "transformers_mixedae":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _RefuseTransformersMixedAE())
sys.path[:] = [entry for entry in sys.path if not os.path.isdir(os.path.join(entry or ".", "transformers_mixedae"))]
try:
    import transformers_mixedae  # noqa: F401
except ModuleNotFoundError:
    PACKAGE_HIDDEN = True
else:
    PACKAGE_HIDDEN = False
"""


def run_without_package(code: str, workdir: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `code` (after the prelude that hides the package; `PACKAGE_HIDDEN` tells whether it worked) in
    `workdir`, offline, with a private cache for dynamic modules. Raises with the process output on failure."""
    script = workdir / "run_without_package.py"
    script.write_text(_PRELUDE + "\n" + textwrap.dedent(code), encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_MODULES_CACHE=str(workdir / "hf_modules"),
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="2",
    )
    result = subprocess.run(
        [sys.executable, "-I", str(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-6000:]}")
    return result
