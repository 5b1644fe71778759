"""SHADE's style hallucination, as HRDA's domain-generalisation runs use it.

Zhao et al., "Style-Hallucinated Dual Consistency Learning for Domain Generalized Semantic
Segmentation", ECCV 2022, as HRDA's ``dg`` branch takes it over
(``mmseg/models/utils/style_hallucination.py``, ``farthest_point_sampling.py``,
``style_hallucination_hook.py``). In training, the features of the encoder's first stage are
re-styled: each image's channel statistics are replaced by a random convex combination
(Dirichlet weights) of base styles, and the encoder runs on with the original and the
re-styled features stacked along the batch (2B). The base styles are the channel means and
standard deviations of source images picked by farthest point sampling
(``farthest_point_sample``), refreshed by the training method.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from uda_methods.models.light import TimmEncoder


class StyleHallucination(nn.Module):
    """Re-styles a B x C x H x W map with Dirichlet(``concentration``) mixtures of C base
    styles and returns the original and re-styled maps stacked (2B), as the reference's
    ``StyleHallucination.forward`` (``style_hallucination.py:30-47``) and the MiT backbone's
    ``torch.cat((x, x_style))`` (``mix_transformer.py:415-420``)."""

    mixes_batch = True  # in training: see ``models.segmenter.encodes_per_image``

    def __init__(self, channels: int, concentration: float = 0.0156) -> None:
        super().__init__()
        self.concentration = concentration
        self.register_buffer("proto_mean", torch.zeros(channels, channels))
        self.register_buffer("proto_std", torch.zeros(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True).detach()
        std = x.std(dim=(2, 3), keepdim=True).detach() + 1e-7
        alpha = torch.full((len(self.proto_mean),), self.concentration, device=x.device)
        weights = torch.distributions.Dirichlet(alpha).sample((x.shape[0],))
        new_mean = (weights @ self.proto_mean.float()).to(x.dtype)[:, :, None, None]
        new_std = (weights @ self.proto_std.float()).to(x.dtype)[:, :, None, None]
        return torch.cat((x, (x - mean) / std * new_std + new_mean))

    def hook(self, stage: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        """Forward hook on the first stage: re-style in training only (a bound method, so a
        deep copy of the encoder, e.g. the frozen ImageNet encoder, hooks its own copy)."""
        return self(output) if self.training else None

    @torch.no_grad()
    def set_styles(self, statistics: torch.Tensor) -> None:
        """Base styles from N x 2 x C (mean, std) statistics: C of them picked by farthest
        point sampling over the flattened 2C vectors (``style_hallucination_hook.py:40-52``)."""
        channels = self.proto_mean.shape[0]
        points = statistics.reshape(len(statistics), -1).float()
        picked = points[farthest_point_sample(points, channels)].reshape(channels, 2, channels)
        self.proto_mean.copy_(picked[:, 0])
        self.proto_std.copy_(picked[:, 1])


def farthest_point_sample(points: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of ``count`` of the N x D ``points``: a uniformly random first one, then each
    time the point farthest (squared Euclidean) from those picked, as the reference's
    ``farthest_point_sample_tensor`` (``farthest_point_sampling.py:7-34``)."""
    picked = torch.zeros(count, dtype=torch.long, device=points.device)
    distance = torch.full((len(points),), 1e10, device=points.device, dtype=points.dtype)
    farthest = torch.randint(len(points), ()).to(points.device)
    for i in range(count):
        picked[i] = farthest
        distance = torch.minimum(distance, ((points - points[farthest]) ** 2).sum(-1))
        farthest = distance.argmax()
    return picked


def first_stage(encoder: TimmEncoder) -> tuple[str, nn.Module]:
    """The name and module of the encoder's first stride-4 stage (MiT: ``stages_0``, after its
    norm: the reference's ``norm1`` output; ResNets: ``layer1``)."""
    name = encoder.body.feature_info.module_name()[encoder.levels[0]].replace(".", "_")
    return name, encoder.body[name]


def attach_style_hallucination(encoder: TimmEncoder, concentration: float) -> StyleHallucination:
    """Add a ``StyleHallucination`` after the encoder's first stage (``encoder.style_
    hallucination``; its base styles are saved with the model)."""
    module = StyleHallucination(encoder.channels[0], concentration)
    encoder.style_hallucination = module
    first_stage(encoder)[1].register_forward_hook(module.hook)
    return module


def keep_styles_per_process(model: nn.Module) -> None:
    """Leave the base styles of every ``StyleHallucination`` in ``model`` out of DDP's
    broadcast of process 0's buffers before each forward, so that each process trains with
    the styles it computed, as the reference's DDP does (``broadcast_buffers=False``, HRDA dg
    ``train.py:79-83``). Call before the model is wrapped."""
    names = [
        f"{prefix}.{buffer}" if prefix else buffer
        for prefix, module in model.named_modules()
        if isinstance(module, StyleHallucination)
        for buffer in ("proto_mean", "proto_std")
    ]
    if names:
        ignored = [*getattr(model, "_ddp_params_and_buffers_to_ignore", ()), *names]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)


@torch.no_grad()
def style_statistics(encoder: TimmEncoder, images: torch.Tensor) -> torch.Tensor:
    """B x 2 x C channel means and (unbiased) standard deviations of the first stage's
    features, the stages after it not run (the reference's ``forward_style``,
    ``encoder_decoder.py:165-166``, ``style_hallucination_hook.py:32-36``)."""
    name, _ = first_stage(encoder)
    x = images
    for key, module in encoder.body.items():
        x = module(x)
        if key == name:
            break
    return torch.stack((x.mean(dim=(2, 3)), x.std(dim=(2, 3))), dim=1)
