"""End to end through the `uda` command: train, evaluate, validate, and fail clearly."""

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import tiny_overrides
from uda_cli.main import app
from uda_data.synthetic import ensure_synthetic
from uda_methods import presets
from uda_methods.run import resolve_config

runner = CliRunner()


def uda(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synthetic_root):
    work = tmp_path_factory.mktemp("work")
    result = uda("train", "--method", "source-only", "--name", "tiny", *tiny_overrides(work))
    assert result.exit_code == 0, result.output
    return work / "tiny", result.output


def test_version():
    result = uda("--version")
    assert result.exit_code == 0 and re.fullmatch(r"uda \d+\.\d+\.\d+\n", result.output)


def test_train_writes_config_metrics_and_checkpoints(trained_run):
    run_dir, output = trained_run
    assert "target mIoU" in output and "road" in output
    config = json.loads((run_dir / "config.json").read_text())
    assert config["runtime"]["iterations"] == 6 and config["method"]["name"] == "source-only"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["iteration"] for r in records if r.get("split") == "val"] == [3, 6]
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["best.pt", "iter_000003.pt", "iter_000006.pt"]


def test_eval_prints_the_same_miou_as_training(trained_run, tmp_path):
    run_dir, output = trained_run
    trained = re.search(r"target mIoU (\d+\.\d+)", output).group(1)
    preds = tmp_path / "preds"
    result = uda(
        "eval", str(run_dir / "checkpoints" / "iter_000006.pt"), "--save-predictions", str(preds)
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"\nmIoU (\d+\.\d+)", result.output).group(1) == trained
    saved = json.loads((run_dir / "checkpoints" / "iter_000006.eval.json").read_text())
    assert f"{100 * saved['mIoU']:.2f}" == trained and "mIoU16" in saved and "mIoU13" in saved
    assert len(list(preds.glob("*_pred.png"))) == 6


