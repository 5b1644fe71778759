"""Typed run configuration: the generic sections, and loading from files and overrides.

Every section is a pydantic model that rejects unknown keys, so a typo fails at load time
with the field's dotted path. Sections that know about data or models live in the packages
that own those concepts and are composed into a run config there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from uda_core.errors import UdaError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ModelT = TypeVar("ModelT", bound=BaseModel)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated, and
    no number is NaN or infinite."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class OptimConfig(Section):
    """AdamW (or SGD) with a learning-rate multiplier for the decoder."""

    kind: Literal["adamw", "sgd"] = Field(
        "adamw",
        description="Optimiser: adamw, or sgd with momentum (the references' DeepLabV2 "
        "AdvSeg/MinEnt runs: schedules/sgd.py, lr 0.0025, momentum 0.9, weight decay 5e-4).",
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (kind: sgd).")
    lr: float = Field(6e-5, gt=0, le=1, description="Base learning rate (encoder).")
    decoder_lr_mult: float = Field(
        10.0, gt=0, description="Learning-rate multiplier of the decoder."
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    no_decay_norm_and_pos: bool = Field(
        True, description="No weight decay on norm layers and position embeddings."
    )
    no_decay_scope: Literal["encoder", "all"] = Field(
        "all",
        description="Where no_decay_norm_and_pos applies: encoder (published: every decoder and "
        "head parameter, BatchNorm included, gets the weight decay, as mmcv's paramwise_cfg "
        "custom key 'head' does) or all (ours before: the decoder's norm layers too).",
    )
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradient norm to this value.")
    implementation: Literal["auto", "foreach", "fused", "for-loop"] = Field(
        "auto",
        description="AdamW kernel: auto (fused where PyTorch has it for the device: CPU and "
        "CUDA since 2.4; else foreach), foreach "
        "(multi-tensor), fused (one kernel per group), for-loop (per tensor, as the reference's "
        "PyTorch); the same update within float rounding.",
    )


class ScheduleConfig(Section):
    """Linear warm-up, then polynomial decay to zero at the last iteration."""

    warmup_iters: int = Field(1500, ge=0, description="Iterations of linear warm-up.")
    warmup_ratio: float = Field(
        1e-6, gt=0, le=1, description="Learning-rate factor at iteration 0."
    )
    power: float = Field(1.0, gt=0, description="Power of the polynomial decay.")
    min_lr_ratio: float = Field(0.0, ge=0, lt=1, description="Factor the decay ends at.")


class RuntimeConfig(Section):
    """How long to train, how often to evaluate and save, where, and in which precision."""

    iterations: int = Field(40000, ge=1, description="Training iterations.")
    eval_interval: int = Field(4000, ge=1, description="Evaluate on target val every N iterations.")
    checkpoint_interval: int = Field(
        4000, ge=1, description="Save a checkpoint every N iterations."
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="Periodic checkpoints kept (best and last kept too)."
    )
    log_interval: int = Field(50, ge=1, description="Log losses every N iterations.")
    debug_interval: int = Field(
        0, ge=0, description="Save debug pictures every N iterations (0: off)."
    )
    seed: int = Field(0, ge=0, description="Seed of every random draw (data, init, augmentation).")
    precision: Literal["no", "bf16", "fp16"] = Field("no", description="Mixed precision.")
    work_dir: Path = Field(Path("work_dirs"), description="Folder that holds run folders.")
    name: str | None = Field(
        None, min_length=1, description="Run folder name; default: <time>_<method>."
    )
    deterministic: bool = Field(False, description="Use deterministic algorithms (slower on GPU).")
    sync_bn: bool = Field(
        False,
        description="Several GPU processes: BatchNorm statistics over the global batch "
        "(SyncBatchNorm) instead of each process's own.",
    )
    find_unused_parameters: bool = Field(
        False,
        description="Several processes: let DDP accept parameters without a gradient in a "
        "backward pass (slower; needed by heads whose outputs some losses skip).",
    )
    channels_last: bool = Field(
        False, description="Keep the student's weights in channels-last layout (GPU convs)."
    )
    compile: bool = Field(
        False,
        description="torch.compile the student, the EMA teacher and the frozen ImageNet "
        "encoder (first iterations slower: compile time; GPU speed-up).",
    )
    backward: Literal["auto", "per-pass", "once"] = Field(
        "auto",
        description="per-pass: one backward after each student pass (source, mixed, masked), "
        "each pass's activations freed after it, as the reference does; once: the passes' "
        "losses summed and one backward at the end of the step (the same gradients up to "
        "float rounding; under bf16/fp16 each weight's gradient is cast back once per step "
        "instead of once per pass: fewer operator dispatches; every pass's activations held "
        "until then: more memory); auto: once under bf16/fp16, per-pass in fp32 (where once "
        "saves nothing).",
    )

    @property
    def backward_once(self) -> bool:
        """Whether ``backward`` resolves to one backward per step."""
        return self.backward == "once" or (self.backward == "auto" and self.precision != "no")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and ("/" in value or "\\" in value or value in (".", "..")):
            raise ValueError("a run folder name, without path separators, '.' or '..'")
        return value

    @field_validator("work_dir")
    @classmethod
    def _folder(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError("is a file; give a folder (it is created if missing)")
        return value


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML, TOML or JSON file into a dict."""
    if path.is_dir():
        raise UdaError(f"config file {path} is a folder; give the file to --config")
    if not path.is_file():
        raise UdaError(f"config file {path} does not exist; check the path given to --config")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UdaError(
            f"config file {path} is not UTF-8 text (a binary file?); give a YAML, TOML or JSON file"
        ) from None
    except OSError as exc:
        raise UdaError(f"config file {path} cannot be read ({exc.strerror})") from None
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise UdaError(
                f"config file {path}: unknown format {suffix!r}; use .yaml, .toml or .json"
            )
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise UdaError(f"config file {path} cannot be parsed: {_parse_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UdaError(
            f"config file {path} must hold a mapping of sections, not {type(data).__name__}"
        )
    return data


