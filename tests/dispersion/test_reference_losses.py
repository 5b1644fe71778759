"""The dispersion method's losses and presets against the published code (Dispersion 604e8ea).

Each test restates the reference formula on its own (torch only, the reference's order of
operations) and compares ours with it on the same inputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from tests.dispersion.test_plugin import RecordingDispersion
from tests.methods.test_hrda import tiny_model, uda_batch
from uda_dispersion.losses import berhu_loss, weighted_cross_entropy
from uda_methods.config import MethodConfig
from uda_methods.methods import hrda as hrda_module
from uda_methods.models.hrda import Box
from uda_methods.presets import PUBLISHED_HRDA
from uda_methods.registry import method_class
from uda_methods.run import resolve_config


def reference_berhu(prediction: torch.Tensor, ground_truth: torch.Tensor) -> torch.Tensor:
    """``BerHuLoss.forward`` (``mmseg/models/losses/berhu_loss.py:26-48``, ignore_index -1)
    after ``BaseDecodeHead.losses`` resizes the prediction (``decode_head.py:261-265``)."""
    prediction = F.interpolate(
        prediction, ground_truth.shape[2:], mode="bilinear", align_corners=False
    )
    mask = ground_truth != -1
    diff = torch.abs(prediction - ground_truth)
    if not mask.any():
        return diff.new_tensor(0.0)
    c = 0.2 * diff[mask].max()
    loss = torch.where(diff <= c, diff, (diff * diff + c * c) / (2 * c + 1e-6))
    return loss[mask].mean()


def reference_cross_entropy(seg_logit, seg_label, seg_weight=None) -> torch.Tensor:
    """``BaseDecodeHead.losses``' segmentation term (``decode_head.py:241-255``): mmseg's
    ``cross_entropy`` with ``reduction='mean'`` (``cross_entropy_loss.py:22-33``,
    ``utils.py:60-69``): the pixel losses (0 where ignored) x weight, mean over all pixels."""
    seg_logit = F.interpolate(seg_logit, seg_label.shape[2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(seg_logit, seg_label.squeeze(1), reduction="none", ignore_index=255)
    if seg_weight is not None:
        loss = loss * seg_weight.float()
    return loss.mean()


def dispersion_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A B x 1 x 8 x 12 prediction and a B x 1 x 16 x 24 target with ignored (-1) pixels, the
    two images' residuals of very different sizes."""
    g = torch.Generator().manual_seed(seed)
    prediction = torch.rand(2, 1, 8, 12, generator=g)
    prediction[1] *= 5
    target = torch.rand(2, 1, 16, 24, generator=g)
    target[torch.rand(2, 1, 16, 24, generator=g) < 0.3] = -1
    return prediction, target


def test_berhu_threshold_carries_a_gradient_as_the_published_berhu_loss():
    """``berhu_loss.py:35``: c = 0.2 * diff[mask].max() is not detached, so the loss's
    gradient also reaches the pixel of the largest residual through c; the value and every
    gradient match the reference's (d^2 + c^2) / (2c + 1e-6) above c."""
    prediction, target = dispersion_batch()
    ours_input = prediction.clone().requires_grad_()
    ours = berhu_loss(ours_input, target)
    ours.backward()
    reference_input = prediction.clone().requires_grad_()
    expected = reference_berhu(reference_input, target)
    expected.backward()
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(ours_input.grad, reference_input.grad)


def test_berhu_threshold_is_the_largest_valid_residual_of_the_whole_batch():
    """``berhu_loss.py:26-35``: the mask is ``ground_truth != -1`` over the B x 1 x H x W
    batch and c is taken over all its valid pixels at once, not image by image."""
    prediction, target = dispersion_batch()
    per_image = torch.stack(
        [reference_berhu(p[None], t[None]) for p, t in zip(prediction, target, strict=True)]
    )
    weights = (target != -1).flatten(1).sum(1).float()
    per_image_mean = (per_image * weights).sum() / weights.sum()
    ours = berhu_loss(prediction, target)
    torch.testing.assert_close(ours, reference_berhu(prediction, target))
    assert abs(ours.item() - per_image_mean.item()) > 1e-3
    # ignored pixels never set the threshold, however large their residual
    target_far = target.clone()
    prediction_up = F.interpolate(prediction, (16, 24), mode="bilinear", align_corners=False)
    far = torch.where(target == -1, prediction_up + 100, prediction_up)
    torch.testing.assert_close(berhu_loss(far, target_far), reference_berhu(far, target_far))


def test_berhu_detach_threshold_option_cuts_the_gradient_through_c():
    """Ours (``berhu_detach_threshold``): c detached; the value is the reference's, the
    gradient is the reference's with c a constant, which differs (``berhu_loss.py:35``)."""
    prediction, target = dispersion_batch()
    ours_input = prediction.clone().requires_grad_()
    berhu_loss(ours_input, target, detach_threshold=True).backward()
    published_input = prediction.clone().requires_grad_()
    reference_berhu(published_input, target).backward()
    up = F.interpolate(prediction, (16, 24), mode="bilinear", align_corners=False)
    mask = target != -1
    c = 0.2 * (up - target).abs()[mask].max()
    detached_input = prediction.clone().requires_grad_()
    diff = (
        F.interpolate(detached_input, (16, 24), mode="bilinear", align_corners=False) - target
    ).abs()
    loss = torch.where(diff <= c, diff, (diff * diff + c * c) / (2 * c + 1e-6))
    loss[mask].mean().backward()
    torch.testing.assert_close(ours_input.grad, detached_input.grad)
    assert not torch.allclose(ours_input.grad, published_input.grad)