def test_slide_eval_runs(trained_run, tmp_path):
    run_dir, _ = trained_run
    out = tmp_path / "slide.json"
    result = uda(
        "eval",
        str(run_dir / "checkpoints" / "best.pt"),
        "--mode",
        "slide",
        "--set",
        "eval.crop_size=[64,32]",
        "--set",
        "eval.stride=[32,16]",
        "--output",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert 0 <= json.loads(out.read_text())["mIoU"] <= 1


def test_dry_run_validates_and_trains_nothing(tmp_path, monkeypatch):
    """--dry-run opens the data it would train on and counts it when the embedded domains are
    on disk, and only names the cache they would be generated in when not (it generates
    nothing): the result does not depend on whether another test trained first."""
    sets = tiny_overrides(tmp_path)
    monkeypatch.setenv("UDA_CACHE_DIR", str(tmp_path / "cache"))
    result = uda("train", "--dry-run", "--name", "dry", *sets)
    assert result.exit_code == 0, result.output
    assert f"will be generated in {tmp_path / 'cache'}" in result.output
    assert not any((tmp_path / "cache").glob("synthetic-*"))
    monkeypatch.undo()  # the session's cache, where other tests may have generated it
    cfg = resolve_config(presets.DEFAULT_PRESET, None, {}, sets[1::2])
    ensure_synthetic(cfg.data.synthetic_root(), cfg.data.synthetic)
    result = uda("train", "--dry-run", "--name", "dry", *sets)
    assert result.exit_code == 0, result.output
    assert "16 source, 8 target, 6 val images" in result.output
    assert "nothing was trained" in result.output and not (tmp_path / "dry").exists()


def test_resume_of_a_finished_run_rejects_a_second_start(trained_run):
    run_dir, _ = trained_run
    result = runner.invoke(app, ["train", "--name", "tiny", *tiny_overrides(run_dir.parent)])
    assert result.exit_code == 2 and "already holds checkpoints" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--method", "nope"],
            r"unknown method 'nope'; available: (\S+, )*daformer, (\S+, )*source-only",
        ),
        (["--plugin", "nope"], r"unknown plugin 'nope'; available:"),
        (["--set", "optim.lr=-1"], r"optim\.lr: Input should be greater than 0"),
        (["--set", "optim.lrr=1"], r"optim\.lrr: unknown key"),
        (
            ["--set", "runtime.backward=sometimes"],
            r"runtime\.backward: Input should be 'auto', 'per-pass' or 'once'",
        ),
        (["--set", "model.encoder=not_a_net"], r"'not_a_net' is not a timm model"),
        (["--preset", "nope"], r"unknown preset 'nope'"),
        (["--config", "missing.yaml"], r"config file missing\.yaml does not exist"),
        (["--resume", "missing.pt"], r"checkpoint missing\.pt does not exist"),
        (["--resume", "."], r"checkpoint \. is a folder"),
        (["--config", "."], r"config file \. is a folder"),
        (["--set", "eval.stride=[0, 0]"], r"eval\.stride: Value error, sizes must be positive"),
        (["--set", "eval.crop_size=[0, 64]"], r"eval\.crop_size: Value error, sizes must be"),
        (
            [
                "--set",
                "eval.mode=slide",
                "--set",
                "eval.crop_size=[64,64]",
                "--set",
                "eval.stride=[65,64]",
            ],
            r"slide stride \(65, 64\) is larger than the window \(64, 64\)",
        ),
        (
            ["--method", "hrda", "--set", "method.hrda_detail_crop=[128, 32]"],
            r"method\.hrda_detail_crop \(128, 32\) is larger than data\.crop \(64, 64\)",
        ),
        (
            ["--set", "schedule.warmup_iters=7"],
            r"schedule\.warmup_iters 7 is longer than runtime\.iterations 6, so the learning",
        ),
        (["--name", "../outside"], r"runtime\.name: Value error, a run folder name"),
        (["--name", "a/b"], r"runtime\.name: Value error, a run folder name"),
        (
            ["--set", "plugins.dispersion.loss_weight=1"],
            r"the plugin dispersion is not enabled; add --plugin dispersion",
        ),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, args, message):
    result = runner.invoke(app, ["train", "--dry-run", *tiny_overrides(tmp_path), *args])
    assert result.exit_code == 2
    assert re.search(message, result.output), result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "content", "args", "message"),
    [
        ("bad.yaml", b"optim:\n  lr: [1, 2\nruntime: 3\n", ["--config"], r"line 3, column 8"),
        ("binary.yaml", b"\x89PNG\r\n\x1a\n\xff\xfe\x00", ["--config"], r"not UTF-8 text"),
        ("work", b"a file", ["--set"], r"runtime\.work_dir: Value error, is a file"),
        ("enc.pth", b"\x1b[31mnot torch", ["--pretrained"], r"encoder weights \S+ cannot be read"),
    ],
)
def test_bad_files_give_one_line_and_exit_2(tmp_path, name, content, args, message):
    path = tmp_path / name
    path.write_bytes(content)
    value = f"runtime.work_dir={path}" if args == ["--set"] else str(path)
    result = runner.invoke(app, ["train", "--dry-run", *tiny_overrides(tmp_path), *args, value])
    assert result.exit_code == 2 and re.search(message, result.output), result.output
    assert "\x1b" not in result.output and len(result.output.strip().splitlines()) == 1


def test_eval_checks_its_outputs_before_evaluating(trained_run, tmp_path):
    run_dir, _ = trained_run
    checkpoint = str(run_dir / "checkpoints" / "iter_000006.pt")
    (tmp_path / "in_the_way.json").mkdir()
    result = runner.invoke(app, ["eval", checkpoint, "--output", str(tmp_path / "in_the_way.json")])
    assert result.exit_code == 2 and "a folder is in the way" in result.output
    assert "road" not in result.output, "it evaluated before checking the output"
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["eval", checkpoint, "--save-predictions", str(tmp_path / "file")])
    assert result.exit_code == 2 and "cannot be written" in result.output
    assert "road" not in result.output


