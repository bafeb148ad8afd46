"""The example scripts as a user runs them: an error the user can fix is one line `<script>: error: ...` on stderr,
with exit status 2 (arguments) or 1 (paths), no traceback, and nothing written."""

import os
import subprocess
import sys

from tiny_runs import REPOSITORY, RUN_IMAGE_CLASSIFICATION, RUN_MIM, folder_fingerprint


def run_script(script, *argv, cwd):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                   "PYTHONPATH": os.pathsep.join([str(REPOSITORY / "src"), os.environ.get("PYTHONPATH", "")])}
    environment.pop("TRANSFORMERS_MIXEDAE_TRACEBACK", None)
    return subprocess.run([sys.executable, str(script), *argv], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=240)


def assert_one_error_line(process, status, line):
    assert process.returncode == status, process.stderr[-3000:]
    assert "Traceback" not in process.stderr and "Traceback" not in process.stdout
    assert process.stderr.rstrip("\n").splitlines()[-1] == line


def test_run_mim_refuses_zero_epochs_in_one_line(tmp_path):
    process = run_script(RUN_MIM, "--num_train_epochs", "0", "--output_dir", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_error_line(process, 2, "run_mim.py: error: --num_train_epochs 0.0 is not valid: a number of epochs > 0 "
                                      "(fractions allowed), or set --max_steps.")
    assert not (tmp_path / "out").exists()


def test_run_mim_refuses_a_finished_output_folder_in_one_line_and_changes_nothing(tmp_path):
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "config.json").write_text('{"model_type": "mixedae"}')
    (finished / "notes.txt").write_text("mine")
    before = folder_fingerprint(finished)
    process = run_script(RUN_MIM, "--output_dir", str(finished), "--max_steps", "1", cwd=tmp_path)
    assert_one_error_line(process, 2, f"run_mim.py: error: '{finished}' already holds a finished result (config.json): "
                                      "not starting the run, and nothing was changed. Pass --overwrite_output_dir to "
                                      "replace it, or choose another output folder.")
    assert folder_fingerprint(finished) == before


def test_run_image_classification_names_a_missing_local_model_in_one_line(tmp_path):
    model = "./does/not/exist"
    process = run_script(RUN_IMAGE_CLASSIFICATION, "--model_name_or_path", model, "--output_dir", str(tmp_path / "out"),
                         cwd=tmp_path)
    assert_one_error_line(process, 1, f"run_image_classification.py: error: --model_name_or_path '{model}' is a local "
                                      "folder that does not exist; check the path, or give a Hub id like owner/name.")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_evaluate_baselines_refuses_a_checkpoint_it_would_report_as_the_random_encoder_in_one_line(tmp_path):
    process = run_script(REPOSITORY / "examples" / "evaluate_baselines.py", "--model_name_or_path", "owner/model",
                         cwd=tmp_path)
    assert_one_error_line(process, 2, "evaluate_baselines.py: error: --model_name_or_path owner/model is not valid "
                                      "here: the baselines are raw pixels and a randomly initialised encoder built "
                                      "from --model_type and --config_overrides. To evaluate a checkpoint, run "
                                      "run_mim.py with it and --max_steps 0.")
