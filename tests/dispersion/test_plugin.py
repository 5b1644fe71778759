"""The dispersion plugin: head, losses, weight hook, targets through the methods, pre-training."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from tests.methods.test_hrda import tiny_model, uda_batch
from uda_dispersion import dispersion_map
from uda_dispersion.auxiliary import read_auxiliary
from uda_dispersion.head import DispersionHead, MultiDilationClassifier
from uda_dispersion.losses import agreement_weights, berhu_loss
from uda_dispersion.plugin import DispersionPlugin
from uda_dispersion.pretrain import PretrainSettings, partial_path, pretrain
from uda_methods.config import MethodConfig
from uda_methods.methods import daformer as daformer_module
from uda_methods.methods import hrda as hrda_module
from uda_methods.models.hrda import Box
from uda_methods.registry import method_class

OURS = {"summed": None, "final_segmentation": "host", "init": "pytorch"}
"""Our head's options (the quick profile's), in ``DispersionHead``'s arguments."""


def test_our_head_gives_every_parameter_a_gradient():
    torch.manual_seed(0)
    head = DispersionHead(16, 19, width=8, **OURS)
    features, outputs = head(torch.randn(2, 16, 12, 20))
    assert features.shape == (2, 16, 12, 20)
    assert outputs["seg_init"].shape == (2, 19, 12, 20)
    assert outputs["disp_init"].shape == outputs["disp"].shape == (2, 1, 12, 20)
    (features.square().mean() + sum(o.square().mean() for o in outputs.values())).backward()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_teacher_pass_gives_the_same_segmentation_features_without_the_other_outputs():
    torch.manual_seed(0)
    head = DispersionHead(16, 19, width=8, **OURS)
    x = torch.randn(2, 16, 12, 20)
    with torch.no_grad():
        full, outputs = head.eval()(x)
        assert set(outputs) == {"seg_init", "disp_init", "disp"}  # evaluation, prediction
        head.train()
        for m in head.modules():  # same normalisation in both passes: freeze BN statistics
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        teacher, skipped = head(x)
    assert skipped == {}
    torch.testing.assert_close(teacher, full)


def test_multi_dilation_classifier_sums_all_its_branches():
    torch.manual_seed(0)
    classifier = MultiDilationClassifier(4, 3, (1, 2, 3, 4))
    x = torch.randn(1, 4, 10, 10)
    expected = sum(branch(x) for branch in classifier.branches)
    torch.testing.assert_close(classifier(x), expected)
    for branch in classifier.branches:  # removing any branch changes the output
        with torch.no_grad():
            saved = branch.weight.clone()
            branch.weight.zero_()
            assert not torch.allclose(classifier(x), expected)
            branch.weight.copy_(saved)


def test_berhu_is_l1_below_the_threshold_and_quadratic_above_ignoring_minus_one():
    prediction = torch.tensor([0.1, 1.0, 0.3, 0.5]).view(1, 1, 1, 4).requires_grad_()
    target = torch.tensor([0.0, 0.0, -1.0, 0.5]).view(1, 1, 4)
    # residuals 0.1, 1.0, 0.0 on valid pixels; c = 0.2 x 1.0; the published 1e-6 in 2c + 1e-6
    c = 0.2
    expected = (0.1 + (1.0 + c**2) / (2 * c + 1e-6) + 0.0) / 3
    loss = berhu_loss(prediction, target)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert prediction.grad[0, 0, 0, 2] == 0  # the ignored pixel
    empty = berhu_loss(prediction, torch.full((1, 1, 4), -1.0))
    assert empty.item() == 0 and empty.requires_grad


def test_weight_hook_multiplies_by_alpha_where_the_auxiliary_agrees_and_beta_elsewhere():
    weight = torch.tensor([[[0.9, 0.9], [0.5, 0.0]]])
    pseudo = torch.tensor([[[1, 2], [3, 4]]])
    aux = torch.tensor([[[1, 0], [3, 0]]])
    out = agreement_weights(weight, pseudo, aux, alpha=1.2, beta=0.3)
    torch.testing.assert_close(out, torch.tensor([[[1.08, 0.27], [0.6, 0.0]]]))
    clipped = agreement_weights(weight, pseudo, aux, alpha=1.2, beta=0.3, clip=True)
    torch.testing.assert_close(clipped, torch.tensor([[[1.0, 0.27], [0.6, 0.0]]]))


class FixedLabels(nn.Module):
    """An 'auxiliary network' that always predicts the given label map."""

    def __init__(self, labels: torch.Tensor) -> None:
        super().__init__()
        self.labels = labels
        self.seen = []

    def forward(self, x):
        self.seen.append(x)
        return nn.functional.one_hot(self.labels, 19).permute(0, 3, 1, 2).float()


