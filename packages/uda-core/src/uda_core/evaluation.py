"""Segmentation evaluation: inference (whole or sliding window), confusion matrix, IoU report."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.table import Table
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from uda_core.config import EvalConfig
from uda_core.model import logits_of


@dataclass
class IoUReport:
    """Per-class IoU (NaN for a class absent from both labels and predictions) and means;
    ``pixels`` is the number of labelled (not ignored) pixels scored."""

    class_names: tuple[str, ...]
    iou: tuple[float, ...]
    accuracy: float
    subsets: dict[str, float]
    pixels: int = 0

    @property
    def miou(self) -> float:
        return _nanmean(self.iou)

    @classmethod
    def from_confusion(
        cls,
        confusion: torch.Tensor,
        class_names: Sequence[str],
        subsets: dict[str, Sequence[int]] | None = None,
    ) -> IoUReport:
        conf = confusion.double().cpu()
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        total = conf.sum()
        accuracy = float(tp.sum() / total) if total > 0 else math.nan
        values = tuple(float(v) for v in iou)
        means = {name: _nanmean([values[i] for i in idx]) for name, idx in (subsets or {}).items()}
        return cls(tuple(class_names), values, accuracy, means, int(total))

    def as_dict(self) -> dict:
        return {
            "mIoU": self.miou,
            **self.subsets,
            "aAcc": self.accuracy,
            "pixels": self.pixels,
            "IoU": {n: v for n, v in zip(self.class_names, self.iou, strict=True)},
        }

    def table(self, title: str = "Per-class IoU (%)") -> Table:
        table = Table(title=title)
        table.add_column("class")
        table.add_column("IoU", justify="right")
        for name, value in zip(self.class_names, self.iou, strict=True):
            table.add_row(name, "-" if math.isnan(value) else f"{100 * value:.2f}")
        table.add_section()
        table.add_row("mIoU", f"{100 * self.miou:.2f}", style="bold")
        for name, value in self.subsets.items():
            table.add_row(name, f"{100 * value:.2f}")
        return table


def _nanmean(values: Iterable[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _windows(size: int, crop: int, stride: int) -> list[int]:
    if size <= crop:
        return [0]
    starts = list(range(0, size - crop, stride))
    return [*starts, size - crop]


def slide_windows(
    image: torch.Tensor, window: tuple[int, int], stride: tuple[int, int]
) -> tuple[list[tuple[int, int]], list[torch.Tensor]]:
    """The overlapping windows (width, height) of a B x 3 x H x W image at ``stride``: their
    top-left corners and the crops, row by row, the last window of a row or column flush with
    the border."""
    height, width = image.shape[-2:]
    (ww, wh), (sw, sh) = window, stride
    starts = [(t, left) for t in _windows(height, wh, sh) for left in _windows(width, ww, sw)]
    return starts, [image[..., t : t + wh, left : left + ww] for t, left in starts]


def split_windows(joined: dict[str, torch.Tensor], count: int) -> list[dict[str, torch.Tensor]]:
    """Per-window maps from maps of ``count`` windows stacked on the batch axis (crop-major)."""
    n = next(iter(joined.values())).shape[0] // count
    return [{k: v[i * n : (i + 1) * n] for k, v in joined.items()} for i in range(count)]


def stitch_windows(
    starts: list[tuple[int, int]],
    crops: list[torch.Tensor],
    outputs: list[dict[str, torch.Tensor]],
    size: tuple[int, int],
) -> dict[str, torch.Tensor]:
    """Each window's maps (at an integer fraction of the window's size) pasted at its corner
    on a grid of ``size`` / that fraction, summed and divided by the number of windows that
    cover each cell."""
    height, width = size
    totals: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    for (top, left), crop, output in zip(starts, crops, outputs, strict=True):
        for name, value in output.items():
            value = value.float()
            factor = crop.shape[-1] // value.shape[-1]
            if name not in totals:
                grid = (*value.shape[:-2], height // factor, width // factor)
                totals[name] = value.new_zeros(grid)
                counts[name] = value.new_zeros(grid[-2:])
            y, x = top // factor, left // factor
            h, w = value.shape[-2:]
            totals[name][..., y : y + h, x : x + w] += value
            counts[name][y : y + h, x : x + w] += 1
    return {k: totals[k] / counts[k].clamp(min=1) for k in totals}


def slide_average(
    predict: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    image: torch.Tensor,
    window: tuple[int, int],
    stride: tuple[int, int],
    batched: bool = True,
) -> dict[str, torch.Tensor]:
    """Average ``predict`` over overlapping windows (width, height) of a B x 3 x H x W image.

    ``predict(crops)`` returns maps by name, B x C x h x w or B x h x w, each at an integer
    fraction of the window's size (1/4 for decoder logits); the averages come back at the same
    fraction of the image's size. ``batched`` runs every window in one call (windows stacked on
    the batch axis); on a CUDA out-of-memory error it falls back to one window at a time.
    """
    starts, crops = slide_windows(image, window, stride)
    outputs = None
    if batched and len(crops) > 1:
        try:
            outputs = split_windows(predict(torch.cat(crops)), len(crops))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
    if outputs is None:
        outputs = [predict(crop) for crop in crops]
    return stitch_windows(starts, crops, outputs, image.shape[-2:])


@torch.no_grad()
def predict_logits(model: nn.Module, image: torch.Tensor, cfg: EvalConfig) -> torch.Tensor:
    """Logits at the image's size, by whole-image or overlapping sliding-window inference."""
    height, width = image.shape[-2:]
    if cfg.mode == "whole":
        logits = logits_of(model(image))
        return F.interpolate(logits.float(), (height, width), mode="bilinear", align_corners=False)

    def predict(crops: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = logits_of(model(crops)).float()
        size = crops.shape[-2:]
        return {"logits": F.interpolate(logits, size, mode="bilinear", align_corners=False)}

    return slide_average(predict, image, cfg.crop_size, cfg.stride, cfg.batched)["logits"]


@torch.no_grad()
def confusion_matrix(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    num_classes: int,
    cfg: EvalConfig,
    device: torch.device,
    ignore_index: int = 255,
    on_batch=None,
) -> torch.Tensor:
    """Accumulate the confusion matrix of ``model`` over labelled batches.

    Predictions are made on ``image`` and upsampled to the size of ``label`` (the original
    annotation), as the benchmark protocol scores them. Under torch.distributed, the matrices
    of all processes are summed (torchmetrics syncs on ``compute``), so every process gets the
    total; a process with no batches contributes zeros.
    """
    metric = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index).to(device)
    was_training = model.training
    model.eval()
    for batch in batches:
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True).long()
        logits = predict_logits(model, image, cfg)
        if logits.shape[-2:] != label.shape[-2:]:
            logits = F.interpolate(logits, label.shape[-2:], mode="bilinear", align_corners=False)
        pred = logits.argmax(1)
        metric.update(pred, label)
        if on_batch is not None:
            on_batch(batch, pred)
    model.train(was_training)
    return metric.compute()


@dataclass
class Evaluator:
    """A labelled validation set and how to score it."""

    dataset: torch.utils.data.Dataset
    class_names: tuple[str, ...]
    cfg: EvalConfig
    subsets: dict[str, tuple[int, ...]] | None = None
    workers: int = 0
    ignore_index: int = 255

    def loader(self, rank: int = 0, world: int = 1) -> torch.utils.data.DataLoader:
        """This process's share of the set: every sample exactly once across processes."""
        shard = torch.utils.data.Subset(self.dataset, range(rank, len(self.dataset), world))
        return torch.utils.data.DataLoader(
            shard,
            batch_size=self.cfg.batch_size,
            shuffle=False,
            num_workers=self.workers,
            generator=torch.Generator(),
        )

    def run(
        self, model: nn.Module, device: torch.device, rank: int = 0, world: int = 1, on_batch=None
    ) -> IoUReport:
        """Score ``model`` on this process's shard; with several processes, every process must
        call it and each gets the report of the whole set."""
        conf = confusion_matrix(
            model,
            self.loader(rank, world),
            len(self.class_names),
            self.cfg,
            device,
            self.ignore_index,
            on_batch=on_batch,
        )
        return IoUReport.from_confusion(conf, self.class_names, self.subsets)
