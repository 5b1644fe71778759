"""Hands contiguous batches to the native module as raw addresses, so one build of the
extension serves every torch version, and picks the CPU or CUDA kernels by device."""

from __future__ import annotations

import numbers
import operator
from dataclasses import dataclass

import torch

from uda_dispersion import _native

WEIGHTINGS = {"uniform": 0, "area": 1, "sqrt_area": 2}
# Label dtypes the CPU kernels read in place; others are widened to int64 first.
_CPU_LABEL_TYPES = {torch.uint8: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.int64: 4}
_INT32_MAX = 2**31 - 1
# Default limit on the instances of at least min_area per image: the pair step compares every
# pair of them, so its cost grows with the square of their number (README, "Speed").
MAX_INSTANCES = 2**16


@dataclass(frozen=True)
class Options:
    """Parameters of the definition (README, "Definition")."""

    ignore_index: int = 255
    connectivity: int = 8
    min_area: int = 16
    depth_weight: float = 1.0
    weighting: str = "uniform"
    fill: float = -1.0
    max_instances: int | None = MAX_INSTANCES

    def __post_init__(self) -> None:
        for name in ("ignore_index", "connectivity", "min_area"):
            object.__setattr__(self, name, _integer(name, getattr(self, name)))
        for name in ("depth_weight", "fill"):
            object.__setattr__(self, name, _real(name, getattr(self, name)))
        if self.max_instances is not None:
            object.__setattr__(self, "max_instances", _integer("max_instances", self.max_instances))
            if self.max_instances < 0:
                raise ValueError(f"max_instances must be >= 0 or None, got {self.max_instances}")
        if not -(2**31) <= self.ignore_index < 2**31:
            raise ValueError(f"ignore_index must fit in int32, got {self.ignore_index}")
        if self.connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {self.connectivity}")
        if self.min_area < 0:
            raise ValueError(f"min_area must be >= 0, got {self.min_area}")
        if not (self.depth_weight >= 0 and self.depth_weight < float("inf")):
            raise ValueError(f"depth_weight must be finite and >= 0, got {self.depth_weight}")
        if not isinstance(self.weighting, str) or self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {list(WEIGHTINGS)}, got {self.weighting!r}")

    @property
    def instance_limit(self) -> int:
        """max_instances as the native code takes it: -1 for no limit."""
        return -1 if self.max_instances is None else self.max_instances


def _integer(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return float(value)


def cuda_built() -> bool:
    """Whether the installed extension holds the CUDA kernels."""
    return bool(_native.has_cuda)


def run(
    labels: torch.Tensor, depth: torch.Tensor, options: Options, with_instances: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Dispersion map (B x 1 x H x W) of B x H x W integer labels and real depth, plus, with
    `with_instances`, the instance ids (B x 1 x H x W) and the N x 7 table. Raises ValueError
    on negative labels (other than the ignore value), on NaN or infinite depth and on an image
    with more than `options.max_instances` instances of at least min_area; on the CPU, Ctrl-C
    raises KeyboardInterrupt within milliseconds."""
    b, h, w = labels.shape
    depth = depth.to(torch.float32).contiguous()
    out = torch.empty((b, 1, h, w), dtype=torch.float32, device=labels.device)
    ids = torch.empty_like(out, dtype=torch.int32) if with_instances else None
    ids_address = ids.data_ptr() if ids is not None else 0
    shape_and_options = (
        b,
        h,
        w,
        options.ignore_index,
        options.connectivity,
        options.min_area,
        options.depth_weight,
        WEIGHTINGS[options.weighting],
        options.fill,
        options.instance_limit,
    )
    if labels.device.type == "cpu":
        if labels.dtype not in _CPU_LABEL_TYPES:
            labels = labels.long()
        labels = labels.contiguous()
        rows = _native.cpu_dispersion(
            labels.data_ptr(),
            _CPU_LABEL_TYPES[labels.dtype],
            depth.data_ptr(),
            out.data_ptr(),
            ids_address,
            *shape_and_options,
            torch.get_num_threads(),
        )
        return out, ids, torch.from_numpy(rows) if with_instances else None
    if labels.device.type == "cuda":
        return _run_cuda(labels, depth, out, ids, shape_and_options, with_instances)
    raise ValueError(f"uda_dispersion runs on CPU or CUDA tensors, got device {labels.device}")


def _run_cuda(labels, depth, out, ids, shape_and_options, with_instances):
    if not cuda_built():
        raise RuntimeError(
            "uda_dispersion was built without its CUDA backend (no nvcc at build time, or "
            "UDA_DISPERSION_CUDA=OFF); reinstall it where nvcc is on PATH to use CUDA tensors"
        )
    labels = _checked_int32(labels, depth, shape_and_options[3])
    device = labels.device
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(device).cuda_stream
    b, h, w = labels.shape
    offsets = torch.empty(b + 1, dtype=torch.int32, device=device)
    workspace = torch.empty(_native.cuda_workspace_bytes(b, h, w), dtype=torch.uint8, device=device)
    _native.cuda_dispersion(
        labels.data_ptr(),
        depth.data_ptr(),
        out.data_ptr(),
        ids.data_ptr() if ids is not None else 0,
        offsets.data_ptr(),
        workspace.data_ptr(),
        *shape_and_options,
        index,
        stream,
    )
    if not with_instances:
        return out, None, None
    count = int(offsets[-1])
    table = torch.empty((count, 7), dtype=torch.float64, device=device)
    _native.cuda_table(workspace.data_ptr(), table.data_ptr(), count, b, h, w, index, stream)
    return out, ids, table


def _checked_int32(labels: torch.Tensor, depth: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """The CPU kernels check their input while they read it; on CUDA torch does, waiting for
    the device once."""
    if labels.dtype in (torch.uint16, torch.uint32, torch.uint64):
        labels = labels.long()
    low, high = (int(v) for v in torch.aminmax(labels))
    if high > _INT32_MAX:
        raise ValueError(f"labels must be in [0, 2^31) apart from the ignore value, found {high}")
    labels = labels.to(torch.int32).contiguous()
    if low < 0 and ((labels < 0) & (labels != ignore_index)).any():
        raise ValueError(
            f"labels must be in [0, 2^31) apart from the ignore value ({ignore_index}), found {low}"
        )
    if not torch.isfinite(depth).all():
        raise ValueError("depth holds NaN or infinite values")
    return labels
