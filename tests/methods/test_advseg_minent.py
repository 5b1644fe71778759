"""AdvSeg and MinEnt as the MIC reference runs them, MIC on top of them, and the DeepLabV2
model and presets of the references' classic-baseline experiments."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from uda_core.config import OptimConfig
from uda_core.method import UDABatch
from uda_core.optim import build_optimizer
from uda_methods.config import MethodConfig, ModelConfig
from uda_methods.methods.advseg import (
    AdvSeg,
    FCDiscriminator,
    MICAdvSeg,
    discriminator_loss,
    discriminator_lr,
)
from uda_methods.methods.mic import MIC
from uda_methods.methods.minent import MICMinEnt, MinEnt, entropy, image_probabilities
from uda_methods.models.deeplabv2 import (
    V1C_KEYS,
    DeepLabV2Attention,
    ResNetV1c,
    resnet101_v1c,
    v1c_to_timm,
)
from uda_methods.models.weights import rename
from uda_methods.presets import DLV2_PRESETS, preset
from uda_methods.registry import build_method_model, build_model, method_class

TINY = ModelConfig(encoder="resnet10t", decoder="light", channels=16, dropout=0.0)
"""No dropout: a copy of the student taken before a step predicts what the step saw."""


def tiny_batch(seed: int = 0) -> UDABatch:
    g = torch.Generator().manual_seed(seed)
    source = {
        "image": torch.randn(2, 3, 64, 64, generator=g),
        "label": torch.randint(0, 19, (2, 64, 64), generator=g),
    }
    return UDABatch(source, {"image": torch.randn(2, 3, 64, 64, generator=g)})


def make(name: str, mic_base: str = "hrda", **settings):
    cfg = MethodConfig(
        name=name, mic_base=mic_base, mic_mask_block=8, disc_lr_iterations=10, **settings
    )
    torch.manual_seed(0)
    model = build_method_model(TINY, cfg, 19)
    return method_class(name, mic_base)(model, Accelerator(cpu=True), cfg, {})


# --- the discriminator -------------------------------------------------------------------


def test_discriminator_is_five_4x4_stride_2_convs_64_to_512_then_one_logit():
    """MIC ``fcdiscriminator.py:10-19``: conv1-conv4 (ndf=64: 64, 128, 256, 512 channels) and
    the classifier to 1 channel, each kernel 4, stride 2, padding 1: one logit per 32x32 px."""
    d = FCDiscriminator(19)
    convs = [*d.convs, d.classifier]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (19, 64),
        (64, 128),
        (128, 256),
        (256, 512),
        (512, 1),
    ]
    assert all(
        c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (1, 1) for c in convs
    )
    assert d(torch.rand(1, 19, 128, 128)).shape == (1, 1, 4, 4)


def test_discriminator_uses_leaky_relu_of_slope_0_2_between_its_convs():
    """MIC ``fcdiscriminator.py:18-30``: LeakyReLU(negative_slope=0.2) after conv1-conv4, none
    after the classifier."""
    torch.manual_seed(0)
    d = FCDiscriminator(3, width=4)
    x = torch.randn(2, 3, 64, 64)
    expected = x
    for conv in d.convs:
        y = F.conv2d(expected, conv.weight, conv.bias, stride=2, padding=1)
        expected = torch.where(y > 0, y, 0.2 * y)
    expected = F.conv2d(expected, d.classifier.weight, d.classifier.bias, stride=2, padding=1)
    torch.testing.assert_close(d(x), expected)


def test_least_squares_loss_is_the_mean_squared_distance_to_the_label():
    """MIC ``advseg.py:54-55`` (``discriminator_type='LS'``, ``configs/_base_/uda/advseg.py:
    11``): ``MSELoss`` against a map filled with the domain label."""
    d_out = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]])
    assert discriminator_loss(d_out, 0.0, "least-squares").item() == pytest.approx(
        (0.25 + 1 + 4 + 0) / 4
    )
    assert discriminator_loss(d_out, 1.0, "least-squares").item() == pytest.approx(
        (0.25 + 4 + 1 + 1) / 4
    )


def test_vanilla_loss_is_binary_cross_entropy_with_logits():
    """MIC ``advseg.py:52-53`` (``'Vanilla'``): ``BCEWithLogitsLoss``."""
    d_out = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]])
    p = torch.sigmoid(d_out)
    assert discriminator_loss(d_out, 1.0, "bce").item() == pytest.approx(-p.log().mean().item())
    assert discriminator_loss(d_out, 0.0, "bce").item() == pytest.approx(
        -(1 - p).log().mean().item()
    )


def test_discriminator_learning_rate_decays_with_power_0_9_without_warmup():
    """MIC ``advseg.py:103-107`` with ``lr_D=1e-4, lr_D_power=0.9, lr_D_min=0``
    (``configs/_base_/uda/advseg.py:12-14``): ``(lr - min) * (1 - i / max_iters) ** 0.9 + min``."""
    cfg = MethodConfig(disc_lr_iterations=40000)
    assert (cfg.disc_lr, cfg.disc_lr_power, cfg.disc_lr_min) == (1e-4, 0.9, 0.0)
    assert discriminator_lr(cfg, 0) == pytest.approx(1e-4)
    assert discriminator_lr(cfg, 20000) == pytest.approx(1e-4 * 0.5**0.9)
    floor = cfg.model_copy(update={"disc_lr_min": 1e-6})
    assert discriminator_lr(floor, 40000) == pytest.approx(1e-6)


def test_discriminator_optimiser_is_adam_with_betas_0_9_0_99():
    """MIC ``advseg.py:48-49``: ``optim.Adam(lr=lr_D, betas=(0.9, 0.99))``, no weight decay."""
    method = make("advseg")
    assert isinstance(method.d_optimizer, torch.optim.Adam)
    (group,) = method.d_optimizer.param_groups
    assert group["betas"] == (0.9, 0.99) and group["weight_decay"] == 0
    assert {id(p) for p in group["params"]} == {id(p) for p in method.d_module.parameters()}


# --- MinEnt ------------------------------------------------------------------------------


def test_entropy_is_normalised_by_log_c_and_averaged_over_pixels():
    """MIC ``minent.py:31-40``: ``-sum(p log2(p + 1e-30)) / (n h w log2 c)``: 1 for uniform
    predictions, 0 for one-hot ones, the natural-log entropy / log C in between."""
    uniform = torch.full((2, 19, 4, 5), 1 / 19)
    assert entropy(uniform).item() == pytest.approx(1.0)
    onehot = F.one_hot(torch.randint(0, 19, (2, 4, 5)), 19).permute(0, 3, 1, 2).float()
    assert entropy(onehot).item() == pytest.approx(0.0, abs=1e-6)
    p = torch.randn(3, 7, 6, 5).softmax(1)
    expected = -(p * p.log()).sum(1).mean() / math.log(7)
    assert entropy(p).item() == pytest.approx(expected.item(), rel=1e-5)


def test_target_losses_read_probabilities_at_the_image_resolution():
    """MIC ``encoder_decoder.py:111-123`` (``forward_with_aux``): the logits are resized to
    the image (bilinear, ``align_corners=False``) before the softmax the losses read."""
    logits = torch.randn(2, 19, 8, 8)
    probs = image_probabilities(logits, torch.Size([64, 64]))
    expected = F.interpolate(logits, (64, 64), mode="bilinear", align_corners=False).softmax(1)
    torch.testing.assert_close(probs, expected)


def test_minent_step_adds_lambda_ent_times_the_target_entropy():
    """MIC ``minent.py:151-172`` with ``lambda_ent=dict(main=0.001)``
    (``configs/_base_/uda/minent.py:11``): the target loss is 0.001 x the normalised entropy of
    the student's image-resolution probabilities; no teacher."""
    method = make("minent")
    assert isinstance(method, MinEnt) and method.teacher is None
    assert MethodConfig().ent_lambda == 0.001
    batch = tiny_batch()
    before = copy.deepcopy(method.model)
    logs = method.train_step(batch, 0)
    image = batch.target["image"]
    expected = 0.001 * entropy(image_probabilities(before(image).logits, image.shape[-2:]))
    assert logs.keys() == {"src.seg", "trg.ent"}
    assert logs["trg.ent"].item() == pytest.approx(expected.item(), rel=1e-5)