def test_eval_of_a_read_only_folder_fails_before_the_work(trained_run, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    run_dir, _ = trained_run
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    checkpoint = str(run_dir / "checkpoints" / "iter_000006.pt")
    result = runner.invoke(app, ["eval", checkpoint, "--output", str(locked / "r.json")])
    locked.chmod(0o700)
    assert result.exit_code == 2 and "permission denied" in result.output


def test_a_full_disk_is_one_line_saying_so(monkeypatch, trained_run, tmp_path):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r.json"))

    monkeypatch.setattr("uda_cli.main.write_bytes", full)
    run_dir, _ = trained_run
    checkpoint = str(run_dir / "checkpoints" / "iter_000006.pt")
    result = runner.invoke(app, ["eval", checkpoint, "--output", str(tmp_path / "r.json")])
    assert result.exit_code == 2 and "no space left on the device" in result.output


def test_missing_dataset_folder_is_one_line(tmp_path):
    result = runner.invoke(
        app,
        [
            "train",
            "--dry-run",
            *tiny_overrides(tmp_path),
            "--set",
            f"data.source.root={tmp_path / 'gta'}",
        ],
    )
    assert result.exit_code == 2 and "does not exist; check the dataset root" in result.output


def test_unreadable_checkpoint_and_foreign_model(tmp_path, trained_run):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    result = runner.invoke(app, ["eval", str(junk)])
    assert result.exit_code == 2 and "cannot be read" in result.output
    run_dir, _ = trained_run
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    state["config"]["model"]["encoder"] = "resnet18"
    torch.save(state, tmp_path / "other.pt")
    result = runner.invoke(app, ["eval", str(tmp_path / "other.pt")])
    assert result.exit_code == 2 and "was saved from another model" in result.output


def test_fp16_on_cpu_is_refused(tmp_path, synthetic_root):
    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed on a GPU")
    result = runner.invoke(app, ["train", "--precision", "fp16", *tiny_overrides(tmp_path)])
    assert result.exit_code == 2 and "fp16 needs a CUDA GPU" in result.output


def test_tensorboard_events_are_written_when_installed(trained_run):
    pytest.importorskip("tensorboard")
    run_dir, _ = trained_run
    assert list(run_dir.glob("tensorboard/events.out.tfevents.*"))


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, synthetic_root):
    def final(name, seed):
        result = uda("train", "--name", name, "--seed", str(seed), *tiny_overrides(tmp_path, 3))
        assert result.exit_code == 0, result.output
        return torch.load(tmp_path / name / "checkpoints" / "iter_000003.pt", weights_only=False)[
            "model"
        ]

    a, b, c = final("a", 1), final("b", 1), final("c", 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_data_synth_writes_both_layouts(tmp_path):
    root = tmp_path / "synth"
    result = uda(
        "data",
        "synth",
        "--root",
        str(root),
        "--width",
        "64",
        "--height",
        "32",
        "--num-source",
        "3",
        "--num-target-train",
        "2",
        "--num-target-val",
        "2",
    )
    assert result.exit_code == 0, result.output
    assert len(list((root / "source" / "images").glob("*.png"))) == 3
    assert len(list((root / "target" / "gtFine" / "val").glob("*/*_gtFine_labelTrainIds.png"))) == 2


def test_data_synth_rejects_bad_sizes(tmp_path):
    result = runner.invoke(app, ["data", "synth", "--root", str(tmp_path), "--width", "3"])
    assert (
        result.exit_code == 2
        and "width: Input should be greater than or equal to 32" in result.output
    )


def test_eval_on_a_source_layout_set(trained_run, synthetic_root, tmp_path):
    run_dir, _ = trained_run
    result = uda(
        "eval",
        str(run_dir / "checkpoints" / "iter_000006.pt"),
        "--set",
        "data.val.layout=gta",
        "--set",
        f"data.val.root={synthetic_root / 'source'}",
        "--output",
        str(tmp_path / "source.json"),
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "source.json").read_text())["mIoU"] >= 0


