"""Run Python code in a separate process in which `transformers_mixedae` cannot be imported.

`python -I` drops PYTHONPATH, the user site and the working directory from `sys.path`, but an editable install
(`pip install -e .`, as scripts/test.sh does) is still found through site-packages. A meta-path finder placed
first refuses the package by name, so the process behaves like one where it was never installed; code run there
can check it through `PACKAGE_HIDDEN` (True when `import transformers_mixedae` raised `ModuleNotFoundError`).

Importing torch and transformers costs several seconds, so one worker process serves every test of a pytest run:
it executes each request in a fresh namespace, in the requested working directory, offline.
"""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

_WORKER_SCRIPT = """
import importlib.abc
import json
import os
import sys
import traceback


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

import torch  # noqa: E402,F401  (imported once, for every request)
import transformers  # noqa: E402,F401

for line in sys.stdin:
    request = json.loads(line)
    os.chdir(request["cwd"])
    try:
        namespace = {"__name__": "__main__", "PACKAGE_HIDDEN": PACKAGE_HIDDEN}
        exec(compile(request["code"], request["name"], "exec"), namespace)
        error = None
    except BaseException:
        error = traceback.format_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    with open(request["reply"] + ".tmp", "w") as reply:
        json.dump({"error": error}, reply)
    os.replace(request["reply"] + ".tmp", request["reply"])
"""


class _Worker:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="without_package_"))
        env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
        env.update(
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            HF_MODULES_CACHE=str(self.root / "hf_modules"),
            TOKENIZERS_PARALLELISM="false",
            OMP_NUM_THREADS="2",
        )
        (self.root / "worker.py").write_text(_WORKER_SCRIPT, encoding="utf-8")
        self.log = open(self.root / "worker.log", "w+", encoding="utf-8")  # noqa: SIM115  (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-I", str(self.root / "worker.py")],
            cwd=self.root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.requests = 0

    def run(self, code: str, workdir: Path, timeout: float) -> None:
        self.requests += 1
        reply = self.root / f"reply_{self.requests}.json"
        request = {"code": code, "cwd": str(workdir), "reply": str(reply), "name": f"request_{self.requests}"}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + timeout
        while not reply.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"the worker without the package died:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no reply from the worker without the package in {timeout} s:\n{self.output()}")
            time.sleep(0.05)
        error = json.loads(reply.read_text())["error"]
        if error is not None:
            raise AssertionError(f"code failed without the package:\n{error}\n--- worker output ---\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return (self.root / "worker.log").read_text(encoding="utf-8")[-6000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


_worker: _Worker | None = None


def run_without_package(code: str, workdir: Path, timeout: float = 120) -> None:
    """Run `code` in `workdir` in the worker process without the package (`PACKAGE_HIDDEN` tells whether the
    package really is hidden there). Raises `AssertionError` with the traceback and worker output on failure."""
    global _worker
    if _worker is None or _worker.process.poll() is not None:
        _worker = _Worker()
        atexit.register(_worker.stop)
    _worker.run(textwrap.dedent(code), Path(workdir), timeout)