# --- AdvSeg ------------------------------------------------------------------------------


def test_advseg_generator_loss_is_lambda_adv_times_the_frozen_discriminator_loss():
    """MIC ``advseg.py:150-212``: the discriminator's weights get no gradient from the
    generator's loss ``lambda_adv_target['main'] (0.001) x LS(D(softmax(pred_trg)), source=0)``,
    which reaches the student."""
    method = make("advseg")
    assert MethodConfig().adv_lambda == 0.001
    batch = tiny_batch()
    image = batch.target["image"]
    probs = image_probabilities(method.model(image).logits, image.shape[-2:])
    logs, _ = method._adversarial_step(batch.target)
    expected = 0.001 * F.mse_loss(method.d_module(probs.detach()), torch.zeros(2, 1, 2, 2))
    assert logs["trg.adv"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert all(p.grad is None for p in method.d_module.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.model.parameters())
    assert all(p.requires_grad for p in method.d_module.parameters())


def test_advseg_trains_the_discriminator_on_detached_source_0_and_target_1_each_halved():
    """MIC ``advseg.py:228-258``: D loss = LS(D(p_src), 0) / 2 + LS(D(p_trg), 1) / 2 on
    detached probabilities, then an Adam step at the iteration's poly rate (``advseg.py:89-96``),
    after the generator's losses were taken against the discriminator before that step."""
    method = make("advseg")
    batch = tiny_batch()
    d_before = copy.deepcopy(method.d_module)
    student = copy.deepcopy(method.model)
    logs = method.train_step(batch, 3)
    p_src = image_probabilities(student(batch.source["image"]).logits, (64, 64))
    p_trg = image_probabilities(student(batch.target["image"]).logits, (64, 64))
    d_src = F.mse_loss(d_before(p_src), torch.zeros(2, 1, 2, 2)) / 2
    d_trg = F.mse_loss(d_before(p_trg), torch.ones(2, 1, 2, 2)) / 2
    assert logs["disc.src"].item() == pytest.approx(d_src.item(), rel=1e-4)
    assert logs["disc.trg"].item() == pytest.approx(d_trg.item(), rel=1e-4)
    assert method.d_optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * (1 - 3 / 10) ** 0.9)
    moved = [
        not torch.equal(a, b)
        for a, b in zip(d_before.parameters(), method.d_module.parameters(), strict=True)
    ]
    assert all(moved)
    assert all(p.grad is None for p in method.d_module.parameters())  # zeroed after its step


