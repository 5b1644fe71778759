"""The self-training parts against the reference code (lhoyer/MIC 2f932a9, files under seg/).

Each test restates the reference's formula on its own (the DACS transforms, mmseg's loss
reduction, the pseudo-label weight, ClassMix, ``downscale_label_ratio``, MIC's block masks,
the EMA update) and compares it with ours on the same inputs and random draws. The reference
draws with Python's and NumPy's generators; the restatements draw the same quantities in the
same order from torch's, as ours do.
"""

import math

import kornia
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uda_core.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    blur_kernel_size,
    color_jitter,
    strong_augment,
)
from uda_core.ema import EMATeacher
from uda_core.losses import downscale_label_ratio, seg_cross_entropy
from uda_core.masking import block_mask
from uda_core.mixing import batch_class_mix_masks
from uda_core.pseudo_label import pseudo_labels

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def normalised_images(n=3, h=24, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, h, w, generator=g) * 255 - MEAN) / STD


# Independent HSV conversion (hue in turns), for the saturation and hue steps.
def rgb_to_hsv(rgb):
    r, g, b = rgb.unbind(1)
    high, argmax = rgb.max(1)
    delta = high - rgb.min(1).values
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.stack([((g - b) / safe) % 6, (b - r) / safe + 2, (r - g) / safe + 4], 1)
    hue = torch.where(delta > 0, hue.gather(1, argmax[:, None])[:, 0] / 6, torch.zeros_like(delta))
    sat = torch.where(high > 0, delta / torch.where(high > 0, high, torch.ones_like(high)), high)
    return torch.stack([hue % 1, sat, high], 1)