def test_plugin_adjusts_the_weights_from_the_auxiliary_labels_of_depth_and_dispersion():
    plugin = DispersionPlugin({"alpha": 1.5, "beta": 0.25, "auxiliary": {"input_size": [8, 4]}})
    g = torch.Generator().manual_seed(0)
    pseudo = torch.randint(0, 3, (2, 8, 16), generator=g)
    aux_labels = torch.where(torch.rand(2, 4, 8, generator=g) < 0.5, 0, 1)
    plugin.auxiliary = FixedLabels(aux_labels)
    depth = 255 * torch.rand(2, 8, 16, generator=g)
    target = {"depth": depth} | plugin.target_targets({"depth": depth}, pseudo)
    weight = torch.full((2, 8, 16), 0.8)
    out = plugin.adjust_weights(target, pseudo, weight)
    # the network ran at its input size on (raw depth, dispersion of the pseudo-labels)
    (x,) = plugin.auxiliary.seen
    assert x.shape == (2, 2, 4, 8)
    disp = dispersion_map(pseudo, depth)[:, 0]
    torch.testing.assert_close(target["dispersion"], disp)
    expected_input = torch.stack([depth, disp], 1)
    expected_input = nn.functional.interpolate(expected_input, (4, 8), mode="bilinear")
    torch.testing.assert_close(x, expected_input)
    # and its labels, upsampled to the pseudo-labels' size, decide alpha or beta per pixel
    upsampled = aux_labels.repeat_interleave(2, 1).repeat_interleave(2, 2)
    expected = torch.where(upsampled == pseudo, 0.8 * 1.5, 0.8 * 0.25)
    torch.testing.assert_close(out, expected)
    agreement = float(plugin.log_values()["agreement"])
    assert agreement == pytest.approx(float((upsampled == pseudo).float().mean()))


class RecordingDispersion(DispersionPlugin):
    def __init__(self, settings=None):
        super().__init__({"weight_hook": False} | (settings or {}))
        self.calls = []

    def losses(self, output, targets, pixel_weight):
        self.calls.append((output, dict(targets), pixel_weight))
        return super().losses(output, targets, pixel_weight)


def test_dispersion_targets_follow_classmix_the_hrda_crop_and_the_mic_branch(monkeypatch):
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    mask[:, :, :24] = True
    monkeypatch.setattr(daformer_module, "class_mix_masks", lambda label: mask)
    box = Box(8, 16, 32, 32)
    monkeypatch.setattr(hrda_module, "random_detail_box", lambda *a, **k: box)
    cfg = MethodConfig(name="mic", hrda_detail_crop=(32, 32), mic_mask_block=8)
    plugin = RecordingDispersion()
    model = tiny_model(cfg, plugin)
    method = method_class("mic")(model, Accelerator(cpu=True), cfg, {plugin.name: plugin})
    batch = uda_batch()
    logs = method.train_step(batch, 0)
    assert {"mix.dispersion.disp", "mask.dispersion.disp", "src.detail.dispersion.disp"} <= set(
        logs
    )
    (src, src_crop, mixed, mixed_crop, masked, masked_crop) = [t for _, t, _ in plugin.calls]
    source_disp = dispersion_map(batch.source["label"], batch.source["depth"])[:, 0]
    torch.testing.assert_close(src["dispersion"], source_disp)
    target_disp = masked["dispersion"]
    torch.testing.assert_close(
        target_disp, dispersion_map(masked["label"], batch.target["depth"])[:, 0]
    )
    torch.testing.assert_close(mixed["dispersion"], torch.where(mask, source_disp, target_disp))
    for full, cropped in ((src, src_crop), (mixed, mixed_crop), (masked, masked_crop)):
        torch.testing.assert_close(cropped["dispersion"], box.crop(full["dispersion"]))
        torch.testing.assert_close(cropped["label"], box.crop(full["label"]))
    assert (target_disp == -1).any() and (target_disp >= 0).any()


def source_stream(size=(32, 32), seed=0):
    def batches(start):
        for i in range(start, 10**6):
            g = torch.Generator().manual_seed(seed * 10**6 + i)
            label = torch.randint(0, 3, (2, size[1] // 8, size[0] // 8), generator=g)
            label = label.repeat_interleave(8, 1).repeat_interleave(8, 2)
            yield {"label": label, "depth": 255 * torch.rand(2, *label.shape[1:], generator=g)}

    return batches


def test_pretraining_resumes_where_a_killed_run_stopped(tmp_path):
    settings = PretrainSettings(
        architecture="timm",
        backbone="resnet18",
        num_classes=3,
        input_size=(32, 32),
        iterations=6,
        batch_size=2,
        warmup_iters=2,
        checkpoint_interval=2,
        extractor={"min_area": 4},
    )
    whole = pretrain(source_stream(), tmp_path / "whole.pt", settings, log=lambda m: None)
    assert whole.iterations == 6 and (tmp_path / "whole.pt").is_file()

    def dies_after_five(start):
        for n, batch in enumerate(source_stream()(start)):
            if start + n == 5:
                raise KeyboardInterrupt
            yield batch

    out = tmp_path / "resumed.pt"
    with pytest.raises(KeyboardInterrupt):
        pretrain(dies_after_five, out, settings, log=lambda m: None)
    assert partial_path(out).is_file() and not out.exists()
    messages = []
    pretrain(source_stream(), out, settings, log=messages.append)
    assert "from iteration 4" in messages[0] and not partial_path(out).exists()
    a, _ = read_auxiliary(tmp_path / "whole.pt")
    b, meta = read_auxiliary(out)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, msg=name)
    assert meta["settings"]["backbone"] == "resnet18" and not any(
        p.requires_grad for p in b.parameters()
    )


def test_loading_something_else_than_an_auxiliary_checkpoint_says_what_to_do(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(ValueError, match="uda dispersion pretrain"):
        read_auxiliary(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_auxiliary(tmp_path / "missing.pt")