def test_advseg_checkpoint_state_holds_the_discriminator_and_its_optimiser():
    """The reference keeps ``model_D`` and ``optimizer_D`` for the whole run; a resume must get
    both back (``Method.state_dict`` is what the engine checkpoints)."""
    method = make("advseg")
    method.train_step(tiny_batch(), 0)
    state = copy.deepcopy(method.state_dict())
    fresh = make("advseg")
    fresh.load_state_dict(state)
    for a, b in zip(method.d_module.parameters(), fresh.d_module.parameters(), strict=True):
        assert torch.equal(a, b)
    saved = method.d_optimizer.state_dict()["state"]
    loaded = fresh.d_optimizer.state_dict()["state"]
    assert saved.keys() == loaded.keys() and len(saved) == 10
    assert all(torch.equal(saved[k]["exp_avg"], loaded[k]["exp_avg"]) for k in saved)


# --- AdvSeg under mixed precision --------------------------------------------------------


@pytest.fixture
def fresh_precision():
    """Accelerate fixes the precision once per process; each test here sets its own and
    leaves the state unset for the next test."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def discriminator_update(
    precision: str, scaler: torch.amp.GradScaler | None = None, overflow: bool = False
) -> dict:
    """One AdvSeg step from the same weights and batch under ``precision`` (optionally with
    this discriminator scaler, or an inf in its first weight's gradient): its logs, the
    discriminator's gradients as its Adam step sees them (none if it is skipped), its
    weights before and after, and the method."""
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=precision != "fp16", mixed_precision=precision)
    cfg = MethodConfig(name="advseg", disc_lr_iterations=10)
    torch.manual_seed(0)
    model = accelerator.prepare_model(build_method_model(TINY, cfg, 19))
    method = AdvSeg(model, accelerator, cfg, {})
    if scaler is not None:
        method.d_scaler = scaler
    weights = list(method.d_module.parameters())
    if overflow:
        weights[0].register_hook(lambda grad: torch.full_like(grad, math.inf))
    seen, adam_step = [], method.d_optimizer.step

    def step(*args, **kwargs):
        seen.extend(p.grad.detach().float().cpu().clone() for p in weights)
        return adam_step(*args, **kwargs)

    method.d_optimizer.step = step
    before = [p.detach().cpu().clone() for p in weights]
    logs = method.train_step(tiny_batch().to(accelerator.device), 0)
    return {
        "logs": {k: v.item() for k, v in logs.items()},
        "grads": seen,
        "before": before,
        "after": [p.detach().cpu().clone() for p in weights],
        "method": method,
    }


def relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    a, b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return ((a - b).norm() / b.norm()).item()


def equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_discriminator_step_unscales_its_own_loss_scaling_and_skips_overflows(fresh_precision):
    """The reference trains in fp32 (MIC ``experiments.py:282-283``, no fp16 config); under
    fp16 our discriminator's step scales its loss with a GradScaler of its own (Accelerate's
    covers only the network's optimiser). Adam sees the unscaled gradients, so the step equals
    the unscaled one; an inf gradient skips the step and halves the scale."""
    plain = discriminator_update("no")
    assert not plain["method"].d_scaler.is_enabled()
    scaled = discriminator_update("no", torch.amp.GradScaler("cpu", init_scale=2.0**12))
    assert scaled["logs"] == plain["logs"]
    assert equal(scaled["grads"], plain["grads"]) and equal(scaled["after"], plain["after"])
    assert not equal(scaled["after"], scaled["before"])
    assert scaled["method"].state_dict()["discriminator_scaler"]["scale"] == 2.0**12

    skipped = discriminator_update("no", torch.amp.GradScaler("cpu", init_scale=2.0**12), True)
    assert skipped["grads"] == [] and equal(skipped["after"], skipped["before"])
    assert skipped["method"].d_scaler.get_scale() == 2.0**11


def test_advseg_bf16_step_trains_the_discriminator_as_fp32_does(fresh_precision):
    """bf16 has fp32's range, so no loss scaling (``d_scaler`` off): one step under bf16
    autocast gives finite losses and weights, and the discriminator fp32's losses and
    gradients within bf16's precision (fp32 is the reference's, ``experiments.py:282-283``)."""
    ref = discriminator_update("no")
    run = discriminator_update("bf16")
    method = run["method"]
    assert method.accelerator.mixed_precision == "bf16" and not method.d_scaler.is_enabled()
    assert all(math.isfinite(v) for v in run["logs"].values())
    assert all(torch.isfinite(w).all() for w in run["after"])
    for key in ("disc.src", "disc.trg", "trg.adv"):
        assert run["logs"][key] == pytest.approx(ref["logs"][key], rel=0.02)
    assert relative_error(run["grads"], ref["grads"]) < 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast needs CUDA here")
def test_advseg_fp16_step_scales_the_discriminator_loss_and_trains_as_fp32(fresh_precision):
    """fp16 on CUDA: Accelerate scales the network's losses and the discriminator's own
    GradScaler is on; nothing overflows at the initial scale 2^16, and the gradients Adam sees
    (unscaled) and the losses match fp32's within fp16's precision."""
    ref = discriminator_update("no")
    run = discriminator_update("fp16")
    method = run["method"]
    assert method.accelerator.scaler is not None and method.d_scaler.is_enabled()
    assert method.d_scaler.get_scale() == 2.0**16 and run["grads"]  # the step was taken
    assert all(math.isfinite(v) for v in run["logs"].values())
    assert all(torch.isfinite(w).all() for w in run["after"])
    for key in ("disc.src", "disc.trg", "trg.adv"):
        assert run["logs"][key] == pytest.approx(ref["logs"][key], rel=0.02)
    assert relative_error(run["grads"], ref["grads"]) < 0.02


# --- MIC on the baselines ----------------------------------------------------------------


@pytest.mark.parametrize(("base", "cls"), [("advseg", MICAdvSeg), ("minent", MICMinEnt)])
def test_mic_on_a_baseline_keeps_an_ema_teacher_of_its_own_and_adds_the_masked_loss(base, cls):
    """MIC ``advseg.py:59-60``, ``minent.py:57-58``: ``MaskingConsistencyModule(require_teacher
    =True)``, an EMA teacher whose pseudo-labels train the masked target
    (``advseg.py:214-223``, ``minent.py:174-183``); ``--method mic --set
    method.mic_base=advseg|minent``."""
    method = make("mic", base)
    assert type(method) is cls and method.teacher is not None
    logs = method.train_step(tiny_batch(), 0)
    assert {"src.seg", "pseudo_weight", "mask.seg"} <= logs.keys()
    assert ("disc.trg" in logs) == (base == "advseg") and ("trg.ent" in logs) == (base == "minent")
    assert "teacher" in method.state_dict()
    assert method_class("mic", "hrda") is MIC and method_class("mic", "daformer") is MIC


def test_mic_on_a_baseline_trains_one_resolution():
    cfg = MethodConfig(name="mic", mic_base="advseg")
    assert not cfg.multi_resolution and method_class("advseg") is AdvSeg


# --- DeepLabV2 as the references build it ------------------------------------------------


@pytest.fixture(scope="module")
def v1c() -> ResNetV1c:
    return resnet101_v1c()


def test_resnet101_v1c_has_the_deep_stem_and_plain_shortcuts_of_mmseg_resnetv1c(v1c):
    """mmseg ``resnet.py:589-622`` (``deep_stem``, ``stem_channels=64``): three 3x3 convs
    3->32 (stride 2) ->32->64, each with BN + ReLU, then max-pool; ``ResNetV1c`` has
    ``avg_down=False`` (``resnet.py:687-699``): 1x1 conv + BN shortcuts, no average pooling."""
    body = v1c.body
    stem = [m for m in body.conv1 if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in stem] == [
        (3, 32, (3, 3), (2, 2)),
        (32, 32, (3, 3), (1, 1)),
        (32, 64, (3, 3), (1, 1)),
    ]
    assert [len(body.layer1), len(body.layer2), len(body.layer3), len(body.layer4)] == [3, 4, 23, 3]
    shortcut = body.layer2[0].downsample
    assert [type(m).__name__ for m in shortcut] == ["Conv2d", "BatchNorm2d"]
    assert shortcut[0].stride == (2, 2) and body.layer2[0].conv2.stride == (2, 2)  # pytorch style


def test_resnet101_v1c_dilates_layer3_and_layer4_with_contracted_first_blocks(v1c):
    """``deeplabv2_r50-d8.py:17-22``: ``dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
    contract_dilation=True`` (``res_layer.py:70-73``: the first block at half the dilation):
    output stride 8, 2048 channels."""
    body = v1c.body
    assert [b.conv2.dilation[0] for b in body.layer3][:3] == [1, 2, 2]
    assert [b.conv2.dilation[0] for b in body.layer4] == [2, 4, 4]
    assert v1c.strides == [4, 8, 8, 8] and v1c.channels[-1] == 2048
    assert v1c(torch.randn(1, 3, 64, 64))[-1].shape == (1, 2048, 8, 8)


def test_open_mmlab_resnet_v1c_checkpoint_loads_with_its_stem_renamed(v1c, tmp_path):
    """open-mmlab's ``resnet101_v1c`` (the references' ``pretrained``) names the stem
    ``stem.0/1/3/4/6/7``; timm's deep stem is ``conv1.0/1/3/4/6`` and ``bn1``."""
    ours = v1c.body.state_dict()
    theirs = {rename(k, V1C_KEYS[:-1], inverse=True) or k: v.clone() + 1 for k, v in ours.items()}
    assert "stem.7.running_var" in theirs and "stem.0.weight" in theirs
    theirs["fc.weight"] = torch.zeros(1000, 2048)
    torch.save({"state_dict": theirs}, tmp_path / "resnet101_v1c.pth")
    v1c.load_pretrained(tmp_path / "resnet101_v1c.pth")
    loaded = v1c.body.state_dict()
    torch.testing.assert_close(loaded["bn1.running_var"], theirs["stem.7.running_var"])
    torch.testing.assert_close(loaded["conv1.0.weight"], theirs["stem.0.weight"])
    assert v1c_to_timm({"backbone.stem.4.bias": torch.ones(1)}).keys() == {"conv1.4.bias"}


