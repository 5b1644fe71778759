"""`uda checkpoint info/import`, and published files through `uda eval`, `uda predict` and
`uda train --init-from`: what a file is, imported once, then used as one of ours."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import SMALL_SPEC
from tests.published.fixture import build, built_files, image_of, needs_fixture
from uda_cli.main import app

pytestmark = needs_fixture
runner = CliRunner()

SYNTHETIC_DATA = {f"data.synthetic.{k}": v for k, v in SMALL_SPEC.items()} | {
    "data.source.root": "@synthetic/source",
    "data.target.root": "@synthetic/target",
    "data.val.root": "@synthetic/target",
    "data.source_resize": "[128,64]",
    "data.target_resize": "[128,64]",
    "data.val_resize": "[128,64]",
    "data.crop": "[64,64]",
    "data.batch_size": 1,
    "data.workers": 0,
    "eval.batch_size": 3,
}
"""A published preset on the embedded test domains at 128x64, the published model kept."""


def sets(values: dict) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def uda(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    return built_files(tmp_path_factory)


@pytest.fixture(scope="module")
def training_file(files):
    return build("daformer_b0", "training", files)


@pytest.fixture(scope="module")
def imported(training_file, files):
    out = files / "run" / "daformer_b0.pt"
    result = uda("checkpoint", "import", training_file, "--out", out)
    assert result.exit_code == 0, result.output
    assert "preset gta2cs-daformer" in result.output
    return out


def test_info_tells_layout_family_encoder_prefixes_counts_and_config(training_file):
    result = uda("checkpoint", "info", training_file)
    assert result.exit_code == 0, result.output
    fields = dict(
        re.match(r"(\w[\w ]*?)\s{2,}(.*)", line).groups()
        for line in result.output.splitlines()[:11]
    )
    assert fields["layout"].startswith("training")
    assert (fields["family"], fields["encoder"], fields["dataset"]) == ("daformer", "mit_b0", "gta")
    assert fields["prefixes"] == "model. 234, ema_model. 234, imnet_model. 234"
    assert fields["tensors"] == "702 (20,727,921 elements)"
    assert fields["copy"] == "student (model.*)" and fields["preset"].startswith("gta2cs-daformer")
    assert "iter 40000" in fields["meta"]
    assert "config (meta['config'] of the reference run):" in result.output
    assert "type='DAFormerHead'" in result.output


def test_import_writes_our_checkpoint_once_and_predicts_as_the_file(
    training_file, imported, tmp_path
):
    state = torch.load(imported, weights_only=False)
    assert state["config"]["preset"] == "gta2cs-daformer"
    assert state["config"]["model"]["encoder"] == "mit_b0" and state["iteration"] == 40000
    assert state["imported"]["layout"] == "training" and state["imported"]["copy"] == "student"
    again = uda("checkpoint", "import", training_file, "--out", imported)
    assert "exists; pass --force" in one_line_error(again)

    info = uda("checkpoint", "info", imported)
    assert info.exit_code == 0 and "imported from" in info.output
    assert '"preset": "gta2cs-daformer"' in info.output

    image = tmp_path / "street.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), np.uint8)).save(image)
    logits = {}
    for name, source in (("file", training_file), ("imported", imported)):
        args = ["--out", tmp_path / name, "--save-logits", "--set", "data.val_resize=[80,48]"]
        result = uda("predict", source, image, *args)
        assert result.exit_code == 0 and "(reference pipeline)" in result.output, result.output
        logits[name] = np.load(tmp_path / name / "street_logits.npy")
    assert logits["file"].shape == (1, 19, 48, 80) and logits["file"].dtype == np.float32
    np.testing.assert_array_equal(logits["imported"], logits["file"])


def test_eval_of_the_file_and_of_its_import_agree(
    training_file, imported, synthetic_root, tmp_path
):
    values = {}
    for name, source in (("file", training_file), ("imported", imported)):
        out = tmp_path / f"{name}.json"
        result = uda("eval", source, "--output", out, *sets(SYNTHETIC_DATA))
        assert result.exit_code == 0, result.output
        assert "DAFormer (CVPR 2022)" in result.output  # gta2cs-daformer's published number
        values[name] = json.loads(out.read_text())["mIoU"]
    assert values["file"] == values["imported"]


def test_train_init_from_a_published_file_starts_from_its_weights(
    imported, synthetic_root, tmp_path
):
    args = ["train", "--init-from", imported, "--method", "source-only", "--iters", 1]
    args += ["--work-dir", tmp_path, "--name", "tuned", *sets(SYNTHETIC_DATA)]
    result = uda(*args)
    assert result.exit_code == 0, result.output
    start = torch.load(imported, weights_only=False)["model"]
    after = torch.load(tmp_path / "tuned" / "checkpoints" / "iter_000001.pt", weights_only=False)
    assert after["config"]["model"]["encoder"] == "mit_b0"
    assert after["config"]["preset"] == "gta2cs-daformer"
    for key, value in start.items():  # warm-up: the first step's learning rate is 6e-11
        if value.is_floating_point() and "running_" not in key:
            torch.testing.assert_close(after["model"][key], value, atol=1e-6, rtol=0)


def test_init_from_a_dispersion_file_takes_its_auxiliary_network(files, synthetic_root, tmp_path):
    path = build("dispersion_daformer_b0", "published", files)
    args = ["--dry-run", "--work-dir", tmp_path, *sets(SYNTHETIC_DATA)]
    result = uda("train", "--init-from", path, *args)
    assert result.exit_code == 0, result.output
    assert re.search(
        r"init from: .*\.published\.pth \(published, dispersion_daformer", result.output
    )
    config = json.loads(result.output[result.output.index("{") : result.output.rindex("}") + 1])
    assert config["preset"] == "gta2cs-daformer" and config["model"]["encoder"] == "mit_b0"
    assert config["plugins"]["dispersion"]["auxiliary"]["checkpoint"] == str(path.resolve())


def test_user_errors_are_one_line(training_file, imported, files, tmp_path):
    image = image_of("daformer_b0")
    missing = uda("predict", tmp_path / "nope.pth", image, "--out", tmp_path / "o")
    assert "nope.pth does not exist" in one_line_error(missing)
    (tmp_path / "cut.pth").write_bytes(training_file.read_bytes()[:100_000])
    corrupt = uda("eval", tmp_path / "cut.pth")
    assert "cut.pth cannot be read" in one_line_error(corrupt)
    state = torch.load(build("hrda_b0", "published", files), weights_only=True)
    state["state_dict"]["model.decode_head.head.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "odd.pth")
    odd = uda("predict", tmp_path / "odd.pth", image, "--out", tmp_path / "o")
    assert "'decode_head.head.extra.weight' does not fit a published hrda" in one_line_error(odd)
    aux = build("aux_resnet50", "aux-wrapped", files)
    as_model = uda("predict", aux, image, "--out", tmp_path / "o")
    assert "plugins.dispersion.auxiliary.checkpoint" in one_line_error(as_model)
    assert "plugins.dispersion" in one_line_error(
        uda("checkpoint", "import", aux, "--out", tmp_path / "a.pt")
    )
    no_teacher = uda(
        "checkpoint",
        "import",
        build("daformer_b0", "published", files),
        "--copy",
        "teacher",
        "--out",
        tmp_path / "t.pt",
    )
    assert "has no teacher copy" in one_line_error(no_teacher)
    resume = uda("train", "--resume", imported, "--work-dir", tmp_path)
    assert "holds weights only" in one_line_error(resume)
    both = uda("train", "--resume", imported, "--init-from", imported)
    assert "pass one" in one_line_error(both)
