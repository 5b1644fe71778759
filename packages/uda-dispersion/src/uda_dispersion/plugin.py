"""The dispersion method as a plugin of uda's self-training (entry point ``dispersion``).

What it adds to DAFormer, HRDA or MIC (see ``uda_core.plugin`` for where each hook runs):

- dense targets ``dispersion``: ``dispersion_map`` of the source labels and source depth, and
  of the teacher's pseudo-labels and target depth, on the training device; the core crops,
  mixes and masks them like labels (ignore value -1);
- the multi-task head (``DispersionHead``) on the decoder's fused features, with its losses:
  cross-entropy of the initial segmentation (pixel-weighted like the main loss, averaged over
  all pixels) and BerHu of the initial and final dispersion, x ``loss_weight``; with HRDA the
  published presets take them from the fused output alone, whose maps are the context pass's
  (uda-methods' ``method.hrda_plugin_losses`` and ``hrda_aux_fusion``); by default the head
  makes the final segmentation itself (``outputs["logits"]``) as the published head does;
- the pixel-weight hook: the frozen auxiliary network labels the target from (depth,
  dispersion) and the pseudo-labels' weights are multiplied by ``alpha`` where it agrees and
  by ``beta`` where it does not;
- ``prepare``: loads the auxiliary network, or pre-trains one on the source and caches it.

Settings are validated with pydantic (installed with uda; ``pip install uda-dispersion[plugin]``
otherwise). Their defaults are the published behaviour; where ours differs it is an option
(the package README lists each with the reference's file and line).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import timm
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from uda_dispersion.auxiliary import auxiliary_labels, read_auxiliary
from uda_dispersion.extractor import dispersion_map
from uda_dispersion.head import DispersionHead, published_state
from uda_dispersion.losses import DISPERSION_IGNORE, MeanOver, agreement_weights, head_losses
from uda_dispersion.pretrain import PretrainSettings, pretrain


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ExtractorConfig(_Section):
    """Options of ``dispersion_map`` (see the package README, "Definition")."""

    min_area: int = Field(16, ge=1, description="Smallest instance (px) that gets a value.")
    connectivity: Literal[4, 8] = Field(8, description="Pixel connectivity of instances.")
    depth_weight: float = Field(1.0, ge=0, description="Scale of depth in the joint space.")
    weighting: Literal["uniform", "area", "sqrt_area"] = Field(
        "uniform", description="Weight of each supporting instance's direction."
    )


class AuxiliaryConfig(_Section):
    """The frozen auxiliary network and, when no checkpoint is given, its pre-training."""

    checkpoint: Path | None = Field(
        None,
        description="Pre-trained auxiliary network: ours (`uda dispersion pretrain`) or the "
        "published gta_auxiliary.pth / synthia_auxiliary.pth; absent: pre-trained on the "
        "source before training and cached by dataset and settings.",
    )
    architecture: Literal["published", "timm"] = Field(
        "published",
        description="Network to pre-train. published: AuxiliaryResNet50 exactly (ResNet-50 "
        "to its third stage without the stem's ReLU and max-pool, stride 8, raw depth "
        "0..255); timm: ours, a timm `backbone` with the stem kept, stride 16, depth / 255. "
        "A checkpoint brings its own.",
    )
    backbone: str = Field("resnet50", description="timm ResNet of architecture=timm.")
    batchnorm: Literal["batch", "running"] = Field(
        "batch",
        description="BatchNorm of the frozen network in the weight hook. batch: each "
        "batch's statistics, as the reference (its runner's train() puts the network in "
        "training mode every iteration); running: eval mode, the stored statistics (ours).",
    )
    input_size: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = Field(
        (512, 512), description="(width, height) the network runs at."
    )
    iterations: int = Field(20000, ge=1, description="Pre-training iterations.")
    batch_size: int = Field(8, ge=1, description="Pre-training batch size.")
    lr: float = Field(1e-3, gt=0, description="Pre-training AdamW learning rate.")
    warmup_iters: int = Field(500, ge=0, description="Pre-training linear warm-up.")
    checkpoint_interval: int = Field(1000, ge=1, description="Pre-training checkpoints.")

    @field_validator("backbone")
    @classmethod
    def _timm_model(cls, value: str) -> str:
        if not timm.is_model(value):
            raise ValueError(f"{value!r} is not a timm model; see timm.list_models('resnet*')")
        return value

    def pretrain_settings(self, num_classes: int, extractor: ExtractorConfig) -> PretrainSettings:
        return PretrainSettings(
            architecture=self.architecture,
            backbone=self.backbone,
            num_classes=num_classes,
            input_size=tuple(self.input_size),
            iterations=self.iterations,
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_iters=min(self.warmup_iters, self.iterations // 2),
            checkpoint_interval=self.checkpoint_interval,
            extractor=extractor.model_dump(),
        )


class DispersionConfig(_Section):
    """Settings of the dispersion plugin (published values by default)."""

    loss_weight: float = Field(0.005, ge=0, description="Weight of the dispersion BerHu losses.")
    berhu_ratio: float = Field(
        0.2, gt=0, le=1, description="BerHu threshold as a share of the largest residual."
    )
    berhu_detach_threshold: bool = Field(
        False,
        description="Cut the gradient through the BerHu threshold c (ours). Published: c = "
        "ratio x the largest residual over the batch's valid pixels, not detached, so it "
        "passes a gradient to that pixel.",
    )
    seg_init_mean: MeanOver = Field(
        "all",
        description="Mean of the initial segmentation's cross-entropy. all: over every pixel, "
        "ignored ones counted as 0 (mmseg's reduction='mean', published); valid: over the "
        "non-ignored pixels (ours).",
    )
    head_width: int | None = Field(
        None,
        ge=4,
        description="Width of the head's task features; absent: the decoder's (published: "
        "256, the DAFormer decoder's, which the reference hard-codes).",
    )
    dilations: tuple[int, ...] = Field(
        (6, 12, 18, 24), min_length=1, description="Dilations of the multi-dilation classifiers."
    )
    classifier_branches: Literal["first_two", "all"] = Field(
        "first_two",
        description="Which convolutions of each multi-dilation classifier are summed. "
        "first_two: the published classifier returns inside its loop, so only the first two "
        "(dilations 6, 12) count, the others are stored and unused; all: every one (ours).",
    )
    final_segmentation: Literal["head", "host"] = Field(
        "head",
        description="Who makes the final segmentation. head: a multi-dilation classifier on "
        "the distilled segmentation features, as published; host: those features go back to "
        "the host decoder's classifier (ours, fits any decoder).",
    )
    head_init: Literal["normal", "pytorch"] = Field(
        "normal",
        description="Initialisation of the head. normal: every convolution's weight "
        "N(0, 0.01), biases PyTorch's default, BatchNorm 1/0 (published); pytorch: PyTorch's "
        "default, the classifiers N(0, 0.01) with zero bias (ours).",
    )
    weight_hook: bool = Field(
        True, description="Adjust pseudo-label weights by the auxiliary network's agreement."
    )
    alpha: float = Field(1.2, ge=0, description="Weight factor where the auxiliary agrees.")
    beta: float = Field(
        0.6, ge=0, description="Weight factor where it disagrees (published: 0.6 GTA, 0.3 Synthia)."
    )
    clip_weights: bool = Field(False, description="Clip adjusted pixel weights to at most 1.")
    extractor: ExtractorConfig = Field(default_factory=ExtractorConfig)
    auxiliary: AuxiliaryConfig = Field(default_factory=AuxiliaryConfig)


class DispersionPlugin:
    """See the module docstring; created by ``create(settings)``."""

    name = "dispersion"
    needs = frozenset({"depth"})
    dense_targets: ClassVar[dict[str, float]] = {"dispersion": DISPERSION_IGNORE}

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.config = DispersionConfig(**settings)
        self.num_classes = 19
        self.auxiliary: nn.Module | None = None
        self.auxiliary_digest: str | None = None
        self.last: dict[str, torch.Tensor] = {}
        """Maps of the last target batch, for the debug panels."""

    # building
    def build_head(self, channels: int, num_classes: int) -> nn.Module:
        self.num_classes = num_classes
        return self._head(channels, num_classes)

    def _head(self, channels: int, num_classes: int) -> DispersionHead:
        cfg = self.config
        return DispersionHead(
            channels,
            num_classes,
            cfg.head_width,
            tuple(cfg.dilations),
            summed=2 if cfg.classifier_branches == "first_two" else None,
            final_segmentation=cfg.final_segmentation,
            init=cfg.head_init,
        )

    def published_head_state(self, substate: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The published ``DispDAFormerHead``'s task modules (keys relative to that head,
        under ``initial_task_prediction_heads.``, ``multi_modal_distillation.`` and
        ``heads.``) as the state dict of this plugin's head. Every key and shape is checked
        against a head of these settings; a ``ValueError`` names the first that does not fit.
        """
        sizes = (  # the head's input width and the number of classes
            "initial_task_prediction_heads.layers.S.0.conv1.weight",
            "initial_task_prediction_heads.conv_out.S.conv2d_list.0.weight",
        )
        missing = next((key for key in sizes if key not in substate), None)
        if missing is not None:
            raise ValueError(f"dispersion head: the published state lacks {missing!r}")
        channels, num_classes = substate[sizes[0]].shape[1], substate[sizes[1]].shape[0]
        with torch.device("meta"):
            template = self._head(channels, num_classes)
        return published_state(substate, template)

    def prepare(self, context: Any) -> None:
        """Load the auxiliary network, pre-training and caching it first if none is configured.

        ``context`` is a ``uda_core.plugin.PrepareContext``.
        """
        if not self.config.weight_hook:
            return
        aux = self.config.auxiliary
        path = aux.checkpoint
        if path is None:
            settings = self.pretrain_settings()
            path = self.cache_path(context)
            if path.exists():
                context.log(f"dispersion: auxiliary network from the cache, {path}")
            else:
                context.log(
                    "dispersion: no auxiliary checkpoint configured "
                    "(plugins.dispersion.auxiliary.checkpoint); pre-training one on the source "
                    f"for {settings.iterations} iterations, cached at {path}"
                )
                self.pretrain(context, path, settings)
        self.auxiliary, meta = read_auxiliary(path, context.device)
        trained_at = meta.get("settings", {}).get("input_size")
        if trained_at is not None and tuple(trained_at) != tuple(aux.input_size):
            context.log(
                f"dispersion: {path} was pre-trained at input size "
                f"{tuple(trained_at)}; running it at {tuple(aux.input_size)}"
            )
        self.auxiliary_digest = _digest(self.auxiliary)

    def pretrain_settings(self) -> PretrainSettings:
        return self.config.auxiliary.pretrain_settings(self.num_classes, self.config.extractor)

    def cache_path(self, context: Any) -> Path:
        """Where ``prepare`` looks for (and caches) the network pre-trained on this data with
        these settings."""
        key = json.dumps([context.data_key, self.pretrain_settings().to_dict()], sort_keys=True)
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        return context.cache_dir / "dispersion-auxiliary" / f"auxiliary-{digest}.pt"

    def pretrain(self, context: Any, out: Path, settings: PretrainSettings | None = None):
        """Pre-train the auxiliary network on ``context``'s source batches, save it to ``out``."""
        settings = settings or self.pretrain_settings()
        result = pretrain(
            lambda start: context.source_batches(settings.batch_size, start, settings.iterations),
            out,
            settings,
            device=context.device,
            val_batches=context.val_batches,
            progress=context.progress,
            log=context.log,
        )
        context.log(
            f"dispersion: auxiliary network pre-trained ({result.iterations} iterations, "
            f"final loss {result.final_loss:.3f}, target val mIoU {100 * result.val_miou:.2f} "
            "from depth and ground-truth dispersion, for information)"
        )
        return result

    # targets and weights
    def _dispersion(self, label: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        return dispersion_map(label, depth, **self.config.extractor.model_dump())[:, 0]

    def source_targets(self, source: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"dispersion": self._dispersion(source["label"], source["depth"])}

    def target_targets(
        self, target: Mapping[str, torch.Tensor], pseudo_label: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        disp = self._dispersion(pseudo_label, target["depth"])
        self.last = {"target depth": target["depth"], "target dispersion": disp}
        return {"dispersion": disp}

    def adjust_weights(
        self, target: Mapping[str, torch.Tensor], pseudo_label: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        cfg = self.config
        if not cfg.weight_hook:
            return weight
        if self.auxiliary is None:
            raise RuntimeError("dispersion: prepare() must load the auxiliary network first")
        # target_targets ran first (the protocol's order) and put the dispersion in ``target``
        aux_label = auxiliary_labels(
            self.auxiliary,
            target["depth"],
            target["dispersion"],
            tuple(cfg.auxiliary.input_size),
            batch_stats=cfg.auxiliary.batchnorm == "batch",
        )
        self.last["auxiliary label"] = aux_label
        self.last["agreement"] = (aux_label == pseudo_label).float().mean()
        return agreement_weights(
            weight, pseudo_label, aux_label, cfg.alpha, cfg.beta, cfg.clip_weights
        )

    # losses
    def losses(
        self,
        output: Any,
        targets: Mapping[str, torch.Tensor],
        pixel_weight: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        return head_losses(
            output.aux,
            targets["label"],
            targets["dispersion"],
            pixel_weight,
            cfg.loss_weight,
            cfg.berhu_ratio,
            cfg.seg_init_mean,
            cfg.berhu_detach_threshold,
        )

    # state and pictures
    def state_dict(self) -> dict[str, Any]:
        return {"auxiliary_digest": self.auxiliary_digest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("auxiliary_digest")
        if (
            saved is not None
            and self.auxiliary_digest is not None
            and saved != self.auxiliary_digest
        ):
            raise ValueError(
                "dispersion: the auxiliary network differs from the one this run started with; "
                "set plugins.dispersion.auxiliary.checkpoint to the original file"
            )

    def log_values(self) -> dict[str, torch.Tensor]:
        """Scalars of the last target batch: the auxiliary network's agreement rate (a tensor
        on the device, read by the engine every ``runtime.log_interval`` iterations)."""
        if "agreement" not in self.last:
            return {}
        return {"agreement": self.last["agreement"]}

    def debug_panels(
        self, batch: Mapping[str, torch.Tensor], output: Any
    ) -> dict[str, torch.Tensor]:
        panels = {k: v for k, v in self.last.items() if v.dim() >= 3}
        panels["mixed dispersion target"] = batch["dispersion"]
        panels["dispersion prediction"] = output.aux["disp"][:, 0]
        return panels


def _digest(module: nn.Module) -> str:
    h = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def create(settings: Mapping[str, Any]) -> DispersionPlugin:
    return DispersionPlugin(settings)