def test_dlv2_presets_build_the_reference_dlv2red_model():
    """MIC ``experiments.py:430-434``: ``dlv2red`` + ``r101v1c``: the DeepLabV2 classifier with
    dilations 6 and 12 only (``deeplabv2red_r50-d8.py:12``), 3x3 convs with bias straight to
    the 19 classes, N(0, 0.01) weights and zero bias (``deeplabv2_r50-d8.py:30-31``); HRDA's
    scale attention is a DLV2 head as well (``hrda_head.py:66-70``)."""
    cfg = preset("gta2cs-dlv2-daformer")
    assert (cfg.model.encoder, cfg.model.decoder) == ("resnet101_v1c", "deeplabv2")
    assert cfg.model.deeplabv2_dilations == (6, 12)
    small = cfg.model.model_copy(update={"encoder": "resnet10t"})
    torch.manual_seed(0)
    decoder = build_model(small, 19).decoder
    assert [(b.dilation, b.padding, b.kernel_size) for b in decoder.branches] == [
        ((6, 6), (6, 6), (3, 3)),
        ((12, 12), (12, 12), (3, 3)),
    ]
    weights = torch.cat([b.weight.flatten() for b in decoder.branches])
    assert abs(weights.std().item() - 0.01) < 5e-4
    assert all(b.bias.abs().sum() == 0 for b in decoder.branches)
    hrda = preset("gta2cs-dlv2-hrda")
    model = build_method_model(small, hrda.method, 19)
    assert isinstance(model.scale_attention, DeepLabV2Attention)


