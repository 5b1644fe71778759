"""The auxiliary geometric network: semantic labels from depth and dispersion alone.

It sees geometry only, so where its label agrees with a pseudo-label the pseudo-label is
geometrically plausible; the pixel-weight hook (``agreement_weights``) uses exactly that.
Both networks read B x 2 x H x W maps, depth in the loaders' 0..255 encoding and dispersion,
and return logits at the input size:

- ``AuxiliaryResNet50``, the published network (Dispersion
  ``auxiliary_network/AuxiliaryResNet50.py``), exactly: it loads ``gta_auxiliary.pth`` and
  ``synthia_auxiliary.pth``;
- ``AuxiliaryNet``, ours: a timm ResNet (``pip install uda-dispersion[aux]``) read at its
  third stage with the stem's ReLU and max-pool kept, on depth / 255.

``load_auxiliary(path)`` reads either, from our checkpoints (``uda dispersion pretrain``) or
the published files.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from uda_dispersion.head import Bottleneck, fitted

Architecture = Literal["published", "timm"]

DEPTH_SCALE = 255.0
"""Depth maps in the loaders' encoding span 0..255; ``AuxiliaryNet`` sees depth / 255."""

CHECKPOINT_FORMAT = "uda-dispersion-auxiliary/1"
"""The ``format`` entry of our auxiliary checkpoints (``uda_dispersion.pretrain``)."""


