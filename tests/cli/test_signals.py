"""Signals and failures as a user meets them: `uda train --num-processes 2` reports a failing
process in one line, Ctrl-C under the launcher says once how to go on, and SIGTERM ends
`uda eval` and `uda predict` with one line and no half-written file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import tiny_overrides
from uda_cli.errors import TERMINATED_EXIT, friendly_errors, print_reports
from uda_cli.main import app
from uda_core.errors import INTERRUPTED_EXIT, PREEMPTED_EXIT

UDA = [sys.executable, "-m", "uda_cli.main"]
CPU = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def start(*args: str) -> subprocess.Popen:
    """`uda ARGS` in its own process group (as a shell runs a job), on the CPU."""
    return subprocess.Popen(
        [*UDA, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CPU,
        start_new_session=True,
    )


def wait_for(path_found, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path_found():
        if proc.poll() is not None:
            pytest.fail(f"ended before the signal: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("never started working")
        time.sleep(0.05)


def signal_and_wait(proc: subprocess.Popen, sig: int, group: bool = False) -> str:
    """Send ``sig`` (to the process group with ``group``) and return what it printed on stderr."""
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        return proc.communicate(timeout=600)[1]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def temporary_files(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*.tmp")]


def test_the_launcher_prints_the_first_user_error_alone(tmp_path, capsys):
    """A process's error makes its peer fail in turn (gloo loses the connection): the peer's
    traceback is left out and the exit status is the error's."""
    (tmp_path / "1.json").write_text(
        json.dumps({"rank": 1, "message": "Traceback ...", "code": 1, "error": False}).replace(
            "}", ', "traceback": true}'
        )
    )
    time.sleep(0.01)
    (tmp_path / "0.json").write_text(
        json.dumps({"rank": 0, "message": "x.png is truncated", "code": 2, "error": True})
    )
    assert print_reports(tmp_path) == 2
    assert capsys.readouterr().err == "error: x.png is truncated\n"
    assert print_reports(tmp_path / "none") is None


@pytest.mark.slow  # two processes start torch: over 20 s on two cores
def test_two_processes_report_a_bad_file_read_by_a_data_worker_in_one_line(
    tmp_path, synthetic_root
):
    """A truncated source image read in a DataLoader worker of one of two gloo processes: one
    line naming the file, exit status 2, no traceback of the other process."""
    source = tmp_path / "source"
    shutil.copytree(synthetic_root / "source", source)
    bad = source / "images" / "00003.png"
    bad.write_bytes(bad.read_bytes()[:200])
    sets = [*tiny_overrides(tmp_path), "--set", "data.workers=1"]
    sets += ["--set", f"data.source.root={source}"]
    result = subprocess.run(
        [*UDA, "train", "--method", "source-only", "--num-processes", "2", *sets],
        capture_output=True,
        text=True,
        env=CPU,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"error: {bad}: cannot be read as an image (image file is truncated); replace the file\n"
    )


@pytest.mark.slow  # two processes start torch: over 20 s on two cores
def test_ctrl_c_under_the_launcher_says_once_how_to_go_on(tmp_path, synthetic_root):
    """Ctrl-C reaches the launcher and both processes: one line with the resume hint, no
    traceback, exit status 130."""
    sets = [*tiny_overrides(tmp_path, 500), "--set", "runtime.checkpoint_interval=1"]
    proc = start("train", "--method", "source-only", "--name", "r", "--num-processes", "2", *sets)
    wait_for(lambda: (tmp_path / "r" / "checkpoints" / "iter_000001.pt").exists(), proc)
    err = signal_and_wait(proc, signal.SIGINT, group=True)
    assert proc.returncode == INTERRUPTED_EXIT, err
    assert err.count("\n") == 1 and err.startswith("interrupted; the trained weights are kept")
    assert err.endswith(f"continue with `uda train --resume latest --work-dir {tmp_path / 'r'}`\n")


