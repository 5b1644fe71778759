"""One forward of a style-hallucinating model under DDP in one process of a gloo group
(spawned by test_shade; kept light so that spawned processes start fast)."""

from __future__ import annotations

from pathlib import Path

import torch

from uda_methods.config import MethodConfig, ModelConfig
from uda_methods.registry import build_method_model


def forward_with_own_styles(rank: int, world: int, port: int, images: str, out: Path) -> None:
    """Base styles filled with ``rank + 1``, the model wrapped in DDP (buffers broadcast
    from process 0 before each forward, PyTorch's default and Accelerate's), one training
    forward; the styles after it go to ``out/<rank>.pt``."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        model_cfg = ModelConfig(encoder="resnet10t", channels=16, style_hallucination=0.0156)
        method_cfg = MethodConfig(name="dg-daformer", style_images=images)
        model = build_method_model(model_cfg, method_cfg, 19)
        style = model.encoder.style_hallucination
        style.proto_mean.fill_(rank + 1.0)
        style.proto_std.fill_(rank + 1.0)
        wrapped = torch.nn.parallel.DistributedDataParallel(model).train()
        wrapped(torch.randn(1, 3, 32, 32))
        torch.save(
            {"mean": style.proto_mean.clone(), "std": style.proto_std.clone()}, out / f"{rank}.pt"
        )
    finally:
        torch.distributed.destroy_process_group()
