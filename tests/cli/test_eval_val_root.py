"""`uda eval --val-root`: the layout of the folder given is detected, not assumed."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_submission import uda
from tests.data.release_trees import write_acdc, write_bdd100k


@pytest.mark.parametrize(("layout", "write"), [("acdc", write_acdc), ("bdd100k", write_bdd100k)])
def test_eval_val_root_detects_the_layout_of_the_folder(checkpoint, tmp_path, layout, write):
    root = write(tmp_path / layout)
    report = tmp_path / "eval.json"
    result = uda("eval", checkpoint, "--val-root", root, "--split", "val", "--output", report)
    assert result.exit_code == 0, result.output
    assert 0 <= json.loads(report.read_text())["mIoU"] <= 1


def test_eval_scores_each_extra_target_and_their_mean(checkpoint, tmp_path):
    acdc, bdd = write_acdc(tmp_path / "acdc"), write_bdd100k(tmp_path / "bdd")
    extra = f"data.extra_val=[{{layout: bdd100k, root: '{bdd}', split: val}}]"
    report = tmp_path / "eval.json"
    args = ["--val-root", acdc, "--split", "val", "--set", extra, "--output", report]
    result = uda("eval", checkpoint, *args)
    assert result.exit_code == 0, result.output
    scores = json.loads(report.read_text())
    assert list(scores["targets"]) == [f"acdc:{acdc}", f"bdd100k:{bdd}"]
    values = [t["mIoU"] for t in scores["targets"].values()]
    assert scores["mean_mIoU"] == pytest.approx(sum(values) / 2)
    assert f"mean mIoU over 2 targets {100 * scores['mean_mIoU']:.2f}" in result.output