def _parse_problem(exc: Exception) -> str:
    """The parser's complaint in one line, with its line and column (1-based)."""
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError) and mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key.sub=value`` overrides; values are parsed as YAML scalars or lists."""
    out = json.loads(json.dumps(data, default=str))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UdaError(
                f"--set {item!r}: expected KEY=VALUE, e.g. --set runtime.iterations=2000"
            )
        value = _parse_scalar(raw)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UdaError(f"--set {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def _parse_scalar(raw: str) -> Any:
    """A YAML value, with numbers like ``1e-4`` (a string in YAML 1.1) read as floats."""
    if not raw.strip():
        return None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``update`` wins; sections merge key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line naming each bad field by its dotted path."""
    problems = []
    for err in exc.errors():
        where = prefix + (".".join(str(p) for p in err["loc"]) or "<root>")
        if err["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key")
        else:
            problems.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(problems)


def validate(model: type[ModelT], data: dict[str, Any], *, source: str = "config") -> ModelT:
    """Build a config model, turning pydantic's report into one line per bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UdaError(f"{source}: {describe_validation_error(exc)}") from None


class EvalConfig(Section):
    """How target val is evaluated."""

    mode: Literal["whole", "slide"] = Field(
        "whole", description="Whole-image or sliding-window inference."
    )
    crop_size: tuple[int, int] = Field((512, 512), description="Sliding window (width, height).")
    stride: tuple[int, int] = Field(
        (341, 341), description="Sliding-window stride (width, height)."
    )
    batch_size: int = Field(1, ge=1, description="Images per evaluation batch.")
    batched: bool = Field(
        True,
        description="Slide: all windows of a batch in one forward pass (False: one at a time, "
        "for small GPUs; CUDA out-of-memory falls back to that on its own).",
    )

    @field_validator("crop_size", "stride")
    @classmethod
    def _positive(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 1:
            raise ValueError("sizes must be positive")
        return value

    @model_validator(mode="after")
    def _windows_cover_the_image(self) -> EvalConfig:
        if self.mode == "slide" and any(
            s > c for s, c in zip(self.stride, self.crop_size, strict=True)
        ):
            raise ValueError(
                f"slide stride {self.stride} is larger than the window {self.crop_size}: "
                "pixels between windows would get no prediction; use a stride <= crop_size"
            )
        return self