def resnet_layer(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    """A ResNet stage: ``blocks`` bottlenecks, the first one with the stride."""
    return nn.Sequential(
        Bottleneck(in_channels, out_channels, stride),
        *(Bottleneck(out_channels, out_channels) for _ in range(blocks - 1)),
    )


def conv_bn_relu(in_channels: int, out_channels: int, bias: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _to_input_size(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if logits.shape[-2:] == x.shape[-2:]:
        return logits
    return F.interpolate(logits, x.shape[-2:], mode="bilinear", align_corners=False)


class AuxiliaryResNet50(nn.Module):
    """The published auxiliary network (``AuxiliaryResNet50.py:33-83``), key for key.

    ``encoder`` is torchvision's ResNet-50 without its pooling and classifier: ``encoder.0``
    a 2-channel 7x7 stride-2 convolution without bias, ``encoder.1`` its BatchNorm, then the
    stages ``encoder.4`` to ``encoder.7``. The forward skips the stem's ReLU and max-pool
    (``encoder.2`` and ``.3``, placeholders here) and never runs ``encoder.7``, so the third
    stage (1024 channels) is at stride 8. Four 3x3 conv (with bias) + BN + ReLU blocks halve
    the width to 64, a 1x1 convolution classifies and the logits are upsampled x8, bilinear
    with align_corners=True. Depth is read as it is, 0..255.

    The output has the input's size when that is a multiple of 8; otherwise (larger) it is
    resized bilinearly to the input, as ``dacs.py:451-452`` resizes it to the crop.
    """

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(2, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.Identity(),  # the stem's ReLU in torchvision's layout, skipped by the forward
            nn.Identity(),  # and its max-pool
            resnet_layer(64, 256, 3, stride=1),  # layer1, stride 2
            resnet_layer(256, 512, 4, stride=2),  # layer2, stride 4
            resnet_layer(512, 1024, 6, stride=2),  # layer3, stride 8
            resnet_layer(1024, 2048, 3, stride=2),  # layer4: in the files, never run
        )
        self.decoder1 = conv_bn_relu(1024, 512, bias=True)
        self.decoder2 = conv_bn_relu(512, 256, bias=True)
        self.decoder3 = conv_bn_relu(256, 128, bias=True)
        self.decoder4 = conv_bn_relu(128, 64, bias=True)
        self.final_conv = nn.Conv2d(64, num_classes, 1)
        for m in self.encoder[4:].modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.encoder
        features = e[6](e[5](e[4](e[1](e[0](x)))))
        out = self.decoder4(self.decoder3(self.decoder2(self.decoder1(features))))
        logits = F.interpolate(
            self.final_conv(out), scale_factor=8, mode="bilinear", align_corners=True
        )
        return _to_input_size(logits, x)


class AuxiliaryNet(nn.Module):
    """Ours: a timm ResNet with a 2-channel input (depth / ``DEPTH_SCALE``, dispersion) read
    at its third stage (1024 channels for ResNet-50, stride 16), four conv-BN-ReLU decoder
    blocks that halve the width (1024 -> 512 -> 256 -> 128 -> 64), a 1x1 classifier and
    bilinear upsampling to the input size. Unlike the published network it keeps the stem's
    ReLU and max-pool. Needs timm."""

    def __init__(self, num_classes: int = 19, backbone: str = "resnet50") -> None:
        super().__init__()
        import timm

        self.backbone_name = backbone
        self.encoder = timm.create_model(
            backbone, pretrained=False, in_chans=2, features_only=True, out_indices=(3,)
        )
        width = self.encoder.feature_info.channels()[-1]
        widths = [width, width // 2, width // 4, width // 8, width // 16]
        self.decoder = nn.Sequential(
            *(conv_bn_relu(a, b, bias=False) for a, b in itertools.pairwise(widths))
        )
        self.classifier = nn.Conv2d(widths[-1], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = torch.cat([x[:, :1] / DEPTH_SCALE, x[:, 1:]], dim=1)
        logits = self.classifier(self.decoder(self.encoder(scaled)[-1]))
        return F.interpolate(logits, x.shape[-2:], mode="bilinear", align_corners=False)


def build_auxiliary(
    architecture: Architecture = "published", num_classes: int = 19, backbone: str = "resnet50"
) -> nn.Module:
    """A freshly initialised auxiliary network; ``backbone`` is the timm model of ``"timm"``."""
    if architecture == "published":
        return AuxiliaryResNet50(num_classes)
    if architecture == "timm":
        return AuxiliaryNet(num_classes, backbone)
    raise ValueError(f"unknown auxiliary architecture {architecture!r}; use 'published' or 'timm'")


def geometric_input(depth: torch.Tensor, dispersion: torch.Tensor) -> torch.Tensor:
    """The networks' B x 2 x H x W input from B x [1 x] H x W depth (loader encoding, 0..255,
    as it is) and dispersion maps."""
    depth = depth.reshape(depth.shape[0], 1, *depth.shape[-2:]).float()
    dispersion = dispersion.reshape(dispersion.shape[0], 1, *dispersion.shape[-2:]).float()
    return torch.cat([depth, dispersion], dim=1)


@contextmanager
def batch_statistics(net: nn.Module) -> Iterator[None]:
    """Inside, ``net``'s BatchNorm layers normalise with each batch's own statistics, as
    training-mode BatchNorm does, without touching their running statistics."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    for m in norms:
        m.training, m.track_running_stats = True, False
    try:
        yield
    finally:
        for m, (training, tracking) in zip(norms, saved, strict=True):
            m.training, m.track_running_stats = training, tracking


@torch.no_grad()
def auxiliary_labels(
    net: nn.Module,
    depth: torch.Tensor,
    dispersion: torch.Tensor,
    input_size: tuple[int, int] | None = None,
    batch_stats: bool = False,
) -> torch.Tensor:
    """The frozen network's labels (B x H x W) at the maps' size, the network run at
    ``input_size`` (width, height) when given, as it was pre-trained.

    With ``batch_stats`` its BatchNorm layers use the batch's statistics, as in the reference
    during adaptation (``dacs.py:447-452``; the runner's ``train()`` puts the frozen network in
    training mode every iteration).
    """
    x = geometric_input(depth, dispersion)
    size = x.shape[-2:]
    if input_size is not None:
        x = F.interpolate(x, (input_size[1], input_size[0]), mode="bilinear", align_corners=False)
    if batch_stats:
        with batch_statistics(net):
            logits = net(x)
    else:
        logits = net(x)
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits.float(), size, mode="bilinear", align_corners=False)
    return logits.argmax(1)


def published_auxiliary_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The published ``AuxiliaryResNet50`` state (keys as in ``gta_auxiliary.pth``, i.e.
    without ``auxiliary_net.``) as ``AuxiliaryResNet50``'s, every key and shape checked.

    Raises a one-line ``ValueError`` naming the first key that does not fit.
    """
    classifier = state.get("final_conv.weight")
    if not isinstance(classifier, torch.Tensor) or classifier.dim() != 4:
        raise ValueError(
            "not a published AuxiliaryResNet50 state: 'final_conv.weight' (num_classes x 64 x "
            "1 x 1) is missing"
        )
    with torch.device("meta"):
        expected = AuxiliaryResNet50(classifier.shape[0]).state_dict()
    out = {}
    for key, tensor in state.items():
        if key not in expected:
            raise ValueError(f"AuxiliaryResNet50 has no tensor {key!r}")
        fit = fitted(tensor, expected[key].shape)
        if fit is None:
            raise ValueError(
                f"AuxiliaryResNet50 {key!r}: expected shape {tuple(expected[key].shape)}, "
                f"got {tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else tensor!r}"
            )
        out[key] = fit
    missing = next((key for key in expected if key not in state), None)
    if missing is not None:
        raise ValueError(f"not a complete AuxiliaryResNet50 state: {missing!r} is missing")
    return out


def read_auxiliary(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The auxiliary network of a file (frozen, in eval mode) and what the file says of it.

    Accepted: our checkpoints (``uda dispersion pretrain``; the metadata is the checkpoint
    without ``model``, ``settings`` included), the published auxiliary files (a bare state
    dict or ``{'model': state_dict}``, ``dacs.py:128-130``) and published Dispersion model
    files, whose ``auxiliary_net.*`` it takes (metadata: ``layout`` only).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"auxiliary network checkpoint {path} does not exist")
    not_one = (
        f"{path} is not an auxiliary network: expected a checkpoint of `uda dispersion "
        "pretrain`, a published AuxiliaryResNet50 file (gta_auxiliary.pth) or a published "
        "Dispersion model with auxiliary_net.* tensors"
    )
    try:  # tensors and plain containers only: loading runs no code from the file
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(not_one) from error
    if not isinstance(content, dict):
        raise ValueError(not_one)
    if content.get("format") == CHECKPOINT_FORMAT:
        settings = content["settings"]
        net = build_auxiliary(
            settings.get("architecture", "timm"), settings["num_classes"], settings["backbone"]
        )
        net.load_state_dict(content["model"])
        meta = {k: v for k, v in content.items() if k != "model"} | {"layout": "uda"}
    else:
        state, layout = _published_layout(content)
        if "final_conv.weight" not in state:
            raise ValueError(not_one)
        try:
            state = published_auxiliary_state(state)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        net = AuxiliaryResNet50(state["final_conv.weight"].shape[0])
        net.load_state_dict(state)
        meta = {"layout": layout}
    net.to(device).eval().requires_grad_(False)
    return net, meta


def _published_layout(content: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The ``AuxiliaryResNet50`` entries of a published file, and its layout."""
    if isinstance(content.get("model"), dict):
        return content["model"], "aux-wrapped"
    if isinstance(content.get("state_dict"), dict):
        prefix = "auxiliary_net."
        tensors = content["state_dict"].items()
        return {k[len(prefix) :]: v for k, v in tensors if k.startswith(prefix)}, "segmentor"
    return content, "aux-raw"


def load_auxiliary(path: Path | str, device: torch.device | str = "cpu") -> nn.Module:
    """The auxiliary network of ``path`` in eval mode, frozen: B x 2 x H x W (depth in the
    loaders' 0..255 encoding, dispersion) -> B x num_classes x H x W logits.

    Reads our checkpoints, the published ``gta_auxiliary.pth`` / ``synthia_auxiliary.pth``
    (a bare state dict or ``{'model': ...}``) and published Dispersion model files.
    """
    return read_auxiliary(Path(path), device)[0]
