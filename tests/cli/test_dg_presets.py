"""Domain generalisation from GTA5: the two presets as HRDA's ``dg`` branch runs them (id 50
of ``experiments.py``), trained on a GTA fixture tree alone and scored by one ``uda eval`` on
Cityscapes, BDD100K and Mapillary fixture trees."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.cli.conftest import train_on_fixture_trees
from tests.cli.test_published_presets import SHRUNK
from tests.data.release_trees import write_bdd100k, write_cityscapes, write_gta, write_mapillary
from uda_cli.main import app
from uda_methods.presets import preset
from uda_methods.published import published_result, published_target_line
from uda_methods.registry import method_class

runner = CliRunner()
METHODS = ("daformer", "hrda")
DG_SHRUNK = {
    **{k: v for k, v in SHRUNK.items() if k != "data.pseudo_margins"},
    "method.style_batch_size": 1,
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """``data/`` with gta, cityscapes and mapillary converted, and bdd100k as released."""
    root = tmp_path_factory.mktemp("data")
    write_gta(root / "gta")
    write_cityscapes(root / "cityscapes")
    write_bdd100k(root / "bdd100k")
    write_mapillary(root / "mapillary")
    for layout in ("gta", "cityscapes", "mapillary"):
        result = runner.invoke(app, ["data", "convert", layout, str(root / layout), "--nproc", "1"])
        assert result.exit_code == 0, result.output
    return root


def test_dg_presets_train_source_only_with_the_dg_branch_settings():
    """HRDA dg ``experiments.py:589-620``: ``use_dg_dataset`` (``dg_dataset.py:20-24``: source
    samples only, with RCS T=0.01), ``dacs_fdthings_srconly`` (``configs/_base_/uda/
    dacs_fdthings_srconly.py:8``, ``dacs_fdthings.py:10-13``: source only, feature distance
    0.005 on the thing classes at ratio 0.75), ``shade=True`` in both runs (``:601-603``;
    ``:271-284``: consistency 10, concentration 0.0156, styles every 4000 iterations from
    batches of 2, ``share_src_backward``), gtaCAug with PhotoMetricDistortion; DAFormer 512x512
    crops from 1280x720 with whole inference, HRDA 1024x1024 crops from 2560x1440, detail
    crop 384 (``hrda1-384-0.1``), RCS min crop ratio 2, slide inference (``:612-615``);
    40k iterations, AdamW 6e-5, batch 2 (``:363-366``)."""
    low, high = preset("gta-dg-daformer"), preset("gta-dg-hrda")
    for cfg in (low, high):
        assert not method_class(cfg.method.name).needs_target
        assert method_class(cfg.method.name).uses_rcs
        assert cfg.data.source_photometric and cfg.data.rcs.temperature == 0.01
        assert cfg.data.pseudo_margins is None
        assert (cfg.method.fd_lambda, cfg.method.fd_min_ratio) == (0.005, 0.75)
        assert cfg.method.fd_classes == (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)
        assert cfg.model.style_hallucination == 0.0156
        assert cfg.method.style_consistency_lambda == 10.0
        assert (cfg.method.style_interval, cfg.method.style_batch_size) == (4000, 2)
        assert cfg.method.style_images == "process-share"  # train.py:136-144, per process
        assert (cfg.runtime.iterations, cfg.data.batch_size, cfg.optim.lr) == (40000, 2, 6e-5)
        assert [(d.layout, d.split) for d in cfg.data.extra_val] == [
            ("bdd100k", "val"),
            ("mapillary", "validation"),
        ]
    assert (low.data.source_resize, low.data.crop, low.data.val_resize) == (
        (1280, 720),
        (512, 512),
        (1024, 512),
    )
    assert low.eval.mode == "whole" and not low.method.multi_resolution
    assert (high.data.source_resize, high.data.crop, high.data.rcs.min_crop_ratio) == (
        (2560, 1440),
        (1024, 1024),
        2.0,
    )
    assert high.method.multi_resolution and high.method.hrda_detail_crop == (384, 384)
    assert high.method.hrda_detail_loss_weight == 0.1
    assert high.method.hrda_slide_stride == (192, 192)  # hrda_encoder_decoder.py:95-96
    assert (high.eval.mode, high.eval.crop_size, high.eval.stride) == (
        "slide",
        (1024, 1024),
        (512, 512),
    )


def test_dg_published_numbers_are_the_dg_readme_table():
    """HRDA dg ``README.md:118-119``: DAFormer 52.65 / 47.89 / 54.66 (mean 51.73) and HRDA
    57.41 / 49.11 / 61.16 (55.90) on Cityscapes / BDD100K / Mapillary; no dispersion run."""
    assert published_result("gta-dg-hrda", "dg-hrda", []).miou == 57.41
    assert published_result("gta-dg-daformer", "dg-daformer", ["dispersion"]) is None
    line = published_target_line("gta-dg-daformer", "dg-daformer", [], "bdd100k", {"mIoU": 0.5})
    assert line == "mIoU 50.00; published 47.89 (HRDA extension (PAMI 2023), GTA5 -> BDD100K, DG)"
    mean = published_target_line("gta-dg-hrda", "dg-hrda", [], "mean", {"mean_mIoU": 0.5})
    assert "published 55.90" in mean
    assert published_target_line("gta-dg-hrda", "dg-hrda", ["dispersion"], "mean", {}) is None


@pytest.mark.parametrize("plugin", [[], ["--plugin", "dispersion"]], ids=["", "dispersion"])
@pytest.mark.parametrize("method", METHODS)
def test_dg_preset_trains_on_gta_alone_and_evaluates_on_three_targets(
    data_root, tmp_path, method, plugin
):
    """Two iterations from the GTA tree (the target tree is never read: none is written for
    training), then one ``uda eval`` with a table per target, each beside its published
    number, and the mean over the three."""
    result = train_on_fixture_trees(f"gta-dg-{method}", plugin, data_root, tmp_path, DG_SHRUNK)
    assert result.exit_code == 0, result.output
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    evaluated = runner.invoke(app, ["eval", str(checkpoint)])
    assert evaluated.exit_code == 0, evaluated.output
    out = evaluated.output
    assert "bdd100k:" in out and "mapillary:" in out
    assert "mean mIoU over 3 targets" in out
    assert (out.count("; published ") == 4) == (not plugin)
    saved = json.loads(checkpoint.with_suffix(".eval.json").read_text())
    assert len(saved["targets"]) == 3
    means = sum(t["mIoU"] for t in saved["targets"].values()) / 3
    assert saved["mean_mIoU"] == pytest.approx(means)
