"""Runs that are killed, signalled or resumed with other settings, and their run folders."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import tiny_overrides
from uda_cli.main import app
from uda_core.checkpoint import RunLock
from uda_core.errors import PREEMPTED_EXIT
from uda_core.logging import MetricsLog
from uda_data.errors import DataError
from uda_methods.run import default_run_name

ITERATIONS = 12


def uda_command(work, name, *extra):
    sets = tiny_overrides(work, ITERATIONS)
    return [sys.executable, "-m", "uda_cli.main", "train", "--name", name, *sets, *extra]


def resume_command(work):
    return [
        sys.executable,
        "-m",
        "uda_cli.main",
        "train",
        "--resume",
        "latest",
        "--work-dir",
        str(work),
    ]


def uda(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, synthetic_root):
    work = tmp_path_factory.mktemp("straight")
    subprocess.run(uda_command(work, "straight"), check=True, capture_output=True)
    return torch.load(
        work / "straight" / "checkpoints" / f"iter_{ITERATIONS:06d}.pt", weights_only=True
    )


def stop_after_first_checkpoint(work, name, sig):
    proc = subprocess.Popen(
        uda_command(work, name), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    first = work / name / "checkpoints" / "iter_000003.pt"
    deadline = time.time() + 600
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate()
    final = work / name / "checkpoints" / f"iter_{ITERATIONS:06d}.pt"
    assert first.exists() and not final.exists(), "the run was not stopped mid-way"
    return proc.returncode, err, final


def assert_same_weights(a, b):
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_killed_run_resumes_to_identical_weights(tmp_path, straight_run):
    _, _, final = stop_after_first_checkpoint(tmp_path, "killed", signal.SIGKILL)
    resumed = subprocess.run(resume_command(tmp_path), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "at iteration " in resumed.stdout
    assert_same_weights(straight_run, torch.load(final, weights_only=True))
    logged = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").open()]
    keys = [(r["iteration"], r.get("split", "train")) for r in logged]
    assert len(keys) == len(set(keys)), "iterations after the checkpoint were logged twice"
    assert max(r["iteration"] for r in logged) == ITERATIONS


def test_a_resume_drops_the_records_after_its_checkpoint_and_a_half_written_line(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for iteration in (1, 2, 3, 4):
        log.write({"iteration": iteration, "loss": 1.0})
    log.write({"iteration": 3, "split": "val", "mIoU": 0.5})
    with log.path.open("a") as f:
        f.write('{"iteration": 5, "lo')  # killed mid-write
    log.keep_up_to(3)
    kept = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert [(r["iteration"], r.get("split")) for r in kept] == [
        (1, None),
        (2, None),
        (3, None),
        (3, "val"),
    ]


def test_sigterm_saves_a_checkpoint_and_resume_is_bit_exact(tmp_path, straight_run):
    code, err, final = stop_after_first_checkpoint(tmp_path, "stopped", signal.SIGTERM)
    assert code == PREEMPTED_EXIT, err
    assert "stopped by SIGTERM" in err and f"--work-dir {tmp_path / 'stopped'}" in err
    assert "Traceback" not in err
    checkpoints = tmp_path / "stopped" / "checkpoints"
    assert not list(checkpoints.glob(".*.tmp")) and not list((tmp_path / "stopped").glob(".*.tmp"))
    resumed = subprocess.run(resume_command(tmp_path / "stopped"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(straight_run, torch.load(final, weights_only=True))


def test_sigusr1_stops_after_the_iteration_with_a_checkpoint(tmp_path, synthetic_root):
    command = [
        sys.executable,
        "-m",
        "uda_cli.main",
        "train",
        "--method",
        "source-only",
        "--name",
        "u",
        *tiny_overrides(tmp_path, 200),
        "--set",
        "runtime.checkpoint_interval=100",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "u" / "metrics.jsonl"
    deadline = time.time() + 600
    while (
        proc.poll() is None
        and time.time() < deadline
        and not (metrics.exists() and metrics.read_text().count("\n") >= 2)
    ):
        time.sleep(0.01)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT, err
    saved = [p.name for p in (tmp_path / "u" / "checkpoints").glob("iter_*.pt")]
    assert len(saved) == 1 and saved[0] != "iter_000100.pt", saved
    assert f"stopped by SIGUSR1 after iteration {int(saved[0][5:11])}/200" in err


@pytest.fixture()
def short_run(tmp_path, synthetic_root):
    result = uda("train", "--method", "source-only", "--name", "r", *tiny_overrides(tmp_path, 3))
    assert result.exit_code == 0, result.output
    return tmp_path


def test_resume_applies_more_iterations_and_a_new_lr_and_records_them(short_run):
    result = uda(
        "train",
        "--resume",
        "latest",
        "--work-dir",
        str(short_run),
        "--iters",
        "4",
        "--set",
        "optim.lr=1e-4",
    )
    assert result.exit_code == 0, result.output
    assert "resume changes runtime.iterations: 3 -> 4" in result.output
    assert "resume changes optim.lr: 0.001 -> 0.0001" in result.output
    config = json.loads((short_run / "r" / "config.json").read_text())
    assert config["runtime"]["iterations"] == 4 and config["optim"]["lr"] == 1e-4
    state = torch.load(short_run / "r" / "checkpoints" / "iter_000004.pt", weights_only=True)
    assert state["scheduler"]["base_lrs"][0] == pytest.approx(1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plugin", "dispersion"], "plugin dispersion was not part of the run"),
        (["--set", "model.channels=8"], "model.channels cannot change on resume"),
        (["--iters", "2"], "is fewer"),
    ],
)
def test_resume_refuses_what_it_cannot_apply_in_one_line(short_run, args, message):
    result = uda("train", "--resume", "latest", "--work-dir", str(short_run), *args)
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_resume_of_weights_only_and_of_a_finished_run_say_so(short_run):
    best = short_run / "r" / "checkpoints" / "best.pt"
    result = uda("train", "--resume", str(best))
    assert result.exit_code == 2 and "holds weights only" in result.output
    result = uda("train", "--resume", "latest", "--work-dir", str(short_run))
    assert result.exit_code == 0 and "nothing to train" in result.output
    assert "finished at iteration 3/3" in result.output


def test_a_second_run_on_a_locked_run_folder_refuses(tmp_path, synthetic_root):
    with RunLock(tmp_path / "busy"):
        result = uda("train", "--name", "busy", *tiny_overrides(tmp_path, 2))
    assert result.exit_code == 2 and "is in use by process" in result.output
    assert not (tmp_path / "busy" / "checkpoints").exists()


def test_default_run_names_of_two_processes_differ(monkeypatch):
    from uda_methods.presets import preset

    cfg = preset("quick")
    first = default_run_name(cfg)
    monkeypatch.setattr(os, "getpid", lambda: os.getppid())
    assert default_run_name(cfg) != first


def failing_eval(exc):
    def evaluate(self, method, accelerator):
        raise exc

    return evaluate


def test_a_failed_final_evaluation_keeps_the_trained_weights(tmp_path, synthetic_root, monkeypatch):
    monkeypatch.setattr(
        "uda_core.engine.Trainer._evaluate", failing_eval(DataError("val/x.png is truncated"))
    )
    sets = tiny_overrides(tmp_path, 2)
    result = uda("train", "--name", "e", *sets, "--set", "runtime.eval_interval=2")
    final = tmp_path / "e" / "checkpoints" / "iter_000002.pt"
    assert result.exit_code == 2 and "val/x.png is truncated" in result.output
    assert f"kept in {final}" in result.output and final.is_file()


def test_ctrl_c_during_evaluation_keeps_the_weights_and_names_the_work_dir(
    tmp_path, synthetic_root, monkeypatch
):
    monkeypatch.setattr("uda_core.engine.Trainer._evaluate", failing_eval(KeyboardInterrupt()))
    result = uda("train", "--name", "c", *tiny_overrides(tmp_path, 2))
    assert result.exit_code == 130
    assert (tmp_path / "c" / "checkpoints" / "iter_000002.pt").is_file()
    assert f"uda train --resume latest --work-dir {tmp_path / 'c'}" in result.output


def test_ctrl_c_in_eval_gives_no_training_hint(tmp_path, monkeypatch, short_run):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("uda_cli.main.evaluate", interrupted)
    result = uda("eval", str(short_run / "r" / "checkpoints" / "iter_000003.pt"))
    assert result.exit_code == 130 and "interrupted" in result.output
    assert "uda train" not in result.output
