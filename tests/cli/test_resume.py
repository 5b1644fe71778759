"""A run killed mid-way and resumed ends with exactly the weights of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import torch

from tests.conftest import tiny_overrides

ITERATIONS = 30


def uda_command(work, name, *extra):
    sets = tiny_overrides(work, ITERATIONS)
    return [sys.executable, "-m", "uda_cli.main", "train", "--name", name, *sets, *extra]


def test_killed_run_resumes_to_identical_weights(tmp_path, synthetic_root):
    env = dict(os.environ)
    subprocess.run(uda_command(tmp_path, "straight"), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(
        uda_command(tmp_path, "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    first = tmp_path / "killed" / "checkpoints" / "iter_000003.pt"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    final = tmp_path / "killed" / "checkpoints" / f"iter_{ITERATIONS:06d}.pt"
    assert first.exists() and not final.exists(), "the run was not killed mid-way"

    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "uda_cli.main",
            "train",
            "--resume",
            "latest",
            "--work-dir",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "at iteration " in resumed.stdout
    a = torch.load(
        tmp_path / "straight" / "checkpoints" / f"iter_{ITERATIONS:06d}.pt", weights_only=False
    )
    b = torch.load(final, weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
