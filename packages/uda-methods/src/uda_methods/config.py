"""The run config: every section, composed. A saved run config is enough to rerun the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from uda_core.config import EvalConfig, OptimConfig, RuntimeConfig, ScheduleConfig, Section
from uda_data.config import DataConfig


class ModelConfig(Section):
    """The segmentation network, by the names in ``uda_methods.registry``."""

    encoder: str = Field(
        "resnet18",
        min_length=1,
        description="Encoder: mit_b0..mit_b5, resnet101 or resnet101_v1c (dilated) or a timm "
        "features_only name.",
    )
    decoder: str = Field("light", min_length=1, description="Decoder: light, daformer, deeplabv2.")
    channels: int | None = Field(
        None, ge=8, description="Decoder width; None: the decoder's own (light 128, daformer 256)."
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the classifier.")
    drop_path_rate: float = Field(
        0.1, ge=0, lt=1, description="Stochastic depth of MiT encoders (SegFormer: 0.1)."
    )
    pretrained: Path | None = Field(
        None, description="Local file of ImageNet encoder weights (MiT: SegFormer's mit_bN.pth)."
    )
    timm_pretrained: bool = Field(
        False, description="Download timm's ImageNet weights (needs a hub; not for MiT)."
    )
    style_hallucination: float | None = Field(
        None,
        gt=0,
        description="SHADE's style hallucination after the encoder's first stage, in training:"
        " Dirichlet concentration of the base-style weights (gta-dg presets: 0.0156, HRDA dg"
        " experiments.py:275-279); None: off.",
    )
    deeplabv2_dilations: tuple[int, ...] = Field(
        (6, 12, 18, 24),
        min_length=1,
        description="deeplabv2: dilations of the summed classifier convolutions (published UDA "
        "baselines: 6, 12, AdaptSegNet's early return, MIC deeplabv2red_r50-d8.py:8-12).",
    )
    decoder_init: Literal["mmcv", "normal", "pytorch"] = Field(
        "pytorch",
        description="Initialisation of the daformer decoder and HRDA's scale-attention head: "
        "mmcv (published DAFormer/HRDA/MIC: convs Kaiming normal fan_out, BN 1/0, classifier "
        "N(0, 0.01)), normal (published dispersion head: every decoder conv N(0, 0.01); the "
        "scale attention as mmcv) or pytorch (PyTorch's defaults, ours before).",
    )


class MethodConfig(Section):
    """The UDA strategy and its self-training settings (DACS/DAFormer defaults)."""

    name: str = Field(
        "source-only", min_length=1, description="Method name (see `uda train --help`)."
    )
    ema_alpha: float = Field(0.999, ge=0, lt=1, description="EMA teacher momentum.")
    pseudo_threshold: float = Field(
        0.968, gt=0, le=1, description="Confidence counted in the pseudo-label weight."
    )
    pseudo_ignore_top: int = Field(15, ge=0, description="Rows at the top of a crop with weight 0.")
    pseudo_ignore_bottom: int = Field(120, ge=0, description="Rows at the bottom with weight 0.")
    color_jitter_strength: float = Field(
        0.2, ge=0, le=0.5, description="Strength s of the colour jitter."
    )
    color_jitter_p: float = Field(0.2, ge=0, le=1, description="DACS p: jitter when U(0,1) > p.")
    blur: bool = Field(True, description="Gaussian blur in the strong augmentation.")
    fd_lambda: float = Field(
        0.005, ge=0, description="ImageNet feature-distance weight (DAFormer)."
    )
    fd_classes: tuple[int, ...] = Field(
        (6, 7, 11, 12, 13, 14, 15, 16, 17, 18), description="Classes the feature distance covers."
    )
    fd_min_ratio: float = Field(0.75, gt=0, le=1, description="Min class share of a feature cell.")
    style_consistency_lambda: float = Field(
        0.0,
        ge=0,
        description="SHADE (dg-daformer, dg-hrda): weight of the consistency between the logits"
        " of the original and the style-hallucinated images (gta-dg presets: 10).",
    )
    style_interval: int = Field(
        4000,
        ge=1,
        description="SHADE: base styles recomputed from one pass over the source set at"
        " iteration 0 and every this many iterations (HRDA dg experiments.py:280-284).",
    )
    style_batch_size: int = Field(
        2, ge=1, description="SHADE: source images per batch of that pass (last partial dropped)."
    )
    style_images: Literal["process-share", "all"] = Field(
        "all",
        description="SHADE with several processes: each process takes its base styles from its"
        " share of the source set, the same shares every pass, and keeps them (process-share,"
        " published: HRDA dg train.py:136-144, a DistributedSampler; broadcast_buffers=False),"
        " or from the whole set, in an order drawn anew each pass (all, ours). One process: the"
        " whole set either way.",
    )

    # Where ours differs from the reference on purpose: the published presets name the
    # reference's value; the defaults keep ours, so saved run configs rerun as they ran.
    seg_loss_mean: Literal["all", "valid"] = Field(
        "valid",
        description="Segmentation losses: mean over all pixels, ignored ones counted as 0 "
        "(all, published: mmseg's reduction='mean') or over the non-ignored pixels (valid, ours).",
    )
    pseudo_weight_scope: Literal["batch", "image"] = Field(
        "image",
        description="Pseudo-label weight: the share of confident pixels over the whole target "
        "batch (batch, published) or over each image (image, ours).",
    )
    classmix_classes: Literal["batch", "image"] = Field(
        "image",
        description="ClassMix: half of the classes of the whole source label batch, 255 "
        "included (batch, published), or of each image's own labelled classes (image, ours).",
    )
    augment_gates: Literal["batch", "image"] = Field(
        "image",
        description="Strong augmentation: one colour-jitter gate and one blur gate per batch "
        "(batch, published) or per image (image, ours).",
    )
    ema_buffers: Literal["own", "average"] = Field(
        "average",
        description="EMA teacher: parameters averaged, the teacher's BatchNorm statistics its "
        "own (own, published) or averaged with the student's too (average, ours).",
    )

    # HRDA (Hoyer et al., ECCV 2022) and MIC (Hoyer et al., CVPR 2023); defaults are published.
    hrda_context_scale: float = Field(
        0.5, gt=0, lt=1, description="HRDA: scale of the context branch (the whole crop)."
    )
    hrda_detail_crop: tuple[int, int] = Field(
        (512, 512), description="HRDA: detail crop (width, height) at full resolution."
    )
    hrda_crop_divisible: int = Field(
        8, ge=1, description="HRDA: detail crop coordinates are multiples of this (feature stride)."
    )
    hrda_detail_last_offset: bool = Field(
        True,
        description="HRDA: the detail crop may take the last aligned offset (ours); published "
        "False: randint(0, (margin + 1) // divisible) leaves it out (a 512 detail never touches "
        "the bottom or right edge of a 1024 crop).",
    )
    hrda_detail_loss_weight: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="HRDA: weight of the detail loss (the fused loss gets the rest).",
    )
    hrda_context_loss_weight: float = Field(
        0.0, ge=0, lt=1, description="HRDA: weight of the context loss (published: 0)."
    )
    hrda_attention_channels: int = Field(
        256, ge=8, description="HRDA: width of the scale-attention head's embeddings."
    )
    hrda_attention_classwise: bool = Field(
        True, description="HRDA: one attention map per class (False: one for all classes)."
    )
    hrda_slide_stride: tuple[int, int] | None = Field(
        None,
        description="HRDA: stride of the detail windows at inference (pseudo-labels, eval); "
        "None: half the detail crop (overlapping).",
    )
    hrda_batched_slide: bool = Field(
        True, description="HRDA: detail windows in one forward pass (False: one at a time)."
    )
    hrda_shared_encoder_pass: bool = Field(
        True,
        description="HRDA at inference (the teacher's pseudo-labels, eval): the context image "
        "and the batched detail windows through the encoder in one batch where they have the "
        "same size and the encoder treats each image on its own (no BatchNorm over the batch, "
        "no active dropout or stochastic depth): one encoder pass fewer, the same features "
        "within float rounding. False: two encoder passes (the reference's).",
    )
    hrda_fusion: Literal["weight-then-upsample", "upsample-then-weight"] = Field(
        "upsample-then-weight",
        description="HRDA: weight-then-upsample (published: attention masked to the detail box "
        "and (1 - att) * context formed at the context's resolution, then both upsampled x2) "
        "or upsample-then-weight (ours before: attention and context upsampled first).",
    )
    hrda_aux_fusion: Literal["context", "fused"] = Field(
        "fused",
        description="HRDA: plugin outputs besides the logits from the context pass, upsampled "
        "x2 without attention (context, published) or fused with the attention like the "
        "logits (fused, ours before).",
    )
    hrda_plugin_losses: Literal["fused", "per-branch"] = Field(
        "per-branch",
        description="HRDA: which outputs give plugin losses. fused (published, Dispersion "
        "dispersion_head.py:253-297): the fused output's alone, unscaled by the fused "
        "segmentation's weight (with hrda_aux_fusion=context the context pass's maps; no "
        "detail-scale term); per-branch (ours): every weighted branch's (fused, detail, "
        "context), each scaled like its segmentation loss.",
    )
    mic_base: Literal["hrda", "daformer", "advseg", "minent"] = Field(
        "hrda",
        description="MIC: the method it extends (hrda; daformer at one resolution; advseg or "
        "minent, which get an EMA teacher of MIC's own, as MIC experiments.py id 81 runs them).",
    )
    mic_mask_block: int = Field(64, ge=1, description="MIC: side of the square mask blocks (px).")
    mic_mask_ratio: float = Field(0.7, ge=0, lt=1, description="MIC: share of blocks masked.")
    mic_lambda: float = Field(
        1.0, ge=0, description="MIC: weight of the masked-image loss (see mic_lambda_scope)."
    )
    mic_lambda_scope: Literal["fused-seg", "all"] = Field(
        "all",
        description="MIC: mic_lambda scales the masked branch's fused segmentation loss only "
        "(fused-seg, published: not its detail loss nor plugin losses) or every masked loss "
        "(all, ours).",
    )
    mic_mask_mode: Literal["separatetrgaug", "separate"] = Field(
        "separatetrgaug",
        description="MIC: which images are masked, as the reference's mask_mode names it "
        "(MIC masking_consistency_module.py:97-130): separatetrgaug, the colour-augmented "
        "target batch (GTA/Synthia -> Cityscapes); separate, the first half of the source "
        "batch with its labels and the first half of the target batch, not augmented "
        "(Cityscapes -> ACDC and Dark Zurich, experiments.py:401-405).",
    )

    # AdvSeg (Tsai et al., CVPR 2018) and MinEnt (Vu et al., CVPR 2019) as the MIC reference
    # runs them (seg/configs/_base_/uda/advseg.py, minent.py); defaults are published.
    adv_lambda: float = Field(
        0.001, ge=0, description="AdvSeg: weight of the generator's adversarial loss on target."
    )
    adv_loss: Literal["least-squares", "bce"] = Field(
        "least-squares",
        description="AdvSeg: discriminator loss, least-squares (published: discriminator_type "
        "'LS', MSE) or bce (AdaptSegNet's 'Vanilla', BCE with logits).",
    )
    disc_lr: float = Field(1e-4, gt=0, description="AdvSeg: discriminator's Adam learning rate.")
    disc_lr_power: float = Field(
        0.9, gt=0, description="AdvSeg: power of the discriminator's poly learning-rate decay."
    )
    disc_lr_min: float = Field(
        0.0, ge=0, description="AdvSeg: learning rate the discriminator's decay ends at."
    )
    disc_lr_iterations: int | None = Field(
        None,
        ge=1,
        description="AdvSeg: iterations N of the discriminator's decay (1 - i/N)^power; None: "
        "runtime.iterations (the reference's max_iters).",
    )
    disc_betas: tuple[float, float] = Field(
        (0.9, 0.99), description="AdvSeg: the discriminator's Adam betas."
    )
    ent_lambda: float = Field(
        0.001, ge=0, description="MinEnt: weight of the normalised entropy of the target."
    )

    @property
    def multi_resolution(self) -> bool:
        """Whether the method trains HRDA's multi-resolution model (hrda, dg-hrda, mic on
        hrda)."""
        return self.name in ("hrda", "dg-hrda") or (self.name == "mic" and self.mic_base == "hrda")

    @field_validator("hrda_detail_crop", "hrda_slide_stride")
    @classmethod
    def _positive_size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and min(value) < 1:
            raise ValueError("sizes must be positive")
        return value

    @model_validator(mode="after")
    def _fused_loss_weight_positive(self) -> MethodConfig:
        if self.hrda_detail_loss_weight + self.hrda_context_loss_weight >= 1:
            raise ValueError(
                "hrda_detail_loss_weight + hrda_context_loss_weight must be below 1 "
                "(the fused output gets 1 minus their sum)"
            )
        return self


class RunConfig(Section):
    """Everything one training run needs."""

    preset: str | None = Field(
        None, description="The preset the run started from (names its published result)."
    )
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    plugins: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Plugins by name, in order, each with its own settings."
    )
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
