"""`run_cli`: one line and an exit status for errors the user can fix, a traceback for bugs."""

import os
import subprocess
import sys

import pytest

from transformers_mixedae.cli import TRACEBACK_ENVIRONMENT_VARIABLE, run_cli
from transformers_mixedae.training.output_folders import OutputDirectoryError


class FlagNeeded(ValueError):
    pass


class DatasetUnreachable(ConnectionError):
    user_error = True


class BadInputFile(ValueError):
    exit_status = 1


def raising(error: BaseException):
    def main():
        raise error

    return main


def run_and_capture(main, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, program="prog")
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_the_result_of_main_is_returned(capsys):
    assert run_cli(lambda: {"eval_loss": 0.5}, program="prog") == {"eval_loss": 0.5}
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ValueError("--learning_rate must be positive, got -1"), 2),
        (FlagNeeded("--learning_rate must be positive, got -1"), 2),
        (OutputDirectoryError("--learning_rate must be positive, got -1"), 2),
        (FileNotFoundError("--learning_rate must be positive, got -1"), 1),
        (PermissionError("--learning_rate must be positive, got -1"), 1),
        (NotADirectoryError("--learning_rate must be positive, got -1"), 1),
        (DatasetUnreachable("--learning_rate must be positive, got -1"), 1),
        (BadInputFile("--learning_rate must be positive, got -1"), 1),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_user_errors_print_one_line_and_exit_with_their_status(error, status, capsys):
    assert run_and_capture(raising(error), capsys) == (
        status,
        "",
        "prog: error: --learning_rate must be positive, got -1\n",
    )


def test_a_multi_line_message_is_printed_on_one_line(capsys):
    error = ValueError("first line\n\n   second line  \nthird")
    assert run_and_capture(raising(error), capsys) == (2, "", "prog: error: first line second line third\n")


def test_an_empty_message_prints_the_error_class(capsys):
    assert run_and_capture(raising(FileNotFoundError()), capsys) == (1, "", "prog: error: FileNotFoundError\n")


def test_ctrl_c_exits_130(capsys):
    assert run_and_capture(raising(KeyboardInterrupt()), capsys) == (130, "", "prog: interrupted\n")


@pytest.mark.parametrize("error", [RuntimeError("a bug"), KeyError("a bug"), TypeError("a bug"), OSError("a bug")])
def test_other_exceptions_are_bugs_and_keep_their_traceback(error, capsys):
    with pytest.raises(type(error), match="a bug"):
        run_cli(raising(error), program="prog")
    assert capsys.readouterr().err == ""


def test_a_system_exit_from_argparse_passes_through(capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="prog")
    parser.add_argument("--steps", type=int)
    assert run_and_capture(lambda: parser.parse_args(["--steps", "x"]), capsys)[0] == 2


def test_the_traceback_of_user_errors_can_be_asked_for(monkeypatch):
    monkeypatch.setenv(TRACEBACK_ENVIRONMENT_VARIABLE, "1")
    with pytest.raises(ValueError, match="bad flag"):
        run_cli(raising(ValueError("bad flag")), program="prog")


def test_a_console_script_prints_exactly_one_line(tmp_path):
    """The real process: no traceback, no log line or warning around the message."""
    environment = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    environment.pop(TRACEBACK_ENVIRONMENT_VARIABLE, None)
    result = subprocess.run(
        [sys.executable, "-m", "transformers_mixedae.hub.export", "./does/not/exist", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
        timeout=300,
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "",
        "transformers-mixedae-export: error: model './does/not/exist' is a local folder that does not exist; check "
        "the path, or give a Hub id like owner/name.\n",
    )
    assert not (tmp_path / "out").exists()