def test_initial_segmentation_cross_entropy_averages_over_all_pixels_ignored_counted_as_zero():
    """``decode_head.py:251-255`` with mmseg's ``cross_entropy`` (``cross_entropy_loss.py:
    22-33``, ``utils.py:60-69``): (pixel loss x weight).mean() over all B x H x W pixels, the
    ignored ones (255) contributing 0; ``seg_init_mean_over="valid"`` (ours) divides by the
    non-ignored pixels instead."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 19, 8, 12, generator=g)
    label = torch.randint(0, 19, (2, 16, 24), generator=g)
    label[torch.rand(2, 16, 24, generator=g) < 0.25] = 255
    weight = torch.rand(2, 16, 24, generator=g)
    expected = reference_cross_entropy(logits, label[:, None], weight)
    torch.testing.assert_close(weighted_cross_entropy(logits, label, weight), expected)
    valid = (label != 255).sum()
    torch.testing.assert_close(
        weighted_cross_entropy(logits, label, weight, mean_over="valid"),
        expected * label.numel() / valid,
    )


def test_head_losses_are_s_init_at_weight_one_and_both_berhu_terms_at_0_005():
    """``dispersion_daformer_head.py:385-403`` runs ``BaseDecodeHead.losses`` on (S, D) and
    on (S_init, D_init) with the same label, dispersion map and pixel weights
    (``decode_head.py:251-269``): S_init's cross-entropy at weight 1, each BerHu x 0.005."""
    g = torch.Generator().manual_seed(0)
    outputs = {
        "seg_init": torch.randn(2, 19, 8, 12, generator=g),
        "disp_init": torch.rand(2, 1, 8, 12, generator=g),
        "disp": torch.rand(2, 1, 8, 12, generator=g),
    }
    label = torch.randint(0, 19, (2, 16, 24), generator=g)
    label[:, :3] = 255
    _, disp = dispersion_batch()
    weight = torch.rand(2, 16, 24, generator=g)

    class Output:
        aux = outputs

    plugin = RecordingDispersion()
    losses = plugin.losses(Output(), {"label": label, "dispersion": disp[:, 0]}, weight)
    assert set(losses) == {"seg_init", "disp_init", "disp"}
    torch.testing.assert_close(
        losses["seg_init"], reference_cross_entropy(outputs["seg_init"], label[:, None], weight)
    )
    for key in ("disp_init", "disp"):
        torch.testing.assert_close(losses[key], 0.005 * reference_berhu(outputs[key], disp))