def test_daformer_preset_validates_on_data_in_the_real_layouts(synthetic_root):
    roots = [
        f"data.source.root={synthetic_root / 'source'}",
        f"data.target.root={synthetic_root / 'target'}",
        f"data.val.root={synthetic_root / 'target'}",
        "data.rcs.min_pixels=50",
    ]
    args = ["train", "--preset", "daformer", "--dry-run"]
    for item in roots:
        args += ["--set", item]
    result = uda(*args)
    assert result.exit_code == 0, result.output
    assert '"encoder": "mit_b5"' in result.output and '"iterations": 40000' in result.output


def test_quick_mit_profile_trains_daformer_with_feature_distance(tmp_path, synthetic_root):
    pairs = tiny_overrides(tmp_path, 2)[1::2]
    sets = [a for p in pairs if not p.startswith("model.") for a in ("--set", p)]
    result = uda(
        "train",
        "--preset",
        "quick-mit",
        "--method",
        "daformer",
        "--name",
        "mit",
        "--set",
        "method.fd_lambda=0.005",
        "--set",
        f"method.fd_classes={list(range(19))}",
        # 2 x 2 cells of 32 px in a 64 px crop: at 0.75 a draw may leave no cell, while some
        # class always covers a twentieth of a cell, so every step has a distance
        "--set",
        "method.fd_min_ratio=0.05",
        *sets,
    )
    assert result.exit_code == 0, result.output
    records = [
        json.loads(line) for line in (tmp_path / "mit" / "metrics.jsonl").read_text().splitlines()
    ]
    distances = [r["src.feat_dist"] for r in records if "src.seg" in r]
    assert len(distances) == 2 and all(d > 0 for d in distances)
    config = json.loads((tmp_path / "mit" / "config.json").read_text())
    assert config["model"]["encoder"] == "mit_b0" and config["model"]["decoder"] == "daformer"


def test_dry_run_names_an_unwritable_cache_dir(tmp_path, monkeypatch):
    """The embedded domains are generated into UDA_CACHE_DIR; a cache path under a file is
    named by --dry-run in one line (exit 2), before anything is generated."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("UDA_CACHE_DIR", str(blocker / "cache"))
    result = runner.invoke(app, ["train", "--dry-run", "--work-dir", str(tmp_path / "w")])
    assert result.exit_code == 2, result.output
    assert str(blocker / "cache") in result.output and "Traceback" not in result.output


def test_eval_and_data_synth_name_an_unwritable_cache_dir(trained_run, tmp_path, monkeypatch):
    """Generating the embedded domains into a cache under a file: one line naming the cache
    folder, exit 2, before any image is generated or evaluated."""
    run_dir, _ = trained_run
    blocker = tmp_path / "file"
    blocker.write_text("")
    ckpt = str(run_dir / "checkpoints" / "iter_000006.pt")
    out = tmp_path / "eval.json"
    args = ["eval", ckpt, "--output", str(out), "--set", f"data.cache_dir={blocker / 'cache'}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert str(blocker / "cache") in result.output and len(result.output.splitlines()) == 1
    assert not out.exists()
    monkeypatch.setenv("UDA_CACHE_DIR", str(blocker / "cache"))
    result = runner.invoke(app, ["data", "synth", "--num-source", "2"])
    assert result.exit_code == 2, result.output
    assert str(blocker / "cache") in result.output and len(result.output.splitlines()) == 1


def test_dispersion_map_names_a_truncated_label_file(tmp_path):
    """A single-channel label PNG cut short decodes its header fine; reading its pixels
    fails, and that is one line naming the file (exit 2), not a traceback."""
    labels, depth = tmp_path / "labels.png", tmp_path / "depth.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 19, (64, 128), np.uint8)).save(labels)
    Image.fromarray(np.full((64, 128), 128, np.uint8)).save(depth)
    labels.write_bytes(labels.read_bytes()[:300])
    args = ["--labels", str(labels), "--depth", str(depth), "--out", str(tmp_path / "m.png")]
    result = runner.invoke(app, ["dispersion", "map", *args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: cannot read {labels} as an image")
    assert len(result.output.splitlines()) == 1 and not (tmp_path / "m.png").exists()
