"""`uda predict --format`: test-server submissions, checked against the official rules."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS
from PIL import Image
from typer.testing import CliRunner

from tests.data.release_trees import (
    HEIGHT,
    WIDTH,
    write_acdc,
    write_cityscapes,
    write_dark_zurich,
)
from uda_cli.main import app

runner = CliRunner()


def uda(*args):
    return runner.invoke(app, [str(a) for a in args])


def _pngs(archive: zipfile.ZipFile) -> dict[str, Image.Image]:
    return {name: Image.open(archive.open(name)) for name in archive.namelist()}


def test_cityscapes_submission_is_label_ids_named_as_the_server_expects(checkpoint, tmp_path):
    """MIC ``mmseg/datasets/cityscapes.py:70-78,98-103``: ``to_label_id`` maps trainIds to
    label ids by ``cityscapesscripts``' ``trainId2label``; one ``{image name}.png`` per test
    image, which the server matches by ``CITY_SEQ_FRAME*.png``."""
    root = write_cityscapes(tmp_path / "cityscapes")
    result = uda(
        "predict", checkpoint, root, "--format", "cityscapes-test", "--out", tmp_path / "o"
    )
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(tmp_path / "o" / "cityscapes-test.zip") as archive:
        pngs = _pngs(archive)
    assert sorted(pngs) == [f"berlin_000000_00000{k}_leftImg8bit.png" for k in (0, 1)]
    evaluated = {label.id for label in CITYSCAPES_LABELS if not label.ignoreInEval}
    for png in pngs.values():
        assert png.size == (WIDTH, HEIGHT) and png.mode == "L"
        assert set(np.unique(np.array(png))) <= evaluated
    assert sorted(p.name for p in (tmp_path / "o" / "cityscapes-test").iterdir()) == sorted(pngs)
    assert not list((tmp_path / "o").glob(".*partial"))


def test_acdc_submission_is_train_ids_of_every_condition(checkpoint, tmp_path):
    """MIC ``seg/README.md:141-148``: ``--format-only`` with ``imgfile_prefix=labelTrainIds
    to_label_id=False``: trainIds in ``labelTrainIds/{image name}.png``, one per test image
    of the four conditions at the image's size."""
    root = write_acdc(tmp_path / "acdc")
    result = uda("predict", checkpoint, root, "--format", "acdc-test", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(tmp_path / "o" / "acdc-test.zip") as archive:
        pngs = _pngs(archive)
    assert len(pngs) == 4 and all(n.startswith("labelTrainIds/GOPR") for n in pngs)
    assert all(n.endswith("_rgb_anon.png") for n in pngs)
    for png in pngs.values():
        assert png.size == (WIDTH, HEIGHT) and np.array(png).max() < 19


def test_darkzurich_submission_has_the_three_folders_of_its_server(checkpoint, tmp_path):
    """The Dark Zurich server reads ``labelTrainIds/`` (trainIds), ``confidence/`` (16-bit,
    probability x 65535) and ``labelTrainIds_invalid/`` (trainIds, 255 where invalid), one
    PNG per test image (night) in each, named after the image."""
    root = write_dark_zurich(tmp_path / "dz")
    result = uda(
        "predict", checkpoint, root, "--format", "darkzurich-test", "--out", tmp_path / "o"
    )
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(tmp_path / "o" / "darkzurich-test.zip") as archive:
        pngs = _pngs(archive)
    name = "GOPR0364_000000_rgb_anon.png"
    folders = ("labelTrainIds", "confidence", "labelTrainIds_invalid")
    assert sorted(pngs) == sorted(f"{folder}/{name}" for folder in folders)
    label = np.array(pngs[f"labelTrainIds/{name}"])
    confidence = np.array(pngs[f"confidence/{name}"])
    invalid = np.array(pngs[f"labelTrainIds_invalid/{name}"])
    assert label.shape == confidence.shape == invalid.shape == (HEIGHT, WIDTH)
    assert label.max() < 19 and confidence.dtype == np.uint16 and confidence.min() >= 65535 // 19
    assert np.all((invalid == label) | (invalid == 255))


def test_cityscapes_evaluator_scores_a_val_submission_as_uda_eval(checkpoint, tmp_path):
    """``cityscapesscripts``' ``evalPixelLevelSemanticLabeling`` on a val split written by
    ``--format cityscapes-test`` gives the mIoU ``uda eval`` gives on the same split."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    root = write_cityscapes(tmp_path / "cityscapes")
    assert uda("data", "convert", "cityscapes", root, "--nproc", "1").exit_code == 0
    report = tmp_path / "eval.json"
    evaluated = uda("eval", checkpoint, "--val-root", root, "--split", "val", "--output", report)
    assert evaluated.exit_code == 0, evaluated.output
    out = tmp_path / "o"
    result = uda("predict", checkpoint, root, "--format", "cityscapes-test", "--split", "val")
    assert result.exit_code == 2 and "--out" in result.output
    result = uda(
        "predict", checkpoint, root, "--format", "cityscapes-test", "--split", "val", "--out", out
    )
    assert result.exit_code == 0, result.output
    args = official.args
    args.predictionPath, args.predictionWalk = str(out / "cityscapes-test"), None
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    ground_truth = sorted(str(p) for p in root.glob("gtFine/val/*/*_gtFine_labelIds.png"))
    predictions = [official.getPrediction(args, gt) for gt in ground_truth]
    scores = official.evaluateImgLists(predictions, ground_truth, args)
    ours = json.loads(report.read_text())["mIoU"]
    assert scores["averageScoreClasses"] == pytest.approx(ours, abs=1e-6)


def test_predict_checks_its_output_before_loading_anything(tmp_path):
    """An unwritable ``--out`` (a file in the way) is one line and exit 2, before the
    checkpoint (here missing) is even read."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    picture = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(picture)
    missing = tmp_path / "missing.pt"
    result = uda("predict", missing, picture, "--out", blocker)
    assert result.exit_code == 2 and str(blocker) in result.output
    assert "missing.pt" not in result.output
    result = uda("predict", missing, tmp_path, "--format", "acdc-test", "--out", blocker / "x")
    assert result.exit_code == 2 and "missing.pt" not in result.output
