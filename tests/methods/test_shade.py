"""SHADE's style hallucination and the DG methods, as HRDA's ``dg`` branch runs them."""

from __future__ import annotations

import copy
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from tests.methods.ddp_styles import forward_with_own_styles
from uda_core.errors import UdaError
from uda_core.method import UDABatch
from uda_methods.config import MethodConfig, ModelConfig, RunConfig
from uda_methods.methods.dg import style_consistency
from uda_methods.models.mit import mit_b0
from uda_methods.models.shade import (
    StyleHallucination,
    attach_style_hallucination,
    farthest_point_sample,
    first_stage,
    style_statistics,
)
from uda_methods.presets import preset
from uda_methods.registry import build_method_model, method_class
from uda_methods.run import check_across_sections, style_pass_order


def test_style_hallucination_restyles_with_dirichlet_mixtures_of_base_styles():
    """``style_hallucination.py:30-47``: mean and std (unbiased, + 1e-7) over H x W, detached;
    weights ~ Dirichlet(0.0156 x C) per image; x_new = (x - mean) / std * (w @ proto_std) +
    w @ proto_mean; the output stacks x and x_new (``mix_transformer.py:418-419``)."""
    torch.manual_seed(0)
    module = StyleHallucination(4, 0.0156)
    module.proto_mean.copy_(torch.randn(4, 4))
    module.proto_std.copy_(torch.rand(4, 4) + 0.5)
    x = torch.randn(3, 4, 5, 6)
    torch.manual_seed(1)
    out = module(x)
    torch.manual_seed(1)
    weights = torch.distributions.Dirichlet(torch.full((4,), 0.0156)).sample((3,))
    mean = x.mean(dim=[2, 3], keepdim=True)
    std = x.std(dim=[2, 3], keepdim=True) + 1e-7
    styled = (x - mean) / std * (weights @ module.proto_std)[..., None, None]
    styled = styled + (weights @ module.proto_mean)[..., None, None]
    assert out.shape == (6, 4, 5, 6)
    torch.testing.assert_close(out[:3], x)
    torch.testing.assert_close(out[3:], styled)
    assert torch.allclose(weights.sum(1), torch.ones(3))


def test_style_hallucination_runs_after_the_first_stage_in_training_only():
    """``mix_transformer.py:415-421``: after stage 1's norm, ``if self.training``; the frozen
    ImageNet copy of the encoder (``dacs.py:96``, eval mode) never re-styles."""
    encoder = mit_b0(drop_path_rate=0.0)
    attach_style_hallucination(encoder, 0.0156)
    assert first_stage(encoder)[0] == "stages_0"
    frozen = copy.deepcopy(encoder).eval()
    image = torch.randn(2, 3, 64, 64)
    encoder.train()
    assert [f.shape[0] for f in encoder(image)] == [4, 4, 4, 4]
    assert [f.shape[0] for f in frozen(image)] == [2, 2, 2, 2]
    encoder.eval()
    assert encoder(image)[0].shape[0] == 2


def test_farthest_point_sampling_picks_the_farthest_point_each_time():
    """``farthest_point_sampling.py:20-34``: a random first point, then each step the point
    whose squared distance to the nearest picked point is largest."""
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.0, 4.0], [9.0, 1.0]])
    torch.manual_seed(0)
    first = int(torch.randint(len(points), ()))
    torch.manual_seed(0)
    picked = farthest_point_sample(points, 3).tolist()
    assert picked[0] == first

    def reference(start):
        chosen, distance = [start], np.full(len(points), 1e10)
        for _ in range(2):
            dist = ((points.numpy() - points.numpy()[chosen[-1]]) ** 2).sum(-1)
            distance = np.minimum(distance, dist)
            chosen.append(int(distance.argmax()))
        return chosen

    assert picked == reference(first)


def test_base_styles_are_farthest_point_samples_of_first_stage_statistics():
    """``style_hallucination_hook.py:32-52``: per image (mean, std) of the first stage's
    features (``forward_features(return_style=True)`` stops after stage 1), stacked as N x 2
    x C, flattened to 2C; C of them by farthest point sampling, reshaped to C x 2 x C:
    ``proto_mean = [:, 0]``, ``proto_std = [:, 1]``."""
    encoder = mit_b0(drop_path_rate=0.0)
    module = attach_style_hallucination(encoder, 0.0156)
    encoder.eval()
    images = torch.randn(40, 3, 32, 32)
    stats = style_statistics(encoder, images)
    features = encoder(images)[0]
    torch.testing.assert_close(stats[:, 0], features.mean(dim=(2, 3)))
    torch.testing.assert_close(stats[:, 1], features.std(dim=(2, 3)))
    torch.manual_seed(3)
    module.set_styles(stats)
    torch.manual_seed(3)
    picked = farthest_point_sample(stats.reshape(40, -1), 32)
    torch.testing.assert_close(module.proto_mean, stats[picked, 0])
    torch.testing.assert_close(module.proto_std, stats[picked, 1])


