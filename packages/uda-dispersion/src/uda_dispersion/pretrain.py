"""Pre-training the auxiliary network on the labelled source domain (never published; ours).

The network learns labels from (depth, dispersion of the ground-truth labels), so that during
adaptation it can judge pseudo-labels by geometry alone. The loop is plain PyTorch over any
stream of source batches (dicts with ``label`` B x H x W, 255 = ignore, and ``depth``):
AdamW, linear warm-up then poly decay, cross-entropy at the network's fixed input size.
Checkpoints are written atomically every ``checkpoint_interval`` iterations to
``<out>.partial`` and a killed run resumes from there; the finished network goes to ``out``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uda_dispersion.auxiliary import (
    CHECKPOINT_FORMAT,
    auxiliary_labels,
    build_auxiliary,
    geometric_input,
)
from uda_dispersion.extractor import dispersion_map
from uda_dispersion.losses import weighted_cross_entropy


@dataclass(frozen=True)
class PretrainSettings:
    """How the auxiliary network is built and pre-trained; saved in its checkpoint."""

    architecture: str = "published"
    """``"published"`` (``AuxiliaryResNet50``) or ``"timm"`` (``AuxiliaryNet`` on ``backbone``)."""
    backbone: str = "resnet50"
    num_classes: int = 19
    input_size: tuple[int, int] = (512, 512)
    """(width, height) the network runs at, in pre-training and in adaptation."""
    iterations: int = 20000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    checkpoint_interval: int = 1000
    extractor: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``dispersion_map`` (min_area, connectivity, ...)."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_size"] = list(self.input_size)
        return out


@dataclass
class PretrainResult:
    path: Path
    iterations: int
    final_loss: float
    val_miou: float | None


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _learning_rate(settings: PretrainSettings, iteration: int) -> float:
    if iteration < settings.warmup_iters:
        return settings.lr * (iteration + 1) / settings.warmup_iters
    span = max(settings.iterations - settings.warmup_iters, 1)
    return settings.lr * (1 - (iteration - settings.warmup_iters) / span) ** 0.9


def _network_input(
    batch: dict[str, torch.Tensor], settings: PretrainSettings, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B x 2 x h x w input, B x h x w labels) at the network's input size."""
    label = batch["label"].to(device)
    depth = batch["depth"].to(device)
    x = geometric_input(depth, dispersion_map(label, depth, **settings.extractor))
    width, height = settings.input_size
    x = F.interpolate(x, (height, width), mode="bilinear", align_corners=False)
    label = F.interpolate(label[:, None].float(), (height, width), mode="nearest")[:, 0].long()
    return x, label


def validation_miou(
    net: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    settings: PretrainSettings,
    device: torch.device,
) -> float:
    """Mean IoU of the network's labels (from depth and the dispersion of the ground truth)
    over the classes present in the labels or the predictions."""
    k = settings.num_classes
    confusion = torch.zeros(k * k, dtype=torch.long, device=device)
    was_training = net.training
    net.eval()
    for batch in batches:
        label, depth = batch["label"].to(device), batch["depth"].to(device)
        disp = dispersion_map(label, depth, **settings.extractor)
        pred = auxiliary_labels(net, depth, disp, settings.input_size)
        valid = label != 255
        confusion += torch.bincount(label[valid] * k + pred[valid], minlength=k * k)
    net.train(was_training)
    confusion = confusion.view(k, k).double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else 0.0


def pretrain(
    batches: Callable[[int], Iterator[dict[str, torch.Tensor]]],
    out: Path,
    settings: PretrainSettings,
    *,
    device: torch.device | str = "cpu",
    val_batches: Callable[[], Iterable[dict[str, torch.Tensor]]] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    log: Callable[[str], None] = print,
    seed: int = 0,
) -> PretrainResult:
    """Pre-train the auxiliary network and save it to ``out``.

    ``batches(start)`` yields source batches of ``settings.batch_size`` from iteration
    ``start`` on (so a resumed run sees the batches it has not seen); ``val_batches()`` yields
    labelled target batches for the validation mIoU, reported for information only.
    ``progress(iteration, total, loss)`` is called after each iteration.
    """
    out, device = Path(out), torch.device(device)
    torch.manual_seed(seed)
    net = build_auxiliary(settings.architecture, settings.num_classes, settings.backbone)
    net = net.to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), settings.lr, weight_decay=settings.weight_decay)
    start, loss_value = 0, float("nan")
    partial = partial_path(out)
    if partial.exists():
        state = torch.load(partial, map_location=device, weights_only=True)
        if state["settings"] == settings.to_dict():
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start = state["iteration"]
            torch.set_rng_state(state["rng"])
            log(f"resuming the auxiliary pre-training from iteration {start} ({partial})")
        else:
            log(f"{partial} was made with other settings; pre-training from the start")

    def save_partial(iteration: int) -> None:
        state = {
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "iteration": iteration,
            "settings": settings.to_dict(),
            "rng": torch.get_rng_state(),
        }
        _atomic_save(state, partial)

    iteration = start
    stream = batches(start) if start < settings.iterations else iter(())
    for batch in stream:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(settings, iteration)
        x, label = _network_input(batch, settings, device)
        loss = weighted_cross_entropy(net(x), label)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"auxiliary pre-training: loss is {loss.item()} at iteration {iteration + 1}; "
                "check the depth maps for NaN or lower the learning rate"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        iteration += 1
        loss_value = loss.item()
        if progress is not None:
            progress(iteration, settings.iterations, loss_value)
        if iteration % settings.checkpoint_interval == 0 and iteration < settings.iterations:
            save_partial(iteration)
        if iteration >= settings.iterations:
            break
    if iteration < settings.iterations:
        raise RuntimeError(
            f"auxiliary pre-training: the batch stream ended at iteration {iteration} "
            f"of {settings.iterations}"
        )
    val = validation_miou(net, val_batches(), settings, device) if val_batches else None
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model": net.state_dict(),
        "settings": settings.to_dict(),
        "val_miou": val,
        "final_loss": loss_value,
    }
    _atomic_save(checkpoint, out)
    partial.unlink(missing_ok=True)
    return PretrainResult(out, iteration, loss_value, val)
