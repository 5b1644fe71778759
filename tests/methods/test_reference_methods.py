"""The methods' steps, optimiser groups and published presets against the reference code
(lhoyer/MIC 2f932a9, files under seg/; mmcv 1.3 for the optimiser constructor)."""

import pytest
import torch

from tests.methods.test_hrda import run_step
from tests.methods.test_published_models import PUBLISHED_PRESETS
from uda_core.config import OptimConfig
from uda_core.optim import parameter_groups
from uda_methods.config import MethodConfig, ModelConfig
from uda_methods.presets import PUBLISHED_SELF_TRAINING, preset
from uda_methods.registry import build_method_model

PUBLISHED = PUBLISHED_PRESETS


def reference_lr_and_decay(name: str, lr: float, wd: float) -> tuple[float, float]:
    """mmcv 1.3 ``DefaultOptimizerConstructor.add_params`` with the published ``paramwise_cfg``
    (``configs/mic/gtaHR2csHR_mic_hrda.py:88-94``): keys sorted alphabetically, then by length,
    longest first; the first key in the parameter's name sets its lr and decay multipliers.
    Our ``encoder`` is mmseg's ``backbone``; every other module sits in ``decode_head``."""
    custom = {"head": (10.0, 1.0), "pos_block": (1.0, 0.0), "norm": (1.0, 0.0)}
    if name.startswith("encoder."):
        name = "model.backbone." + name.removeprefix("encoder.")
    else:
        name = "model.decode_head." + name
    for key in sorted(sorted(custom), key=len, reverse=True):
        if key in name:
            lr_mult, decay_mult = custom[key]
            return lr * lr_mult, wd * decay_mult
    return lr, wd


@pytest.mark.parametrize("method", ["daformer", "hrda"])
def test_decoder_parameters_all_decay_only_encoder_norms_do_not_mmcv_add_params(method):
    """mmcv 1.3 ``default_constructor.py`` ``add_params`` on the published ``custom_keys``:
    every decoder parameter (scale attention and BatchNorm included) at lr x 10 with weight
    decay 0.01; the encoder's norm layers without decay, the rest of it with."""
    model = build_method_model(
        ModelConfig(encoder="mit_b0", decoder="daformer", channels=32),
        MethodConfig(name=method),
        19,
    )
    cfg = preset("gta2cs-hrda").optim
    groups = parameter_groups(model, cfg)
    ours = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    batch_norms = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batch_norms and not any(n.startswith("encoder.") for n in batch_norms)
    for name, param in names.items():
        assert ours[id(param)] == pytest.approx(
            reference_lr_and_decay(name, cfg.lr, cfg.weight_decay)
        ), name


def test_masked_loss_weight_scales_only_the_fused_seg_loss_mcm_142_143():
    """``masking_consistency_module.py:142-143``: ``mask_lambda`` multiplies
    ``decode.loss_seg`` (HRDA's fused loss, already x 0.9, ``hrda_head.py:271``) only; the
    detail loss and other losses of the masked branch keep weight 1."""
    _, _, one = run_step("mic", mic_lambda=1.0)
    _, _, fused = run_step("mic", mic_lambda=0.5, mic_lambda_scope="fused-seg")
    masked = [k for k in one if k.startswith("mask.")]
    assert {"mask.seg", "mask.detail.seg"} <= set(masked) and len(masked) > 2
    for key in masked:
        factor = 0.5 if key == "mask.seg" else 1.0
        assert fused[key] == pytest.approx(factor * one[key], rel=1e-5), key


def test_masked_loss_weight_all_option_scales_every_masked_loss():
    """Option ``method.mic_lambda_scope: all`` (ours): every masked-branch loss x mic_lambda."""
    _, _, one = run_step("mic", mic_lambda=1.0)
    _, _, half = run_step("mic", mic_lambda=0.5)
    for key in (k for k in one if k.startswith("mask.")):
        assert half[key] == pytest.approx(0.5 * one[key], rel=1e-5), key


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_presets_name_the_reference_self_training_and_optimiser(name):
    """Every published preset names the reference's behaviour where ours differs: losses over
    all pixels, one pseudo-label weight and one set of augmentation gates per batch, ClassMix
    from the batch's classes, the teacher's own buffers, mic_lambda on the fused seg loss, and
    decay on every decoder parameter."""
    cfg = preset(name)
    for field, value in PUBLISHED_SELF_TRAINING.items():
        assert getattr(cfg.method, field) == value, field
    assert cfg.optim.no_decay_scope == "encoder" and cfg.optim.no_decay_norm_and_pos


def test_option_defaults_keep_our_earlier_behaviour():
    """Saved run configs without the new fields rerun as they ran: every default is ours."""
    method, optim = MethodConfig(), OptimConfig()
    assert (method.seg_loss_mean, method.pseudo_weight_scope) == ("valid", "image")
    assert (method.classmix_classes, method.augment_gates) == ("image", "image")
    assert (method.ema_buffers, method.mic_lambda_scope) == ("average", "all")
    assert optim.no_decay_scope == "all"


def test_every_method_trains_with_the_published_options():
    """One step of each self-training method with every published option on."""
    for method in ("daformer", "hrda", "mic"):
        _, _, logs = run_step(method, **PUBLISHED_SELF_TRAINING)
        assert all(torch.isfinite(torch.tensor(v)) for v in logs.values()), method