def test_style_consistency_is_the_shade_js_divergence_of_both_halves():
    """``dacs.py:258-279``: p, q softmax of the original and hallucinated halves, m =
    clamp((p + q) / 2, 1e-7, 1); (kl_div(log m, q) + kl_div(log m, p)) / 2 with
    ``reduction='batchmean'`` over (B H W) x C rows, i.e. summed over classes, averaged over
    pixels."""
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 3, 2)
    p, q = F.softmax(logits[:2], 1), F.softmax(logits[2:], 1)
    m = ((p + q) / 2).clamp(1e-7, 1)
    expected = ((q * (q.log() - m.log())).sum(1) + (p * (p.log() - m.log())).sum(1)).mean() / 2
    torch.testing.assert_close(style_consistency(logits), expected)
    assert style_consistency(torch.cat((logits[:2], logits[:2]))).abs() < 1e-6


def _dg_method(name: str, source_images: int = 6, interval: int = 3):
    method_cfg = MethodConfig(
        name=name,
        fd_lambda=0.005,
        style_consistency_lambda=10.0,
        style_interval=interval,
        style_batch_size=2,
        hrda_detail_crop=(32, 32),
        hrda_attention_channels=16,
    )
    torch.manual_seed(0)
    model_cfg = ModelConfig(encoder="resnet10t", channels=16, style_hallucination=0.0156)
    model = build_method_model(model_cfg, method_cfg, 19)
    method = method_class(name)(model, Accelerator(cpu=True), method_cfg, {})
    passes = []

    def style_source(number):
        passes.append(number)
        generator = torch.Generator().manual_seed(number)
        images = torch.randn(source_images, 3, 64, 64, generator=generator)
        return list(images.split(2))[: source_images // 2]

    method.style_source = style_source
    return method, passes


@pytest.mark.parametrize("name", ["dg-daformer", "dg-hrda"])
def test_dg_methods_train_on_the_source_alone_without_a_teacher(name):
    """``dacs.py:93-94,306-308``: source-only DACS builds no EMA teacher and drops target
    images; ``:407``: the step ends after the source losses; the labels are doubled for the
    stylised outputs (``:334-338``) and the losses are summed into one backward (``:395-397``)."""
    method, passes = _dg_method(name)
    assert method.teacher is None and not method.needs_target
    assert "teacher" not in method.state_dict()
    label = torch.randint(0, 19, (2, 64, 64))
    batch = UDABatch({"image": torch.randn(2, 3, 64, 64), "label": label})
    method.model.train()
    logs = method.train_step(batch, 0)
    assert {"src.seg", "src.style_consistency", "src.feat_dist"} <= logs.keys()
    assert logs["src.style_consistency"] >= 0
    grads = [p.grad for p in method.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    doubled = method._loss_targets({"label": label})["label"]
    assert doubled.shape[0] == 4 and torch.equal(doubled[2:], label)
    method.model.eval()
    assert method._loss_targets({"label": label})["label"].shape[0] == 2
    assert passes == [0]


def test_dg_base_styles_refresh_at_iteration_zero_and_every_interval():
    """``style_hallucination_hook.py:14-24`` with ``interval=4000`` (``experiments.py:280-
    284``): before the first iteration, then after each iteration i with (i + 1) % 4000 == 0,
    i.e. before iterations 4000, 8000, ...; the model runs in eval mode meanwhile
    (``:26-27,54``) and the base styles come from that pass."""
    method, passes = _dg_method("dg-daformer", source_images=2, interval=2)
    style, source = method.style, method.style_source
    modes = []
    method.style_source = lambda number: modes.append(method.model.training) or source(number)
    assert style.proto_std.abs().sum() == 0
    batch = UDABatch({"image": torch.randn(1, 3, 16, 16), "label": torch.zeros(1, 16, 16).long()})
    method.model.train()
    for iteration in range(4):
        method.train_step(batch, iteration)
        assert passes == [0, 1][: iteration // 2 + 1]
    assert modes == [False, False] and style.training
    assert style.proto_std.abs().sum() > 0


def test_dg_hrda_takes_styles_of_the_image_at_the_context_scale():
    """``hrda_encoder_decoder.py:216-222``: HRDA's ``forward_style`` resizes the image by
    ``feature_scale`` (0.5) before the backbone."""
    method, _ = _dg_method("dg-hrda", source_images=2)
    seen = []
    _, stage = first_stage(method.model.encoder)
    handle = stage.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    method._refresh_styles(0)
    handle.remove()
    assert seen == [8]  # 64 px at scale 0.5, stride 4


def test_style_settings_are_checked_across_sections():
    """Style consistency needs hallucinated styles, and only the DG methods expect the
    encoder's doubled batch: both fail at load time with one line."""
    cfg = preset("gta-dg-daformer")
    check_across_sections(cfg)
    no_styles = cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"style_hallucination": None})}
    )
    with pytest.raises(UdaError, match=r"model\.style_hallucination"):
        check_across_sections(no_styles)
    daformer = cfg.model_copy(update={"method": cfg.method.model_copy(update={"name": "daformer"})})
    with pytest.raises(UdaError, match="doubles the batch"):
        check_across_sections(daformer)
    assert isinstance(cfg, RunConfig)


