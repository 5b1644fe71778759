"""Cityscapes -> ACDC and Dark Zurich: the six presets as the reference runs them, each one
command on a data root of fixture trees in the real formats."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from tests.cli.conftest import train_on_fixture_trees
from tests.cli.test_published_presets import SHRUNK
from tests.data.release_trees import write_acdc, write_cityscapes, write_dark_zurich
from uda_cli.main import app
from uda_methods.methods.mic import separate_batch
from uda_methods.presets import preset
from uda_methods.published import compare_line, published_result

runner = CliRunner()
TARGETS = ("acdc", "darkzurich")
METHODS = ("daformer", "hrda", "mic")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """``data/`` with cityscapes (converted), acdc and darkzurich as their releases extract."""
    root = tmp_path_factory.mktemp("data")
    write_cityscapes(root / "cityscapes")
    convert = ["data", "convert", "cityscapes", str(root / "cityscapes"), "--nproc", "1"]
    result = runner.invoke(app, convert)
    assert result.exit_code == 0, result.output
    write_acdc(root / "acdc")
    write_dark_zurich(root / "darkzurich")
    return root


def test_adverse_presets_read_cityscapes_and_resize_as_the_reference_datasets():
    """MIC ``configs/_base_/datasets/uda_cityscapesHR_to_acdcHR_1024x1024.py:14,25,37`` and
    ``..._darkzurichHR_1024x1024.py``: Cityscapes resized to 2048x1024, the target's train and
    val images to 1920x1080, 1024 crops; the 512x512 configs (DAFormer) at half of each; Dark
    Zurich trains on ``rgb_anon/train/night`` (``..._darkzurichHR_1024x1024.py:67``)."""
    for target in TARGETS:
        low, high = preset(f"cs2{target}-daformer").data, preset(f"cs2{target}-hrda").data
        assert (low.source.layout, low.source.split) == ("cityscapes", "train")
        assert (low.val.layout, low.val.split) == (target, "val")
        assert (low.source_resize, low.target_resize, low.val_resize) == (
            (1024, 512),
            (960, 540),
            (960, 540),
        )
        assert (high.source_resize, high.target_resize, high.crop) == (
            (2048, 1024),
            (1920, 1080),
            (1024, 1024),
        )
        assert high.rcs.min_crop_ratio == 2.0 and low.rcs.min_crop_ratio == 0.5
    dark = preset("cs2darkzurich-hrda").data.target
    assert dark.layout == "darkzurich" and dark.conditions is None  # the layout's default: night


def test_adverse_presets_have_no_pseudo_label_margins_as_the_reference():
    """HRDA ``experiments.py:544-546`` and MIC ``experiments.py:409-411``: ``plcrop=False``
    for ACDC and Dark Zurich (no rectification artefacts), so neither DAFormer's row margins
    (``experiments.py:252-255``) nor the valid-pseudo-label mask (``:260-263``; its size
    ``valid_mask_size = [1080, 1920]`` in ``mmseg/datasets/acdc.py:20`` is then unused)."""
    for target in TARGETS:
        for method in METHODS:
            cfg = preset(f"cs2{target}-{method}")
            assert cfg.data.pseudo_margins is None
            assert (cfg.method.pseudo_ignore_top, cfg.method.pseudo_ignore_bottom) == (0, 0)


def test_adverse_mic_masks_source_and_target_unaugmented_as_the_reference():
    """MIC ``experiments.py:401-405``: ``mask_mode='separate'`` for Cityscapes -> ACDC and Dark
    Zurich (``separatetrgaug`` for GTA/Synthia); ``masking_consistency_module.py:97-103``:
    the masked batch stacks source image 0 (its label, weight 1) and target image 0 (its
    pseudo-label and weight), and ``:119`` colour-augments only modes with ``aug``."""
    for target in TARGETS:
        cfg = preset(f"cs2{target}-mic")
        assert cfg.method.mic_mask_mode == "separate" and cfg.runtime.seed == 0
        assert (cfg.method.mic_mask_block, cfg.method.mic_mask_ratio) == (64, 0.7)
    assert preset("gta2cs-mic").method.mic_mask_mode == "separatetrgaug"
    source = {"image": torch.zeros(2, 3, 4, 4), "label": torch.zeros(2, 4, 4).long()}
    target = {
        "image": torch.ones(2, 3, 4, 4),
        "label": torch.full((2, 4, 4), 5),
        "weight": torch.full((2, 4, 4), 0.5),
    }
    batch = separate_batch(source, target)
    assert batch.keys() == {"image", "label", "weight"}
    assert batch["image"][0].eq(0).all() and batch["image"][1].eq(1).all()
    assert batch["label"][0].eq(0).all() and batch["label"][1].eq(5).all()
    assert batch["weight"][0].eq(1).all() and batch["weight"][1].eq(0.5).all()


def test_adverse_presets_print_the_test_server_number_beside_our_val_score():
    """HRDA ``README.md:91-101`` (CS->ACDC 55.4 / 68.0, CS->DarkZurich 53.8 / 55.9, test) and
    MIC Table 2 (70.4, 60.2); MIC ``seg/README.md:141-143``: reported on the test split."""
    assert published_result("cs2acdc-hrda", "hrda", []).miou == 68.0
    assert published_result("cs2darkzurich-mic", "mic", []).miou == 60.2
    assert published_result("cs2acdc-mic", "mic", ["dispersion"]) is None
    line = compare_line({"mIoU": 0.5}, published_result("cs2acdc-mic", "mic", []))
    assert line == (
        "mIoU 50.00; published 70.4 (MIC (CVPR 2023), Cityscapes -> ACDC, test server; ours: val)"
    )


@pytest.mark.parametrize("plugin", [[], ["--plugin", "dispersion"]], ids=["", "dispersion"])
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("method", METHODS)
def test_adverse_preset_validates_and_trains_two_iterations_on_release_trees(
    data_root, tmp_path, target, method, plugin
):
    settings = {k: v for k, v in SHRUNK.items() if k != "data.pseudo_margins"}
    result = train_on_fixture_trees(f"cs2{target}-{method}", plugin, data_root, tmp_path, settings)
    assert result.exit_code == 0, result.output
    assert ("; published " in result.output) == (not plugin)