def test_dlv2_presets_optimise_as_the_reference_experiments():
    """MIC ``experiments.py:420-427``: AdvSeg and MinEnt with SGD (lr 0.0025, ``schedules/
    sgd.py``: momentum 0.9, weight decay 5e-4, no head multiplier); DACS/DAFormer/HRDA with
    AdamW 6e-5, head lr x10, weight decay 0.01 on BatchNorm too (the ``norm``/``pos_block``
    custom keys are MiT-only, ``experiments.py:293-295``); 40k iterations, warm-up 1500."""
    for name in ("gta2cs-dlv2-advseg", "gta2cs-dlv2-minent-mic"):
        optim = preset(name).optim
        assert (optim.kind, optim.lr, optim.momentum, optim.weight_decay) == (
            "sgd",
            0.0025,
            0.9,
            5e-4,
        )
        assert optim.decoder_lr_mult == 1.0 and not optim.no_decay_norm_and_pos
    for name in ("gta2cs-dlv2-daformer", "gta2cs-dlv2-hrda", "gta2cs-dlv2-mic"):
        optim = preset(name).optim
        assert (optim.kind, optim.lr, optim.decoder_lr_mult, optim.weight_decay) == (
            "adamw",
            6e-5,
            10.0,
            0.01,
        )
        assert not optim.no_decay_norm_and_pos
    for name in DLV2_PRESETS:
        cfg = preset(name)
        assert cfg.runtime.iterations == 40000 and cfg.schedule.warmup_iters == 1500