class StandInDispersion(RecordingDispersion):
    """The plugin with stand-in dispersion targets (a fixed function of the label, -1 where
    it is ignored), so that these tests check the losses whatever the extractor does."""

    def _dispersion(self, label: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        return torch.where(label == 255, -1.0, (label.float() * 0.37 + depth / 255) % 1)


def hrda_step(monkeypatch, plugin_losses: str):
    box = Box(8, 16, 32, 32)
    monkeypatch.setattr(hrda_module, "random_detail_box", lambda *a, **k: box)
    settings = PUBLISHED_HRDA | {"hrda_plugin_losses": plugin_losses}
    cfg = MethodConfig(name="hrda", hrda_detail_crop=(32, 32), **settings)
    plugin = StandInDispersion()
    model = tiny_model(cfg, plugin)
    method = method_class("hrda")(model, Accelerator(cpu=True), cfg, {plugin.name: plugin})
    batch = uda_batch()
    logs = {k: float(v) for k, v in method.train_step(batch, 0).items()}
    return plugin, batch, logs


def test_hrda_head_losses_come_from_the_context_pass_unscaled_without_a_detail_term(
    monkeypatch,
):
    """``dispersion_head.py:257-265``: the head's terms (``init.loss_seg``, ``loss_disp``,
    ``init.loss_disp``) are computed once per pass, on the context pass's S_init, D and
    D_init upsampled x2 (lines 168-190), and lines 293-297 scale only ``loss_seg`` (x0.9)
    and ``hr.loss_seg`` (x0.1); the detail loss (lines 284-287) has no dispersion term."""
    plugin, _, logs = hrda_step(monkeypatch, "fused")
    assert not any(".detail.dispersion." in key for key in logs)
    assert {"src.detail.seg", "mix.detail.seg"} <= logs.keys()
    assert len(plugin.calls) == 2  # source and mixed, the fused output only

    def up(x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    for (output, targets, weight), prefix in zip(plugin.calls, ("src.", "mix."), strict=True):
        assert (weight is None) == (prefix == "src.")
        context, label = output.context.aux, targets["label"][:, None]
        disp = targets["dispersion"][:, None]
        expected = {
            "seg_init": reference_cross_entropy(up(context["seg_init"]), label, weight),
            "disp": 0.005 * reference_berhu(up(context["disp"]), disp),
            "disp_init": 0.005 * reference_berhu(up(context["disp_init"]), disp),
        }
        for key, value in expected.items():
            assert logs[f"{prefix}dispersion.{key}"] == pytest.approx(value.item(), rel=1e-5)


def test_hrda_per_branch_plugin_losses_option_weights_each_branch_like_its_segmentation(
    monkeypatch,
):
    """Ours (``hrda_plugin_losses="per-branch"``): the fused and the detail outputs each give
    the head's terms, x0.9 and x0.1 like their segmentation; the reference has only the
    fused, unscaled ones (``dispersion_head.py:257-297``)."""
    plugin, _, logs = hrda_step(monkeypatch, "per-branch")
    assert len(plugin.calls) == 4  # source and mixed, each fused then detail
    for (output, targets, weight), prefix, factor in zip(
        plugin.calls[:2], ("src.", "src.detail."), (0.9, 0.1), strict=True
    ):
        unscaled = unscaled_losses(output, targets, weight)
        for key, value in unscaled.items():
            assert logs[f"{prefix}dispersion.{key}"] == pytest.approx(factor * value, rel=1e-5)


def unscaled_losses(output, targets, weight) -> dict[str, float]:
    return {k: v.item() for k, v in StandInDispersion().losses(output, targets, weight).items()}


PUBLISHED_RUNS = {
    # preset: (seed, source Resize img_scale, beta), configs/dispersion/<file>.py
    "gta2cs-daformer": (0, (1024, 512), 0.6),  # gta2cs_daformer: 23, 51; dataset 19
    "gta2cs-hrda": (1, (2048, 1024), 0.6),  # gtaHR2csHR_hrda: 24, 84; dataset 19
    "gta2cs-mic": (2, (2048, 1024), 0.6),  # gtaHR2csHR_mic: 22, 100; dataset 19
    "synthia2cs-daformer": (0, (1280, 760), 0.3),  # synthia2cs_daformer: 23, 51; dataset 19
    "synthia2cs-hrda": (1, (2560, 1520), 0.3),  # synthiaHR2csHR_hrda: 24, 84; dataset 19
    "synthia2cs-mic": (2, (2560, 1520), 0.3),  # synthiaHR2csHR_mic: 22, 100; dataset 19
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_RUNS))
def test_published_dispersion_presets_take_each_configs_seed_resize_and_schedule(name):
    """``configs/dispersion/*.py``: ``seed`` 0 (DAFormer), 1 (HRDA), 2 (MIC); ``max_iters``
    60000, ``checkpoint_config`` interval 60000, ``evaluation`` interval 4000; the source
    ``Resize(img_scale=...)`` of ``configs/_base_/datasets/*_disp_*.py:19`` with mmseg's
    default keep_ratio=True; ``beta_disagreement_multiplier`` 0.6 (GTA) or 0.3 (Synthia);
    the head's losses as published, from the fused output alone with HRDA."""
    seed, resize, beta = PUBLISHED_RUNS[name]
    cfg = resolve_config(name, None, {"plugins": {"dispersion": {}}}, [])
    assert cfg.runtime.seed == seed
    assert (cfg.runtime.iterations, cfg.runtime.checkpoint_interval) == (60000, 60000)
    assert cfg.runtime.eval_interval == 4000
    assert tuple(cfg.data.source_resize) == resize and cfg.data.resize_mode == "keep_ratio"
    plugin = cfg.plugins["dispersion"]
    assert plugin["beta"] == beta and plugin["alpha"] == 1.2
    assert plugin["seg_init_mean"] == "all" and plugin["berhu_detach_threshold"] is False
    assert cfg.method.hrda_plugin_losses == "fused"
    # the user's settings sit above the profile
    asked = resolve_config(
        name, None, {"plugins": {"dispersion": {}}}, ["runtime.checkpoint_interval=4000"]
    )
    assert asked.runtime.checkpoint_interval == 4000


@pytest.mark.parametrize("name", ["gta2cs-hrda", "gta2cs-mic", "synthia2cs-hrda", "synthia2cs-mic"])
def test_published_presets_never_reach_the_positional_slot_quirk_of_disphead(name):
    """``dispersion_head.py:270-274, 288-292`` pass ``seg_weight`` positionally into
    ``BaseDecodeHead.losses``' third slot, ``disp_logit`` (``decode_head.py:236-238``), so
    the context loss (``lr_loss_weight > 0``) and an uncropped detail loss would drop the
    pixel weights. The published configs reach neither: ``lr_loss_weight`` is 0 and
    ``hr_crop_size`` enables the detail crop (``dispersion_encoder_decoder.py:76``); so do
    ours, whose detail loss is always on the crop with its weights."""
    cfg = resolve_config(name, None, {"plugins": {"dispersion": {}}}, [])
    assert cfg.method.hrda_context_loss_weight == 0
    assert cfg.method.hrda_detail_loss_weight == 0.1 and cfg.method.multi_resolution
