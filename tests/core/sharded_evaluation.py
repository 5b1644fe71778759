"""Evaluation on one shard of a gloo process group (spawned by test_distributed; kept
light so that spawned processes start fast)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.core.test_evaluation import PixelwiseModel
from uda_core.config import EvalConfig
from uda_core.evaluation import Evaluator


def evaluate_on(rank: int, world: int, port: int, sizes: list[int], out: Path) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        for size in sizes:
            report = evaluator(size).run(model(), torch.device("cpu"), rank, world)
            torch.save(report, out / f"{size}-{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def evaluator(size: int) -> Evaluator:
    generator = torch.Generator().manual_seed(size)
    samples = [
        {
            "image": torch.randn(3, 8, 8, generator=generator),
            "label": torch.randint(0, 4, (8, 8), generator=generator).masked_fill(
                torch.rand(8, 8, generator=generator) < 0.2, 255
            ),
        }
        for _ in range(size)
    ]
    return Evaluator(samples, ("a", "b", "c", "d"), EvalConfig(batch_size=2))


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return PixelwiseModel().eval()