def test_sgd_is_torch_sgd_with_momentum_and_weight_decay_on_every_group():
    """mmcv builds ``torch.optim.SGD(lr, momentum=0.9, weight_decay=0.0005)``."""
    model = build_model(TINY, 19)
    cfg = OptimConfig(
        kind="sgd", lr=0.0025, weight_decay=5e-4, decoder_lr_mult=1.0, no_decay_norm_and_pos=False
    )
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(
        (g["lr"], g["momentum"], g["weight_decay"]) == (0.0025, 0.9, 5e-4)
        for g in optimizer.param_groups
    )


def test_dlv2_baseline_presets_use_the_reference_uda_settings():
    """HRDA ``experiments.py:389-392``: AdvSeg and MinEnt on ``gtaCAug`` (photometric
    distortion of the source), no rare class sampling; MIC ``experiments.py:423-450``: MIC on
    them on the plain GTA source, ``separatetrgaug``, 32 px blocks at ratio 0.7, no
    pseudo-label margins (``plcrop`` False); MIC(HRDA) on DLV2 masks 64 px blocks."""
    for name in ("gta2cs-dlv2-advseg", "gta2cs-dlv2-minent"):
        cfg = preset(name)
        assert cfg.data.source_photometric and cfg.data.rcs is None
        assert cfg.method.seg_loss_mean == "all"
        assert (cfg.method.adv_loss, cfg.method.disc_betas) == ("least-squares", (0.9, 0.99))
    for base in ("advseg", "minent"):
        cfg = preset(f"gta2cs-dlv2-{base}-mic")
        m = cfg.method
        assert (m.name, m.mic_base, m.mic_mask_mode) == ("mic", base, "separatetrgaug")
        assert (m.mic_mask_block, m.mic_mask_ratio, m.mic_lambda) == (32, 0.7, 1.0)
        assert (m.pseudo_ignore_top, m.pseudo_ignore_bottom) == (0, 0)
        assert (m.ema_alpha, m.pseudo_threshold) == (0.999, 0.968)
        assert not cfg.data.source_photometric and cfg.data.rcs is None
    daformer_mic = preset("gta2cs-dlv2-daformer-mic").method
    assert (daformer_mic.mic_base, daformer_mic.mic_mask_block) == ("daformer", 32)
    assert (daformer_mic.pseudo_ignore_top, daformer_mic.pseudo_ignore_bottom) == (15, 120)
    assert preset("gta2cs-dlv2-mic").method.mic_mask_block == 64
