import pytest
import torch
from torch import nn

from uda_core.config import OptimConfig, ScheduleConfig
from uda_core.optim import build_optimizer, build_scheduler, lr_factor


def test_warmup_starts_at_ratio_and_reaches_poly():
    cfg = ScheduleConfig(warmup_iters=1500, warmup_ratio=1e-6, power=1.0)
    assert lr_factor(0, 40000, cfg) == pytest.approx(1e-6)
    poly_750 = 1 - 750 / 40000
    assert lr_factor(750, 40000, cfg) == pytest.approx(poly_750 * (1 - (1 - 0.5) * (1 - 1e-6)))
    assert lr_factor(1500, 40000, cfg) == pytest.approx(1 - 1500 / 40000)
    assert lr_factor(20000, 40000, cfg) == pytest.approx(0.5)
    assert lr_factor(40000, 40000, cfg) == pytest.approx(0.0)


def test_poly_power_and_floor():
    cfg = ScheduleConfig(warmup_iters=0, power=0.9, min_lr_ratio=0.1)
    assert lr_factor(500, 1000, cfg) == pytest.approx(0.5**0.9 * 0.9 + 0.1)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.encoder.pos_embed = nn.Parameter(torch.zeros(1, 4))
        self.head = nn.Sequential(nn.Conv2d(4, 2, 1), nn.LayerNorm(2))


def test_parameter_groups_multiply_decoder_lr_and_skip_decay_on_norm_and_position():
    """Option ``optim.no_decay_scope: all`` (ours): the decoder's norm layers skip decay too."""
    opt = build_optimizer(Toy(), OptimConfig(lr=1e-4, decoder_lr_mult=10, weight_decay=0.01))
    groups = {g["name"]: g for g in opt.param_groups}
    assert (
        groups["encoder"]["lr"] == pytest.approx(1e-4) and groups["encoder"]["weight_decay"] == 0.01
    )
    assert groups["decoder"]["lr"] == pytest.approx(1e-3)
    assert groups["encoder_no_decay"]["weight_decay"] == 0.0
    assert groups["decoder_no_decay"]["weight_decay"] == 0.0
    # conv weight+bias decay; BN weight+bias and pos_embed do not
    assert len(groups["encoder"]["params"]) == 2 and len(groups["encoder_no_decay"]["params"]) == 3


def test_encoder_scope_decays_every_decoder_parameter():
    """``optim.no_decay_scope: encoder`` (published): only the encoder's norm and position
    parameters skip the decay; the head's LayerNorm decays at lr x 10."""
    cfg = OptimConfig(lr=1e-4, decoder_lr_mult=10, weight_decay=0.01, no_decay_scope="encoder")
    groups = {g["name"]: g for g in build_optimizer(Toy(), cfg).param_groups}
    assert set(groups) == {"encoder", "encoder_no_decay", "decoder"}
    assert len(groups["decoder"]["params"]) == 4 and groups["decoder"]["weight_decay"] == 0.01
    assert len(groups["encoder_no_decay"]["params"]) == 3


def test_scheduler_scales_each_group():
    opt = build_optimizer(Toy(), OptimConfig(lr=1e-4, decoder_lr_mult=10))
    sched = build_scheduler(opt, 100, ScheduleConfig(warmup_iters=0))
    for _ in range(50):
        opt.step()
        sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["encoder"] == pytest.approx(0.5e-4) and lrs["decoder"] == pytest.approx(0.5e-3)
