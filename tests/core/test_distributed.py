"""Data-parallel training on two gloo processes: identical replicas, whole-set evaluation,
checkpoints that resume on another process count, and the launch examples."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import tiny_overrides
from tests.core.sharded_evaluation import evaluate_on, evaluator, model
from tests.dispersion.test_plugin_cli import TINY_AUX
from tests.methods.test_hrda import HRDA_TINY
from uda_cli.main import app
from uda_core.config import validate
from uda_core.engine import fingerprint
from uda_data.config import val_set
from uda_methods.config import RunConfig
from uda_methods.run import open_data, resolve_config, train_batches

DOCS = Path(__file__).parents[2] / "docs"
runner = CliRunner()

UDA = [sys.executable, "-m", "uda_cli.main"]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
ACCELERATE += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
ACCELERATE += ["--dynamo_backend", "no", "-m", "uda_cli.main"]


def uda_train(launcher: list[str], *args: str) -> subprocess.CompletedProcess:
    """`uda train` started by ``launcher`` on the CPU (gloo), also where a GPU is present."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    command = [*launcher, "train", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def checkpoint(run: Path, iteration: int) -> dict:
    return torch.load(run / "checkpoints" / f"iter_{iteration:06d}.pt", weights_only=False)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, synthetic_root) -> Path:
    """MIC on HRDA with the dispersion plugin, 3 iterations on 2 processes, a checkpoint (and
    so a check that both processes hold the same weights) after every iteration."""
    work = tmp_path_factory.mktemp("ddp")
    sets = [*tiny_overrides(work, 3), *HRDA_TINY, *TINY_AUX]
    sets += ["--set", "runtime.checkpoint_interval=1", "--set", "runtime.keep_checkpoints=3"]
    args = ["--method", "mic", "--plugin", "dispersion", "--name", "ddp", "--num-processes", "2"]
    result = uda_train(UDA, *args, *sets)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "ddp"


def test_two_processes_keep_identical_replicas_and_draw_their_own_batches(two_process_run):
    for iteration in (1, 2, 3):  # each checkpoint was written after the replicas agreed
        assert len(checkpoint(two_process_run, iteration)["rng"]) == 2
    rngs = checkpoint(two_process_run, 3)["rng"]
    assert not torch.equal(rngs[0]["torch"], rngs[1]["torch"])
    train = [r for r in records(two_process_run) if "src.seg" in r]
    assert [r["iteration"] for r in train] == [1, 2, 3]
    assert all(r["data_wait"] >= 0 and r["sec_per_iter"] > 0 for r in train)


@pytest.mark.slow  # a second 2-process run, about 40 s on 2 idle cores
def test_one_backward_per_step_on_two_processes_trains_what_one_per_pass_trains(
    two_process_run, tmp_path
):
    """With ``runtime.backward: once`` DDP reduces the gradients once per step instead of
    once per pass; the replicas still agree at every checkpoint, and after 3 iterations
    their weights equal the per-pass run's up to float rounding."""
    sets = [*tiny_overrides(tmp_path, 3), *HRDA_TINY, *TINY_AUX]
    sets += ["--set", "runtime.checkpoint_interval=1", "--set", "runtime.backward=once"]
    args = ["--method", "mic", "--plugin", "dispersion", "--name", "once", "--num-processes", "2"]
    result = uda_train(UDA, *args, *sets)
    assert result.returncode == 0, result.stderr[-3000:]
    ours, theirs = checkpoint(tmp_path / "once", 3), checkpoint(two_process_run, 3)
    assert len(ours["rng"]) == 2
    for name, value in theirs["model"].items():
        torch.testing.assert_close(ours["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_each_process_draws_its_own_samples_with_rare_class_sampling(tmp_path, synthetic_root):
    overrides = tiny_overrides(tmp_path)[1::2]
    cfg = resolve_config("quick", None, {"method": {"name": "daformer"}}, overrides)
    run_data = open_data(cfg)
    assert run_data.sampler is not None
    stream = train_batches(cfg, run_data)

    def first(rank: int) -> torch.Tensor:
        batch = next(stream(0, rank, 2))
        return torch.cat([batch.source["image"], batch.target["image"]])

    assert torch.equal(first(0), first(0)) and not torch.equal(first(0), first(1))


def test_two_processes_score_every_val_pixel_once(two_process_run):
    cfg = validate(RunConfig, json.loads((two_process_run / "config.json").read_text()))
    labelled = sum(int((item["label"] != 255).sum()) for item in val_set(cfg.data))
    val = [r for r in records(two_process_run) if r.get("split") == "val"]
    assert [r["pixels"] for r in val] == [labelled]


def test_resume_moves_from_two_processes_to_one_and_back_through_accelerate(two_process_run):
    saved = two_process_run / "checkpoints" / "iter_000003.pt"
    result = runner.invoke(app, ["train", "--resume", str(saved), "--set", "runtime.iterations=4"])
    assert result.exit_code == 0, result.output
    assert "saved the checkpoint, 1 go on" in result.output
    assert len(checkpoint(two_process_run, 4)["rng"]) == 1

    work = str(two_process_run.parent)
    args = ["--resume", "latest", "--work-dir", work, "--set", "runtime.iterations=5"]
    result = uda_train(ACCELERATE, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stdout and "1 saved the checkpoint, 2 go on" in result.stdout
    assert len(checkpoint(two_process_run, 5)["rng"]) == 2
    train = [r["iteration"] for r in records(two_process_run) if "src.seg" in r]
    assert train == [1, 2, 3, 4, 5]


def test_evaluation_sums_uneven_shards_over_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sizes = [5, 1]  # shards of 3 and 2 images; of 1 image and none
    torch.multiprocessing.spawn(evaluate_on, (2, port, sizes, tmp_path), nprocs=2)
    for size in sizes:
        alone = evaluator(size).run(model(), torch.device("cpu"))
        labelled = sum(int((s["label"] != 255).sum()) for s in evaluator(size).dataset)
        for rank in (0, 1):
            shared = torch.load(tmp_path / f"{size}-{rank}.pt", weights_only=False)
            assert shared.pixels == alone.pixels == labelled
            assert shared.iou == pytest.approx(alone.iou, nan_ok=True)


def test_fingerprint_tells_states_apart():
    state = {"a": torch.arange(6.0).view(2, 3), "b": [torch.ones(2), "text", 3]}
    same = {"a": torch.arange(6.0).view(2, 3), "b": [torch.ones(2), "text", 3]}
    assert fingerprint(state) == fingerprint(same)
    same["a"][0, 1] += 1e-6
    assert fingerprint(state) != fingerprint(same)
    assert fingerprint(state) != fingerprint({**state, "b": [torch.ones(2), "other", 3]})


def test_num_processes_inside_a_launched_process_is_refused(tmp_path, synthetic_root):
    args = ["train", "--num-processes", "2", *tiny_overrides(tmp_path, 1)]
    result = runner.invoke(app, args, env={"WORLD_SIZE": "2"})
    assert result.exit_code == 2 and "drop --num-processes" in result.output


def test_multi_node_examples_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(DOCS / "examples" / "accelerate_multi_node.yaml"))
    assert config.distributed_type == "MULTI_GPU" and config.num_machines == 2
    script = DOCS / "examples" / "slurm_multi_node.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "examples/accelerate_multi_node.yaml" in (DOCS / "distributed.md").read_text()