def test_refreshing_styles_without_a_source_fails_with_one_line():
    method, _ = _dg_method("dg-daformer")
    method.style_source = None
    with pytest.raises(UdaError, match="needs the source set"):
        method._refresh_styles(0)


# --- several processes --------------------------------------------------------------------


def _reference_share(size: int, index: int, count: int) -> list[int]:
    """torch's ``DistributedSampler(dataset, count, index, shuffle=True)`` as the reference's
    ``build_dataloader(dist=True)`` builds it: no seed given (0) and no ``set_epoch`` call,
    so one permutation for every pass, padded with its head to a multiple of ``count``."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(0)).tolist()
    padded = order + order[: -size % count]
    return padded[index::count]


def test_style_passes_with_several_processes_take_each_process_share_as_the_reference():
    """HRDA dg ``mmseg/apis/train.py:136-144``: the style loader is ``build_dataloader(...,
    dist=distributed, drop_last=True)``, i.e. (``mmseg/datasets/builder.py:133-137``) a
    ``DistributedSampler(dataset, world_size, rank, shuffle=True)``: each process reads its
    share of the source set, the same shares every pass (``method.style_images:
    process-share``, the published DG presets). Ours (``all``): every process the whole set,
    in an order drawn anew each pass. One process: the whole set either way."""
    assert preset("gta-dg-daformer").method.style_images == "process-share"
    assert preset("gta-dg-hrda").method.style_images == "process-share"
    share = preset("gta-dg-daformer")
    ours = share.model_copy(
        update={"method": share.method.model_copy(update={"style_images": "all"})}
    )
    shares = [style_pass_order(share, 7, number, index, 2) for number in (0, 1) for index in (0, 1)]
    assert shares[:2] == [_reference_share(7, 0, 2), _reference_share(7, 1, 2)]
    assert shares[2:] == shares[:2]  # the same shares in the next pass
    assert sorted(set(shares[0] + shares[1])) == list(range(7)) and len(shares[0]) == 4
    whole = [style_pass_order(ours, 7, number, index, 2) for number in (0, 1) for index in (0, 1)]
    assert all(sorted(order) == list(range(7)) for order in whole)
    assert whole[0] == whole[1] and whole[0] != whole[2]
    for number in (0, 1):
        assert style_pass_order(share, 7, number, 0, 1) == style_pass_order(ours, 7, number, 0, 1)


def _two_processes(images: str, tmp_path) -> list[dict[str, torch.Tensor]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(forward_with_own_styles, (2, port, images, tmp_path), nprocs=2)
    return [torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1)]


@pytest.mark.slow  # two spawned processes
def test_process_share_keeps_each_process_base_styles_under_data_parallelism(tmp_path):
    """HRDA dg ``mmseg/apis/train.py:79-83``: ``MMDistributedDataParallel(...,
    broadcast_buffers=False)``, so each process hallucinates with the base styles of its own
    share (``style_hallucination_hook.py:49-52`` writes them into the local model). With
    ``process-share`` our DDP leaves them out of its buffer broadcast; with ``all`` (ours)
    every process takes process 0's."""
    kept = _two_processes("process-share", tmp_path)
    assert [float(r["mean"].unique()) for r in kept] == [1.0, 2.0]
    assert [float(r["std"].unique()) for r in kept] == [1.0, 2.0]
    shared = _two_processes("all", tmp_path)
    assert [float(r["mean"].unique()) for r in shared] == [1.0, 1.0]
