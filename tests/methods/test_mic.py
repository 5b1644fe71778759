"""MIC: block masks, the masked branch's targets and weights, and the CLI end to end."""

import json

import torch
from typer.testing import CliRunner

from tests.conftest import tiny_overrides
from tests.methods.test_hrda import HRDA_TINY, run_step
from uda_cli.main import app
from uda_core.masking import block_mask, mask_image

runner = CliRunner()


def test_block_mask_drops_whole_blocks_at_the_ratio():
    g = torch.Generator().manual_seed(0)
    masks = block_mask(400, 128, 192, 64, 0.7, generator=g)
    assert masks.shape == (400, 1, 128, 192)
    blocks = masks.unflatten(2, (2, 64)).unflatten(4, (3, 64))  # B x 1 x 2 x 64 x 3 x 64
    assert (blocks.amax(dim=(3, 5)) == blocks.amin(dim=(3, 5))).all()  # each block is whole
    assert abs((1 - masks).mean().item() - 0.7) < 0.02


def test_mask_image_zeroes_the_dropped_blocks_only():
    torch.manual_seed(0)
    image = torch.randn(2, 3, 32, 48) + 5
    masked = mask_image(image, 16, 0.5)
    dropped = masked == 0
    assert dropped.any() and (masked[~dropped] == image[~dropped]).all()


def test_masked_branch_trains_on_the_pseudo_labels_weights_and_plugin_targets():
    plugin, batch, logs = run_step("mic")
    assert {"mask.seg", "mask.detail.seg", "mask.depth-head.depth"} <= logs.keys()
    assert len(plugin.calls) == 6  # source, mixed, masked; each fused then detail
    (fused, targets, weight), (_, cropped, detail_weight) = plugin.calls[4:]
    # the target-side plugin targets, unmixed, and the adjusted, margin-masked weights
    torch.testing.assert_close(targets["depth_norm"], batch.target["depth"] / 255)
    assert weight is targets["weight"] and weight.max() <= 0.5 and weight[:, :8].max() == 0
    assert not torch.equal(targets["image"], batch.target["image"])
    torch.testing.assert_close(cropped["depth_norm"], fused.box.crop(targets["depth_norm"]))
    torch.testing.assert_close(detail_weight, fused.box.crop(weight))
    # the mixed step used the same pseudo-labels (where the target was kept)
    mixed_targets = plugin.calls[2][1]
    kept = mixed_targets["depth_norm"] == targets["depth_norm"]
    assert kept.any() and torch.equal(mixed_targets["label"][kept], targets["label"][kept])


def test_mic_on_daformer_trains_at_one_resolution():
    plugin, _, logs = run_step("mic", mic_base="daformer")
    assert {"src.seg", "mix.seg", "mask.seg", "mask.depth-head.depth"} <= logs.keys()
    assert not any(".detail." in k for k in logs) and len(plugin.calls) == 3


def test_uda_train_mic_runs_and_uda_eval_reads_its_checkpoint(tmp_path, synthetic_root):
    args = ["train", "--method", "mic", "--name", "m", *tiny_overrides(tmp_path, 3), *HRDA_TINY]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [
        json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()
    ]
    assert "mask.seg" in records[0] and "mask.detail.seg" in records[0]
    result = runner.invoke(app, ["eval", str(tmp_path / "m" / "checkpoints" / "iter_000003.pt")])
    assert result.exit_code == 0, result.output