def hsv_to_rgb(hsv):
    h, s, v = hsv.unbind(1)
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    return v[:, None] - (v * s)[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def reference_jitter(rgb, params):
    """kornia 0.5.8 ``ColorJitter``: the four steps in ``order``, per-image factors."""
    view = (-1, 1, 1, 1)
    for step in params["order"].tolist():
        if step == 0:
            rgb = (rgb + params["brightness_factor"].view(view) - 1).clamp(0, 1)
        elif step == 1:
            rgb = (rgb * params["contrast_factor"].view(view)).clamp(0, 1)
        elif step == 2:
            h, s, v = rgb_to_hsv(rgb).unbind(1)
            s = (s * params["saturation_factor"].view(-1, 1, 1)).clamp(0, 1)
            rgb = hsv_to_rgb(torch.stack([h, s, v], 1))
        else:
            h, s, v = rgb_to_hsv(rgb).unbind(1)
            h = (h + params["hue_factor"].view(-1, 1, 1)) % 1
            rgb = hsv_to_rgb(torch.stack([h, s, v], 1))
    return rgb


@pytest.mark.parametrize("seed", range(6))
def test_color_jitter_is_kornia_0_5_8_color_jitter_dacs_transforms_52_66(seed):
    """``dacs_transforms.py:52-66``: the images denormalised to [0, 1], kornia's
    ``ColorJitter(s, s, s, s)``: brightness ``x + (f - 1)``, contrast ``x * f`` without the mean,
    saturation scaled in HSV, hue shifted, in a random order drawn on every call; renormalised."""
    images = normalised_images(seed=seed)
    torch.manual_seed(seed)
    ours = color_jitter(images, 0.2)
    torch.manual_seed(seed)
    jiggle = kornia.augmentation.ColorJiggle(0.2, 0.2, 0.2, 0.2)
    rgb = (images * STD + MEAN) / 255
    jiggle(rgb)
    params = jiggle._params
    assert params["brightness_factor"].shape == (3,)  # factors per image
    expected = (reference_jitter(rgb, params) * 255 - MEAN) / STD
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def test_color_jitter_draws_a_new_order_on_every_call_dacs_transforms_58_64():
    """``dacs_transforms.py:58-64``: a new ``ColorJitter`` per call, whose order is random."""
    torch.manual_seed(0)
    orders = set()
    for _ in range(40):
        jiggle = kornia.augmentation.ColorJiggle(0.2, 0.2, 0.2, 0.2)
        jiggle(torch.rand(1, 3, 4, 4))
        orders.add(tuple(jiggle._params["order"].tolist()))
    assert len(orders) > 5


def test_color_jitter_built_once_draws_what_a_module_built_per_call_draws():
    """The reference builds a new ``ColorJitter`` at every call (``dacs_transforms.py:58-64``);
    ours builds it once per strength. Ten calls in a row give the same images as ten calls
    that each build their own module, since the module draws everything (factors and order)
    from the global generator when called."""
    images = torch.rand(10, 2, 3, 8, 8)
    torch.manual_seed(5)
    ours = [color_jitter(x, 0.2) for x in images]
    torch.manual_seed(5)
    theirs = []
    for x in images:
        rgb = (x * STD + MEAN) / 255.0
        out = kornia.augmentation.ColorJiggle(0.2, 0.2, 0.2, 0.2)(rgb)
        theirs.append((out * 255.0 - MEAN) / STD)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_blur_kernel_size_is_the_reference_formula_dacs_transforms_74_81():
    """``dacs_transforms.py:74-81``: ``floor(ceil(0.1 L) - 0.5 + ceil(0.1 L) % 2)``, odd."""
    for length in range(1, 3000):
        ten = np.ceil(0.1 * length)
        expected = int(np.floor(ten - 0.5 + ten % 2))
        assert blur_kernel_size(length) == expected and expected % 2 == 1


def reference_color_jitter(gate, s, p, data):
    """``dacs_transforms.py:52-66`` with a torch-drawn gate."""
    if gate > p:
        data = (data * STD + MEAN) / 255.0
        data = kornia.augmentation.ColorJitter(brightness=s, contrast=s, saturation=s, hue=s)(data)
        data = data * 255.0
        data = (data - MEAN) / STD
    return data


def reference_gaussian_blur(gate, data):
    """``dacs_transforms.py:69-87`` with ``sigma`` drawn from torch."""
    if gate > 0.5:
        sigma = torch.empty(()).uniform_(0.15, 1.15).item()
        ky = int(np.floor(np.ceil(0.1 * data.shape[2]) - 0.5 + np.ceil(0.1 * data.shape[2]) % 2))
        kx = int(np.floor(np.ceil(0.1 * data.shape[3]) - 0.5 + np.ceil(0.1 * data.shape[3]) % 2))
        data = kornia.filters.GaussianBlur2d(kernel_size=(ky, kx), sigma=(sigma, sigma))(data)
    return data


def reference_jiggle_as_jitter(monkeypatch):
    # kornia 0.5.8's ColorJitter is today's ColorJiggle (today's ColorJitter blends like
    # torchvision); the restatement calls it under the reference's name.
    monkeypatch.setattr(kornia.augmentation, "ColorJitter", kornia.augmentation.ColorJiggle)


@pytest.mark.parametrize("seed", range(8))
def test_mixed_step_gates_once_per_batch_and_transforms_each_image_dacs_331_409(seed, monkeypatch):
    """``dacs.py:331-339``: one jitter gate and one blur gate, ``U(0,1)``, per batch;
    ``dacs.py:400-409``: each mixed image transformed by its own call (own jitter factors and
    order, own blur sigma)."""
    reference_jiggle_as_jitter(monkeypatch)
    images = normalised_images(n=3, seed=seed)
    torch.manual_seed(seed)
    ours = strong_augment(images, 0.2, 0.2, True, gates="batch", per_image_calls=True)
    torch.manual_seed(seed)
    jitter_gate, blur_gate = torch.rand(()).item(), torch.rand(()).item()
    expected = []
    for image in images:
        data = reference_color_jitter(jitter_gate, 0.2, 0.2, image[None])
        expected.append(reference_gaussian_blur(blur_gate, data))
    torch.testing.assert_close(ours, torch.cat(expected), atol=1e-4, rtol=0)


@pytest.mark.parametrize("seed", range(8))
def test_masked_image_gets_one_jitter_order_and_one_blur_sigma_mcm_118_130(seed, monkeypatch):
    """``masking_consistency_module.py:118-130``: MIC's masked batch goes through one
    ``strong_transform`` call: one jitter gate, one order (factors per image), one blur gate and
    one sigma for the whole batch."""
    reference_jiggle_as_jitter(monkeypatch)
    images = normalised_images(n=3, seed=seed)
    torch.manual_seed(seed)
    ours = strong_augment(images, 0.2, 0.2, True, gates="batch")
    torch.manual_seed(seed)
    jitter_gate, blur_gate = torch.rand(()).item(), torch.rand(()).item()
    data = reference_color_jitter(jitter_gate, 0.2, 0.2, images)
    torch.testing.assert_close(ours, reference_gaussian_blur(blur_gate, data), atol=1e-4, rtol=0)


def test_gates_per_image_option_draws_each_image_on_its_own():
    """Option ``method.augment_gates: image`` (ours): each image its own gates, as before."""
    images = normalised_images(n=8)
    changed = set()
    for seed in range(10):
        torch.manual_seed(seed)
        out = strong_augment(images, 0.2, 0.5, False, gates="image")
        jittered = (out - images).flatten(1).abs().amax(1) > 1e-3
        changed.add(tuple(jittered.tolist()))
    assert any(0 < sum(c) < 8 for c in changed)  # some images jittered, others not
    for seed in range(10):
        torch.manual_seed(seed)
        out = strong_augment(images, 0.2, 0.5, False, gates="batch")
        jittered = (out - images).flatten(1).abs().amax(1) > 1e-3
        assert jittered.all() or not jittered.any()


def test_cross_entropy_averages_over_every_pixel_ignored_as_zero_losses_utils_48_77():
    """``losses/utils.py:48-77`` with ``cross_entropy_loss.py:12-35`` and
    ``decode_head.py:232-254``: ``(F.cross_entropy(reduction='none') * weight).mean()``, the
    ignored pixels counted as 0 in the mean."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 19, 16, 16, generator=g)
    label = torch.randint(0, 19, (2, 32, 32), generator=g)
    label[torch.rand(2, 32, 32, generator=g) < 0.22] = 255
    weight = torch.rand(2, 32, 32, generator=g)
    up = F.interpolate(logits, (32, 32), mode="bilinear", align_corners=False)
    per_pixel = F.cross_entropy(up, label, reduction="none", ignore_index=255)
    expected = (per_pixel * weight).mean()
    ours = seg_cross_entropy(logits, label, weight, mean_over="all")
    torch.testing.assert_close(ours, expected)
    valid = (label != 255).float().mean()
    # the option ``valid`` (ours before) divides by the non-ignored pixels: x 1 / 0.78
    torch.testing.assert_close(seg_cross_entropy(logits, label, weight), expected / valid)


def test_pseudo_weight_is_one_share_over_the_whole_batch_dacs_264_272():
    """``dacs.py:264-272``: ``sum(max prob >= threshold) / size`` over the whole batch, one
    scalar for every pixel of every image."""
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(3, 19, 8, 8, generator=g)
    logits[0] *= 3  # a confident image beside less confident ones
    ours = pseudo_labels(logits, 0.968)
    prob, label = torch.softmax(logits, dim=1).max(dim=1)
    share = torch.sum(prob.ge(0.968).long() == 1).item() / np.size(label.numpy())
    torch.testing.assert_close(ours.weight, share * torch.ones(prob.shape))
    torch.testing.assert_close(ours.label, label)


def test_pseudo_weight_per_image_option_is_each_images_share():
    """Option ``method.pseudo_weight_scope: image`` (ours): each image's own share."""
    logits = torch.zeros(2, 3, 2, 2)
    logits[0, 1] = 10.0  # every pixel of image 0 confident
    logits[1, 2, 0, 0] = 10.0  # one pixel of image 1 confident
    out = pseudo_labels(logits, threshold=0.968, per_image=True)
    assert torch.allclose(out.weight[0], torch.ones(2, 2))
    assert torch.allclose(out.weight[1], torch.full((2, 2), 0.25))
    assert torch.allclose(pseudo_labels(logits, 0.968).weight, torch.full((2, 2, 2), 0.625))


@pytest.mark.parametrize("seed", range(10))
def test_classmix_draws_half_the_batch_classes_255_included_dacs_transforms_90_106(seed):
    """``dacs_transforms.py:90-106``: ``classes = torch.unique(labels)`` over the whole source
    label batch, 255 included; for each image ``int((n + n % 2) / 2)`` of them without
    replacement; the mask is where the image's label is one of them."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 6, (2, 8, 8), generator=g)
    labels[0][labels[0] == 5] = 255
    labels[1, :2] = 255
    ours = batch_class_mix_masks(labels, torch.Generator().manual_seed(seed))
    draws = torch.Generator().manual_seed(seed)
    expected = []
    for label in labels:
        classes = torch.unique(labels)
        nclasses = classes.shape[0]
        choice = torch.randperm(nclasses, generator=draws)[: int((nclasses + nclasses % 2) / 2)]
        chosen = classes[choice]
        label_b, classes_b = torch.broadcast_tensors(label, chosen.unsqueeze(1).unsqueeze(2))
        expected.append(label_b.eq(classes_b).sum(0) > 0)
    assert torch.equal(ours, torch.stack(expected))


def test_classmix_can_paste_ignored_source_pixels_dacs_transforms_93():
    """``dacs_transforms.py:93``: 255 is one of the classes drawn from."""
    labels = torch.tensor([[[0, 255]], [[1, 2]]])
    picked = [
        batch_class_mix_masks(labels, torch.Generator().manual_seed(s))[0, 0, 1] for s in range(20)
    ]
    assert any(picked) and not all(picked)


def reference_downscale_label_ratio(gt, scale_factor, min_ratio, n_classes, ignore_index=255):
    """``utils/utils.py:18-39``, B x 1 x H x W."""
    out = gt.clone()
    out[out == ignore_index] = n_classes
    out = F.one_hot(out.squeeze(1), num_classes=n_classes + 1).permute(0, 3, 1, 2)
    out = F.avg_pool2d(out.float(), kernel_size=scale_factor)
    gt_ratio, out = torch.max(out, dim=1, keepdim=True)
    out[out == n_classes] = ignore_index
    out[gt_ratio < min_ratio] = ignore_index
    return out


@pytest.mark.parametrize("min_ratio", [0.2, 0.3, 0.5, 0.75])
def test_downscale_label_ratio_takes_the_argmax_over_classes_and_ignore_utils_18_39(min_ratio):
    """``utils/utils.py:18-39``: the ignore value is one more channel of the argmax; a cell
    where it wins is ignored even if a class covers ``min_ratio`` of it."""
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 4, (4, 32, 32), generator=g)
    label[torch.rand(4, 32, 32, generator=g) < 0.4] = 255
    ours = downscale_label_ratio(label, 4, min_ratio, num_classes=19)
    expected = reference_downscale_label_ratio(label[:, None], 4, min_ratio, 19)[:, 0]
    assert torch.equal(ours, expected)
    cell = torch.tensor([[[255, 255], [1, 2]]])  # ignore 1/2, classes 1 and 2 1/4 each
    assert downscale_label_ratio(cell, 2, 0.25, 19).item() == 255  # ignore wins the argmax


@pytest.mark.parametrize(("h", "w", "block"), [(64, 64, 16), (100, 200, 64), (90, 150, 32)])
def test_block_mask_is_a_rounded_grid_resized_by_nearest_masking_transforms_27_36(h, w, block):
    """``masking_transforms.py:27-36``: a ``round(H / b)`` x ``round(W / b)`` grid kept where
    ``U(0,1) > ratio``, resized to H x W with mmseg's ``resize`` (nearest)."""
    ours = block_mask(3, h, w, block, 0.7, generator=torch.Generator().manual_seed(0))
    draws = torch.Generator().manual_seed(0)
    grid = torch.rand((3, 1, round(h / block), round(w / block)), generator=draws)
    expected = F.interpolate((grid > 0.7).float(), size=(h, w), mode="nearest")
    assert torch.equal(ours, expected)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_ema_averages_parameters_only_the_teacher_keeps_its_buffers_dacs_122_135():
    """``dacs.py:122-135``: ``ema = a * ema + (1 - a) * param`` over ``parameters()``, with
    ``a = min(1 - 1 / (iter + 1), alpha)``; the teacher's BatchNorm statistics are its own."""
    torch.manual_seed(0)
    student = Tiny()
    teacher = EMATeacher(student, alpha=0.999, buffers="own")
    teacher.train()(torch.randn(2, 3, 4, 4))  # the teacher's own statistics move
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student.train()(torch.randn(2, 3, 4, 4))
    teacher.update(student, step=3)
    a = min(1 - 1 / (3 + 1), 0.999)
    after = teacher.model.state_dict()
    params = {n for n, _ in student.named_parameters()}
    for key, value in student.state_dict().items():
        if key in params:
            torch.testing.assert_close(after[key], a * before[key] + (1 - a) * value)
        else:
            assert torch.equal(after[key], before[key]), key
    assert math.isclose(a, 0.75)
