"""The self-training parts: EMA teacher, pseudo-labels, ClassMix, strong augmentation, losses."""

import pytest
import torch
from torch import nn

from uda_core.augment import color_jitter, gaussian_blur, strong_augment
from uda_core.ema import EMATeacher
from uda_core.losses import downscale_label_ratio, feature_distance, seg_cross_entropy
from uda_core.mixing import class_mix_masks, mix
from uda_core.pseudo_label import ignore_rows


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.bn(self.conv(x)))


def test_ema_update_is_exact_for_parameters_and_buffers():
    """Option ``method.ema_buffers: average`` (ours): BatchNorm statistics averaged too."""
    torch.manual_seed(0)
    student = Tiny()
    teacher = EMATeacher(student, alpha=0.999)
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student.train()(torch.randn(2, 3, 4, 4))  # moves BN running statistics
    teacher.update(student, step=1)  # alpha_1 = min(1 - 1/2, 0.999) = 0.5
    after = teacher.model.state_dict()
    for key, value in student.state_dict().items():
        if value.dtype.is_floating_point:
            assert torch.allclose(after[key], 0.5 * before[key] + 0.5 * value), key
        else:
            assert torch.equal(after[key], value), key
    assert teacher.alpha_at(10) == pytest.approx(1 - 1 / 11)
    assert teacher.alpha_at(10**6) == 0.999
    assert not any(p.requires_grad for p in teacher.parameters())


def test_teacher_runs_without_dropout_even_in_train_mode():
    teacher = EMATeacher(Tiny()).train()
    assert not teacher.model.drop.training and teacher.model.bn.training
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(teacher(x), teacher(x))


def test_ignore_rows_zeroes_top_and_bottom():
    weight = ignore_rows(torch.ones(1, 10, 3), top=2, bottom=3)
    assert weight[0, :2].eq(0).all() and weight[0, 7:].eq(0).all() and weight[0, 2:7].eq(1).all()


def test_class_mix_masks_hold_exactly_half_of_the_classes_rounded_up():
    """Option ``method.classmix_classes: image`` (ours): each image's own classes, no 255."""
    torch.manual_seed(0)
    label = torch.tensor([[0, 0, 1, 2], [3, 4, 255, 255]]).repeat(3, 1, 1)
    label[1] = 7
    masks = class_mix_masks(label)
    for lab, mask in zip(label, masks, strict=True):
        classes = set(lab[lab != 255].tolist())
        chosen = set(lab[mask].tolist())
        assert len(chosen) == (len(classes) + 1) // 2 and chosen <= classes
        assert mask.eq(torch.isin(lab, torch.tensor(sorted(chosen)))).all()  # whole classes
        assert not mask[lab == 255].any()


def test_mix_moves_images_labels_weights_and_extra_maps_together():
    mask = torch.tensor([[[True, False], [False, True]]])
    src = {
        "image": torch.ones(1, 3, 2, 2),
        "label": torch.full((1, 2, 2), 5),
        "extra": torch.full((1, 2, 2), 0.3),
    }
    tgt = {
        "image": torch.zeros(1, 3, 2, 2),
        "label": torch.full((1, 2, 2), 9),
        "extra": torch.full((1, 2, 2), -1.0),
    }
    mixed = {k: mix(mask, src[k], tgt[k]) for k in src}
    for key in ("label", "extra"):
        assert torch.equal(mixed[key][mask], src[key][mask]) and torch.equal(
            mixed[key][~mask], tgt[key][~mask]
        )
    assert torch.equal(mixed["image"][:, 0], mask.float())


def real_images(n=4):
    from uda_core.augment import IMAGENET_MEAN, IMAGENET_STD

    rgb = torch.rand(n, 3, 32, 48) * 255
    return (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )


def test_color_jitter_of_strength_zero_is_identity_and_p_one_skips():
    images = real_images()
    assert torch.allclose(color_jitter(images, strength=0.0), images, atol=1e-4)
    assert not torch.allclose(color_jitter(images, strength=0.2), images)
    assert torch.equal(strong_augment(images, 0.2, jitter_p=1.0, blur=False), images)


def test_blur_keeps_constant_images_and_smooths_noise():
    flat = torch.full((2, 3, 30, 40), 0.7)
    assert torch.allclose(gaussian_blur(flat, sigma=1.0), flat, atol=1e-5)
    noise = real_images(2)
    assert gaussian_blur(noise, sigma=1.0).std() < noise.std()
    assert strong_augment(noise).shape == noise.shape


def test_weighted_cross_entropy_scales_and_ignores():
    """Option ``method.seg_loss_mean: valid`` (ours): the mean over the non-ignored pixels."""
    logits = torch.randn(2, 4, 8, 8)
    label = torch.randint(0, 4, (2, 8, 8))
    plain = seg_cross_entropy(logits, label)
    assert torch.allclose(seg_cross_entropy(logits, label, torch.full((2, 8, 8), 0.5)), plain * 0.5)
    label[:, :4] = 255
    weight = torch.ones(2, 8, 8)
    weight[:, :4] = 100.0  # weights of ignored pixels do not count
    assert torch.allclose(
        seg_cross_entropy(logits, label, weight), seg_cross_entropy(logits, label)
    )


def test_downscale_label_ratio_keeps_majority_or_ignores():
    label = torch.zeros(1, 4, 4, dtype=torch.long)
    label[0, :2, 2:] = 3  # a pure cell of 3
    label[0, 2:, :2] = torch.tensor([[1, 1], [1, 2]])  # 75% ones
    label[0, 2:, 2:] = torch.tensor([[1, 2], [255, 255]])  # no majority >= 0.75
    out = downscale_label_ratio(label, 2, 0.75, num_classes=19)
    assert out.tolist() == [[[0, 3], [1, 255]]]


def test_feature_distance_is_the_masked_mean_l2():
    a, b = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    a[0, :, 0, 0] = torch.tensor([3.0, 4.0])
    mask = torch.tensor([[[True, True], [False, False]]])
    assert feature_distance(a, b, mask) == pytest.approx(2.5)
    assert feature_distance(a, b, torch.zeros_like(mask)) == 0