def test_sigterm_to_the_process_group_of_training_with_data_workers_leaves_a_resumable_checkpoint(
    tmp_path, synthetic_root
):
    """A scheduler signals the whole job (the trainer and its DataLoader workers): the workers
    leave the stop to the trainer, which saves a checkpoint, prints one line and exits with
    status 3; nothing half-written is left and `--resume latest` continues from it."""
    sets = [*tiny_overrides(tmp_path, 500), "--set", "data.workers=2"]
    sets += ["--set", "runtime.checkpoint_interval=400", "--set", "runtime.eval_interval=400"]
    proc = start("train", "--method", "source-only", "--name", "w", *sets)
    metrics = tmp_path / "w" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, proc)
    err = signal_and_wait(proc, signal.SIGTERM, group=True)
    assert proc.returncode == PREEMPTED_EXIT, err
    assert err.count("\n") == 1 and err.startswith("stopped by SIGTERM after iteration "), err
    assert err.endswith(f"continue with `uda train --resume latest --work-dir {tmp_path / 'w'}`\n")
    (saved,) = (tmp_path / "w" / "checkpoints").glob("iter_*.pt")
    assert not temporary_files(tmp_path / "w")
    done = int(saved.stem.removeprefix("iter_"))
    more = ["--iters", str(done + 1), "--set", "data.workers=0"]
    result = CliRunner().invoke(
        app, ["train", "--resume", "latest", "--work-dir", str(tmp_path), *more]
    )
    assert result.exit_code == 0, result.output
    assert (saved.parent / f"iter_{done + 1:06d}.pt").is_file()


@pytest.fixture
def many_val_images(tmp_path, synthetic_root) -> Path:
    """A Cityscapes-layout val set of 300 copies of one embedded target image."""
    found = next((synthetic_root / "target" / "leftImg8bit" / "val").rglob("*.png"))
    label = next((synthetic_root / "target" / "gtFine" / "val").rglob("*labelTrainIds.png"))
    root = tmp_path / "val"
    for folder, original, suffix in (
        ("leftImg8bit", found, "leftImg8bit"),
        ("gtFine", label, "gtFine_labelTrainIds"),
    ):
        city = root / folder / "val" / "copy"
        city.mkdir(parents=True)
        for i in range(300):
            shutil.copyfile(original, city / f"copy_{i:06d}_000019_{suffix}.png")
    return root


def test_sigterm_ends_eval_in_one_line_without_temporary_files(
    tmp_path, checkpoint, many_val_images
):
    preds, output = tmp_path / "preds", tmp_path / "out" / "eval.json"
    proc = start(
        "eval",
        str(checkpoint),
        "--val-root",
        str(many_val_images),
        "--save-predictions",
        str(preds),
        "--output",
        str(output),
    )
    wait_for(lambda: any(preds.glob("*_pred.png")), proc)
    err = signal_and_wait(proc, signal.SIGTERM)
    assert proc.returncode == TERMINATED_EXIT, err
    assert err == "stopped by SIGTERM; no results were written; run the command again\n"
    assert not output.exists() and not temporary_files(preds, output.parent)


def test_sigterm_ends_predict_in_one_line_without_temporary_files(
    tmp_path, checkpoint, many_val_images
):
    out = tmp_path / "pictures"
    proc = start(
        "predict", str(checkpoint), str(many_val_images / "leftImg8bit"), "--out", str(out)
    )
    wait_for(lambda: any(out.rglob("*.png")), proc)
    err = signal_and_wait(proc, signal.SIGTERM)
    assert proc.returncode == TERMINATED_EXIT, err
    assert err == (
        "stopped by SIGTERM; the pictures written so far are kept; run the command again for "
        "all of them\n"
    )
    assert not temporary_files(out)


@pytest.mark.parametrize(
    ("args", "where", "hint"),
    [
        (["data", "convert", "gta", "."], "uda_cli.data.plan_conversion", "labels converted so"),
        (["data", "synth", "--root", "x"], "uda_cli.data.synthesize", "run the command again"),
        (
            ["dispersion", "map", "--labels", "l", "--depth", "d", "--out", "m.png"],
            "uda_cli.dispersion.check_outputs",
            "nothing was written",
        ),
    ],
)
def test_ctrl_c_says_what_is_kept_for_that_command(monkeypatch, args, where, hint):
    """No hint about `uda train --resume` outside training: each command says its own."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(where, interrupted)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == INTERRUPTED_EXIT, result.output
    assert result.output.startswith("interrupted; ") and hint in result.output
    assert "uda train" not in result.output and len(result.output.splitlines()) == 1


def test_sigterm_passes_through_a_readers_except_exception(capsys):
    """Readers turn any Exception of a decoder into "cannot be read"; SIGTERM passes through
    them (as Ctrl-C does), ends the command with its own line, and the handler goes away."""
    before = signal.getsignal(signal.SIGTERM)

    @friendly_errors("nothing was written")
    def command() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except Exception:
            pytest.fail("SIGTERM was caught as an Exception")

    with pytest.raises(SystemExit) as ended:
        command()
    assert ended.value.code == TERMINATED_EXIT
    assert capsys.readouterr().err == "stopped by SIGTERM; nothing was written\n"
    assert signal.getsignal(signal.SIGTERM) is before
