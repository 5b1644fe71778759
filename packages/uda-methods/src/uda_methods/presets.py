"""Presets: plain functions returning a complete run config. No config inheritance.

``quick`` runs any method on the embedded domains on a CPU in minutes; ``daformer`` holds
every published DAFormer setting at full scale (GTA -> Cityscapes, one GPU). Each value's
source is listed in the package README.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from uda_core.config import EvalConfig, OptimConfig, RuntimeConfig, ScheduleConfig, merge
from uda_core.errors import UdaError
from uda_data.config import DataConfig, DatasetConfig, RCSConfig
from uda_methods.config import MethodConfig, ModelConfig, RunConfig


def quick() -> RunConfig:
    """The embedded synthetic domains at CPU scale: each method trains in minutes on 2 cores.

    Images are generated at 512x256 and resized to 256x128 (as the benchmarks resize GTA and
    Cityscapes); 2 source + 2 target images per iteration as published; a ResNet-18 with a
    light decoder from scratch (no ImageNet weights offline, hence no feature distance).
    Settings tied to the run length are scaled to 500 iterations (MIC with the dispersion
    plugin, auxiliary pre-training included, then trains in under 10 minutes): the EMA
    momentum of DACS (0.99) instead of 0.999 and a 25-iteration warm-up; the pseudo-label
    margins are DAFormer's 15 and 120 rows of a 512 crop scaled to 128 rows.
    """
    return RunConfig(
        data=DataConfig(
            source=DatasetConfig(layout="gta", root="@synthetic/source"),
            target=DatasetConfig(layout="cityscapes", root="@synthetic/target", split="train"),
            val=DatasetConfig(layout="cityscapes", root="@synthetic/target", split="val"),
            source_resize=(256, 128),
            target_resize=(256, 128),
            val_resize=(256, 128),
            crop=(256, 128),
            batch_size=2,
            workers=1,
            rcs=RCSConfig(temperature=0.01, min_pixels=200, min_crop_ratio=0.5),
            pseudo_margins=(4, 30, 4, 4),  # hrda/mic: (30, 240, 30, 30) of 2048x1024, scaled
        ),
        model=ModelConfig(encoder="resnet18", decoder="light", channels=96),
        method=MethodConfig(
            name="daformer",
            ema_alpha=0.99,
            pseudo_ignore_top=4,
            pseudo_ignore_bottom=30,
            fd_lambda=0.0,
            # hrda/mic: 512 of a 1024 crop and 64 px blocks, scaled to the 256x128 crop
            hrda_detail_crop=(128, 64),
            mic_mask_block=16,
        ),
        optim=OptimConfig(lr=1e-3, decoder_lr_mult=1.0),
        schedule=ScheduleConfig(warmup_iters=25),
        runtime=RuntimeConfig(
            iterations=500,
            eval_interval=250,
            checkpoint_interval=250,
            log_interval=25,
            debug_interval=250,
        ),
        eval=EvalConfig(mode="whole", batch_size=8),
    )


def quick_mit() -> RunConfig:
    """``quick`` with the DAFormer architecture at its smallest: MiT-B0 + DAFormer decoder
    (64 channels instead of 256, to stay CPU-sized). Slower than ``quick``'s ResNet-18."""
    cfg = quick()
    model = ModelConfig(encoder="mit_b0", decoder="daformer", channels=64)
    return cfg.model_copy(update={"model": model, "optim": OptimConfig(lr=6e-4)})


def _published_model() -> ModelConfig:
    """MiT-B5 + DAFormer decoder as published, mmcv's initialisation of the decoder included."""
    return ModelConfig(
        encoder="mit_b5", decoder="daformer", drop_path_rate=0.1, dropout=0.1, decoder_init="mmcv"
    )


PUBLISHED_HRDA: dict[str, Any] = {
    "hrda_fusion": "weight-then-upsample",
    "hrda_aux_fusion": "context",
    "hrda_detail_last_offset": False,
    "hrda_plugin_losses": "fused",
}
"""HRDA as published where ours differs: attention masked and context weighted at the
context's resolution, then both upsampled; plugin outputs from the context pass and their
losses taken once, unscaled, from the fused output; detail crops drawn as ``get_crop_bbox``
draws them. Named in every published preset (DAFormer's too, for
runs that switch the method to hrda or mic)."""


PUBLISHED_SELF_TRAINING: dict[str, Any] = {
    "seg_loss_mean": "all",
    "pseudo_weight_scope": "batch",
    "classmix_classes": "batch",
    "augment_gates": "batch",
    "ema_buffers": "own",
    "mic_lambda_scope": "fused-seg",
}
"""DACS/DAFormer/MIC's self-training as published where ours differs: losses averaged over
every pixel, one pseudo-label weight per batch, ClassMix from the batch's classes, one
augmentation gate per batch, the teacher's own BatchNorm statistics, mic_lambda on the fused
segmentation loss only (README table)."""

PUBLISHED_OPTIM = OptimConfig(
    lr=6e-5, decoder_lr_mult=10.0, weight_decay=0.01, betas=(0.9, 0.999), no_decay_scope="encoder"
)
"""AdamW as published: decoder lr x10 and weight decay on every decoder parameter."""


def daformer() -> RunConfig:
    """DAFormer on GTA -> Cityscapes with every published setting (see the README table)."""
    return RunConfig(
        data=DataConfig(
            source=DatasetConfig(layout="gta", root="data/gta"),
            target=DatasetConfig(layout="cityscapes", root="data/cityscapes", split="train"),
            val=DatasetConfig(layout="cityscapes", root="data/cityscapes", split="val"),
            source_resize=(1280, 720),
            target_resize=(1024, 512),
            val_resize=(1024, 512),
            resize_mode="keep_ratio",
            crop=(512, 512),
            cat_max_ratio=0.75,
            flip_prob=0.5,
            batch_size=2,
            workers=4,
            rcs=RCSConfig(temperature=0.01, min_pixels=3000, min_crop_ratio=0.5),
        ),
        model=_published_model(),
        method=MethodConfig(
            name="daformer",
            ema_alpha=0.999,
            pseudo_threshold=0.968,
            pseudo_ignore_top=15,
            pseudo_ignore_bottom=120,
            color_jitter_strength=0.2,
            color_jitter_p=0.2,
            blur=True,
            fd_lambda=0.005,
            fd_min_ratio=0.75,
            **PUBLISHED_HRDA,
            **PUBLISHED_SELF_TRAINING,
        ),
        optim=PUBLISHED_OPTIM.model_copy(),
        schedule=ScheduleConfig(warmup_iters=1500, warmup_ratio=1e-6, power=1.0),
        runtime=RuntimeConfig(
            iterations=40000, eval_interval=4000, checkpoint_interval=4000, seed=0
        ),
        eval=EvalConfig(mode="whole", batch_size=1),
    )


def hrda() -> RunConfig:
    """HRDA on GTA -> Cityscapes at high resolution, every published setting (README)."""
    return RunConfig(
        data=DataConfig(
            source=DatasetConfig(layout="gta", root="data/gta"),
            target=DatasetConfig(layout="cityscapes", root="data/cityscapes", split="train"),
            val=DatasetConfig(layout="cityscapes", root="data/cityscapes", split="val"),
            source_resize=(2560, 1440),
            target_resize=(2048, 1024),
            val_resize=(2048, 1024),
            resize_mode="keep_ratio",
            crop=(1024, 1024),
            cat_max_ratio=0.75,
            flip_prob=0.5,
            batch_size=2,
            workers=4,
            rcs=RCSConfig(temperature=0.01, min_pixels=3000, min_crop_ratio=2.0),
            pseudo_margins=(30, 240, 30, 30),
        ),
        model=_published_model(),
        method=MethodConfig(
            name="hrda",
            ema_alpha=0.999,
            pseudo_threshold=0.968,
            pseudo_ignore_top=0,
            pseudo_ignore_bottom=0,
            color_jitter_strength=0.2,
            color_jitter_p=0.2,
            blur=True,
            fd_lambda=0.005,
            fd_min_ratio=0.75,
            hrda_context_scale=0.5,
            hrda_detail_crop=(512, 512),
            hrda_crop_divisible=8,
            hrda_detail_loss_weight=0.1,
            hrda_context_loss_weight=0.0,
            hrda_attention_channels=256,
            hrda_attention_classwise=True,
            hrda_slide_stride=(256, 256),
            hrda_batched_slide=True,
            **PUBLISHED_HRDA,
            **PUBLISHED_SELF_TRAINING,
        ),
        optim=PUBLISHED_OPTIM.model_copy(),
        schedule=ScheduleConfig(warmup_iters=1500, warmup_ratio=1e-6, power=1.0),
        runtime=RuntimeConfig(
            iterations=40000, eval_interval=4000, checkpoint_interval=4000, seed=0
        ),
        eval=EvalConfig(
            mode="slide", crop_size=(1024, 1024), stride=(512, 512), batch_size=1, batched=True
        ),
    )


def _with_mic(cfg: RunConfig, base: str, block: int, **settings: Any) -> RunConfig:
    """``cfg`` with MIC's masked image consistency on ``base``: ``block`` px blocks, ratio 0.7,
    loss weight 1 (MIC ``experiments.py``: ``mask_lambda = 1``, line 387; ``mask_ratio`` 0.7 in
    the published runs, e.g. line 428), and the other method ``settings``."""
    cfg.method = cfg.method.model_copy(
        update={
            "name": "mic",
            "mic_base": base,
            "mic_mask_block": block,
            "mic_mask_ratio": 0.7,
            "mic_lambda": 1.0,
            **settings,
        }
    )
    return cfg


def mic() -> RunConfig:
    """MIC on HRDA: the ``hrda`` preset plus masked image consistency (64 px blocks, ratio
    0.7, loss weight 1; the teacher's alpha and threshold shared) and seed 2, the run MIC's
    author reports as the median."""
    cfg = _with_mic(hrda(), "hrda", 64)
    cfg.runtime = cfg.runtime.model_copy(update={"seed": 2})
    return cfg


def _from_synthia(cfg: RunConfig, resize: tuple[int, int]) -> RunConfig:
    """A GTA -> Cityscapes preset with Synthia RAND-CITYSCAPES as the source, resized as the
    Synthia configs of DAFormer (1280x760) and HRDA/MIC (2560x1520) do."""
    source = DatasetConfig(layout="synthia", root="data/synthia")
    cfg.data = cfg.data.model_copy(update={"source": source, "source_resize": resize})
    return cfg


def synthia_daformer() -> RunConfig:
    """DAFormer on Synthia -> Cityscapes (scored on the 16 Synthia classes, mIoU16)."""
    return _from_synthia(daformer(), (1280, 760))


def synthia_hrda() -> RunConfig:
    """HRDA on Synthia -> Cityscapes at high resolution."""
    return _from_synthia(hrda(), (2560, 1520))


def synthia_mic() -> RunConfig:
    """MIC (HRDA) on Synthia -> Cityscapes, seed 2 as ``mic``."""
    return _from_synthia(mic(), (2560, 1520))


ACDC = DatasetConfig(layout="acdc", root="data/acdc", split="train")
DARK_ZURICH = DatasetConfig(layout="darkzurich", root="data/dark_zurich", split="train")


def _from_cityscapes(cfg: RunConfig, target: DatasetConfig, scale: int) -> RunConfig:
    """A GTA -> Cityscapes preset adapted from Cityscapes to ``target`` (ACDC, four conditions
    together; Dark Zurich, night) as the reference's ``uda_cityscapes[HR]_to_{acdc,
    darkzurich}[HR]_*.py`` datasets do: Cityscapes train as the source, resized to 1024x512
    (``scale`` 2: 2048x1024), the target's 1920x1080 images to 960x540 (1920x1080) for
    training and validation on its val split; rare class sampling unchanged; no pseudo-label
    margins (HRDA ``experiments.py:544``, MIC ``experiments.py:409``: ACDC and Dark Zurich have
    no rectification artefacts)."""
    source = DatasetConfig(layout="cityscapes", root="data/cityscapes", split="train")
    val = target.model_copy(update={"split": "val"})
    cfg.data = cfg.data.model_copy(
        update={
            "source": source,
            "target": target.model_copy(),
            "val": val,
            "source_resize": (1024 * scale, 512 * scale),
            "target_resize": (960 * scale, 540 * scale),
            "val_resize": (960 * scale, 540 * scale),
            "pseudo_margins": None,
        }
    )
    cfg.method = cfg.method.model_copy(update={"pseudo_ignore_top": 0, "pseudo_ignore_bottom": 0})
    return cfg


def _separate_masking(cfg: RunConfig) -> RunConfig:
    """MIC as run on Cityscapes -> ACDC and Dark Zurich (MIC ``experiments.py:401-405``):
    ``mask_mode='separate'``, seed 0 (the reference runs seeds 0-2 and does not say which
    checkpoint it released)."""
    cfg.method = cfg.method.model_copy(update={"mic_mask_mode": "separate"})
    cfg.runtime = cfg.runtime.model_copy(update={"seed": 0})
    return cfg


def acdc_daformer() -> RunConfig:
    """DAFormer on Cityscapes -> ACDC at 512x512 crops (MIC
    ``uda_cityscapes_to_acdc_512x512.py``; scored on ACDC test by the server)."""
    return _from_cityscapes(daformer(), ACDC, 1)


def acdc_hrda() -> RunConfig:
    """HRDA on Cityscapes -> ACDC at high resolution (HRDA ``experiments.py`` id 49)."""
    return _from_cityscapes(hrda(), ACDC, 2)


def acdc_mic() -> RunConfig:
    """MIC (HRDA) on Cityscapes -> ACDC (MIC ``experiments.py`` id 80)."""
    return _separate_masking(_from_cityscapes(mic(), ACDC, 2))


def darkzurich_daformer() -> RunConfig:
    """DAFormer on Cityscapes -> Dark Zurich (night) at 512x512 crops."""
    return _from_cityscapes(daformer(), DARK_ZURICH, 1)


def darkzurich_hrda() -> RunConfig:
    """HRDA on Cityscapes -> Dark Zurich at high resolution (HRDA ``experiments.py`` id 49)."""
    return _from_cityscapes(hrda(), DARK_ZURICH, 2)


def darkzurich_mic() -> RunConfig:
    """MIC (HRDA) on Cityscapes -> Dark Zurich (MIC ``experiments.py`` id 80)."""
    return _separate_masking(_from_cityscapes(mic(), DARK_ZURICH, 2))


DG_TARGETS = [
    DatasetConfig(layout="bdd100k", root="data/bdd100k", split="val"),
    DatasetConfig(layout="mapillary", root="data/mapillary", split="validation"),
]
"""The unseen domains a DG run is scored on besides Cityscapes val (HRDA dg ``tools/test.py``
``--dataset BDD100K``, ``--dataset Mapillary``: their val splits through the config's test
pipeline, so resized like Cityscapes val)."""

DG_SHADE: dict[str, Any] = {
    "style_consistency_lambda": 10.0,
    "style_interval": 4000,
    "style_batch_size": 2,
    "style_images": "process-share",
}
"""SHADE as the published DG runs train it (HRDA dg ``experiments.py:271-284``, with
``shade=True`` in both runs of id 50, ``experiments.py:601-603``): consistency weight 10,
base styles refreshed every 4000 iterations from the source set in batches of 2 (with
several processes, each from its share: ``train.py:136-144``); the hallucination's Dirichlet
concentration 0.0156 is ``model.style_hallucination``."""


def _domain_generalisation(cfg: RunConfig, method: str) -> RunConfig:
    """A GTA -> Cityscapes preset trained on GTA alone as HRDA's DG branch does (``experiments.
    py`` id 50): DACS in source-only mode (``dacs_fdthings_srconly.py``: the thing-class
    feature distance kept), rare class sampling, the ``gtaCAug`` source pipeline (mmseg's
    ``PhotoMetricDistortion`` after the crop, ``uda_gtaCAug_to_cityscapes_512x512.py:18``),
    SHADE's style hallucination and consistency (``DG_SHADE``); scored on Cityscapes val and,
    by ``uda eval``, on BDD100K and Mapillary val (``DG_TARGETS``). No target images are
    read; no pseudo-label margins."""
    cfg.data = cfg.data.model_copy(
        update={"source_photometric": True, "extra_val": DG_TARGETS, "pseudo_margins": None}
    )
    cfg.model = cfg.model.model_copy(update={"style_hallucination": 0.0156})
    cfg.method = cfg.method.model_copy(update={"name": method, **DG_SHADE})
    return cfg


def dg_daformer() -> RunConfig:
    """DAFormer for domain generalisation at 512x512 crops, whole-image inference (HRDA dg
    ``experiments.py:601``, ``gtaCAug`` 512x512)."""
    return _domain_generalisation(daformer(), "dg-daformer")


def dg_hrda() -> RunConfig:
    """HRDA for domain generalisation at high resolution with a 384x384 detail crop (HRDA dg
    ``experiments.py:603``: ``hrda1-384-0.1``, "necessary to fit SHADE into 24 GB"), its
    detail windows at inference 192 apart (half the crop) and slide inference over 1024x1024
    windows (``gtaCAugHR`` 1024x1024)."""
    cfg = _domain_generalisation(hrda(), "dg-hrda")
    cfg.method = cfg.method.model_copy(
        update={"hrda_detail_crop": (384, 384), "hrda_slide_stride": (192, 192)}
    )
    return cfg


# DeepLabV2 (ResNet-101): the classic baselines, and DAFormer, HRDA and MIC on them, as HRDA
# ``experiments.py`` id 41 (HRDA Table 2) and MIC ``experiments.py`` id 81 (MIC Table 1) run them.


def _dlv2_model() -> ModelConfig:
    """``dlv2red`` + ``r101v1c``: mmseg's ResNetV1c-101 (timm ``resnet101c``), dilated to stride
    8, and the DeepLabV2 classifier with dilations 6 and 12 only (``deeplabv2red_r50-d8.py``),
    no dropout (``DLV2Head``: ``dropout_ratio=0``). Its ImageNet weights, the reference's
    ``open-mmlab://resnet101_v1c``, go to ``model.pretrained``."""
    return ModelConfig(
        encoder="resnet101_v1c", decoder="deeplabv2", deeplabv2_dilations=(6, 12), dropout=0.0
    )


DLV2_SGD = OptimConfig(
    kind="sgd",
    lr=0.0025,
    momentum=0.9,
    weight_decay=5e-4,
    decoder_lr_mult=1.0,
    no_decay_norm_and_pos=False,
)
"""AdvSeg and MinEnt's optimiser (``sgd = ('sgd', 0.0025, 'poly10warm', False)``,
``schedules/sgd.py``): SGD, momentum 0.9, weight decay 5e-4 on every parameter, no decoder
multiplier (``pmult`` False), under the same warm-up + poly schedule."""

DLV2_ADAMW = PUBLISHED_OPTIM.model_copy(update={"no_decay_norm_and_pos": False})
"""DAFormer/HRDA/MIC's AdamW on a ResNet: the MiT-only custom keys (``pos_block``, ``norm``
without decay, ``experiments.py:293-295``) do not apply, so BatchNorm decays too."""


def _on_dlv2(cfg: RunConfig, optim: OptimConfig) -> RunConfig:
    cfg.model = _dlv2_model()
    cfg.optim = optim.model_copy()
    return cfg


def _baseline(method: str, with_mic: bool = False) -> RunConfig:
    """AdvSeg or MinEnt on DeepLabV2 at 512x512 crops (HRDA ``experiments.py:389,391``): the
    ``gtaCAug`` source (mmseg's ``PhotoMetricDistortion``), no rare class sampling, SGD, the
    published adversarial / entropy settings (``configs/_base_/uda/advseg.py``, ``minent.py``:
    least-squares discriminator, Adam 1e-4 with betas (0.9, 0.99) decayed with power 0.9,
    lambda_adv 0.001; lambda_ent 0.001), mmseg's loss mean over all pixels (the other
    published settings of the ``daformer`` preset stay, for runs that switch the method).

    ``with_mic``: MIC on it (MIC ``experiments.py:417-454``): the plain GTA source, an EMA
    teacher of MIC's own (alpha 0.999, threshold 0.968, no pseudo-label margins: ``plcrop``
    False), the colour-augmented target masked in 32 px blocks (half of 64 at half the
    resolution) at ratio 0.7, loss weight 1."""
    cfg = _on_dlv2(daformer(), DLV2_SGD)
    cfg.data = cfg.data.model_copy(update={"rcs": None, "source_photometric": not with_mic})
    cfg.method = cfg.method.model_copy(
        update={
            "name": method,
            "adv_lambda": 0.001,
            "adv_loss": "least-squares",
            "disc_lr": 1e-4,
            "disc_lr_power": 0.9,
            "disc_lr_min": 0.0,
            "disc_betas": (0.9, 0.99),
            "ent_lambda": 0.001,
        }
    )
    if not with_mic:
        return cfg
    teacher = {"ema_alpha": 0.999, "pseudo_threshold": 0.968}
    margins = {"pseudo_ignore_top": 0, "pseudo_ignore_bottom": 0}
    masking = {"mic_mask_mode": "separatetrgaug", **PUBLISHED_SELF_TRAINING}
    return _with_mic(cfg, method, 32, **teacher, **margins, **masking)


def dlv2_advseg() -> RunConfig:
    """AdvSeg on DeepLabV2, GTA -> Cityscapes (HRDA ``experiments.py:389``)."""
    return _baseline("advseg")


def dlv2_minent() -> RunConfig:
    """MinEnt on DeepLabV2, GTA -> Cityscapes (HRDA ``experiments.py:391``)."""
    return _baseline("minent")


def dlv2_advseg_mic() -> RunConfig:
    """MIC(AdvSeg) on DeepLabV2 (MIC ``experiments.py:430``)."""
    return _baseline("advseg", with_mic=True)


def dlv2_minent_mic() -> RunConfig:
    """MIC(MinEnt) on DeepLabV2 (MIC ``experiments.py:431``)."""
    return _baseline("minent", with_mic=True)


def dlv2_daformer() -> RunConfig:
    """DAFormer's self-training on DeepLabV2 at 512x512 crops (HRDA ``experiments.py:395``):
    the ``daformer`` preset with the DeepLabV2 model and AdamW as on a ResNet."""
    return _on_dlv2(daformer(), DLV2_ADAMW)


def dlv2_daformer_mic() -> RunConfig:
    """MIC(DAFormer) on DeepLabV2 (MIC ``experiments.py:433``): 32 px blocks at 512x512."""
    return _with_mic(dlv2_daformer(), "daformer", 32)


def dlv2_hrda() -> RunConfig:
    """HRDA on DeepLabV2 (HRDA ``experiments.py:396``: ``hrda1-512-0.1_dlv2red``), the
    ``hrda`` preset's data and settings; the scale attention is a second DeepLabV2 classifier
    (``hrda_head.py:66-70``)."""
    return _on_dlv2(hrda(), DLV2_ADAMW)


def dlv2_mic() -> RunConfig:
    """MIC(HRDA) on DeepLabV2 (MIC ``experiments.py:434``): 64 px blocks, seed 0."""
    cfg = _on_dlv2(mic(), DLV2_ADAMW)
    cfg.runtime = cfg.runtime.model_copy(update={"seed": 0})
    return cfg


DLV2_PRESETS: dict[str, Callable[[], RunConfig]] = {
    "gta2cs-dlv2-advseg": dlv2_advseg,
    "gta2cs-dlv2-minent": dlv2_minent,
    "gta2cs-dlv2-advseg-mic": dlv2_advseg_mic,
    "gta2cs-dlv2-minent-mic": dlv2_minent_mic,
    "gta2cs-dlv2-daformer": dlv2_daformer,
    "gta2cs-dlv2-daformer-mic": dlv2_daformer_mic,
    "gta2cs-dlv2-hrda": dlv2_hrda,
    "gta2cs-dlv2-mic": dlv2_mic,
}


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "quick": quick,
    "quick-mit": quick_mit,
    "gta2cs-daformer": daformer,
    "gta2cs-hrda": hrda,
    "gta2cs-mic": mic,
    "synthia2cs-daformer": synthia_daformer,
    "synthia2cs-hrda": synthia_hrda,
    "synthia2cs-mic": synthia_mic,
    "cs2acdc-daformer": acdc_daformer,
    "cs2acdc-hrda": acdc_hrda,
    "cs2acdc-mic": acdc_mic,
    "cs2darkzurich-daformer": darkzurich_daformer,
    "cs2darkzurich-hrda": darkzurich_hrda,
    "cs2darkzurich-mic": darkzurich_mic,
    "gta-dg-daformer": dg_daformer,
    "gta-dg-hrda": dg_hrda,
    "daformer": daformer,
    "hrda": hrda,
    "mic": mic,
    **DLV2_PRESETS,
}
DEFAULT_PRESET = "quick"


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise UdaError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


def _quick_dispersion() -> dict[str, Any]:
    """The dispersion plugin at CPU scale, with our head and auxiliary network: a ResNet-10-T
    auxiliary network (timm) at the 256x128 crop, pre-trained for 200 iterations of 8 source
    images (about a minute on 2 cores) and run with its stored BatchNorm statistics, and a
    head of a third of the decoder's width whose dilations suit the quick feature maps: they
    are 16x32, where the published 18 and 24 (chosen for 128x128 maps) would read only
    padding above and below every pixel. The head sums all its classifier branches and
    hands its refined features to the decoder's own classifier. Its losses are ours too: the
    initial segmentation's cross-entropy over the non-ignored pixels like uda-methods'
    default ``seg_loss_mean``, BerHu's threshold detached and, with HRDA, every branch's
    head losses weighted like its segmentation (uda-methods' default)."""
    auxiliary = {
        "architecture": "timm",
        "backbone": "resnet10t",
        "batchnorm": "running",
        "input_size": [256, 128],
        "iterations": 200,
        "batch_size": 8,
        "warmup_iters": 20,
        "checkpoint_interval": 100,
    }
    head = {
        "head_width": 32,
        "dilations": [1, 2, 3, 4],
        "classifier_branches": "all",
        "final_segmentation": "host",
        "head_init": "pytorch",
        "seg_init_mean": "valid",
        "berhu_detach_threshold": True,
    }
    return {"plugins": {"dispersion": {**head, "auxiliary": auxiliary}}}


def _published_dispersion(seed: int, source_resize: tuple[int, int], beta: float) -> dict[str, Any]:
    """The settings of a published dispersion config (Dispersion ``configs/dispersion/``)
    over the method's preset: its ``seed``, its source ``Resize`` scale (kept ratio, as the
    host preset resizes), its ``beta``, and what the six configs share: 60k iterations, one
    checkpoint at the end (``checkpoint_config`` interval 60000), evaluation every 4000, the
    published head and auxiliary network named explicitly (``DispDAFormerHead``,
    ``AuxiliaryResNet50`` with training-mode BatchNorm) and their losses (the initial
    segmentation's cross-entropy averaged over all pixels, BerHu's threshold not detached,
    with HRDA the head's losses from the fused output alone, which holds the context pass's
    maps), the decoder's fusion initialised N(0, 0.01) like the head, which holds it in the
    reference (``decoder_init="normal"``), and DDP's unused-parameter search that the
    published configs switch on (``find_unused_parameters = True``): the published
    classifiers' last two branches and the decoder's own classifier get no gradient.

    The published auxiliary networks (``pretrained/gta_auxiliary.pth``,
    ``synthia_auxiliary.pth``) are not downloadable; given as
    ``plugins.dispersion.auxiliary.checkpoint`` they are used as they are, else one is
    pre-trained on the source."""
    head = {
        "head_width": None,
        "dilations": [6, 12, 18, 24],
        "classifier_branches": "first_two",
        "final_segmentation": "head",
        "head_init": "normal",
        "seg_init_mean": "all",
        "berhu_detach_threshold": False,
    }
    auxiliary = {"architecture": "published", "batchnorm": "batch", "input_size": [512, 512]}
    runtime = {
        "iterations": 60000,
        "checkpoint_interval": 60000,
        "eval_interval": 4000,
        "seed": seed,
        "find_unused_parameters": True,
    }
    return {
        "data": {"source_resize": list(source_resize)},
        "model": {"decoder_init": "normal"},
        "method": {"hrda_plugin_losses": "fused"},
        "runtime": runtime,
        "plugins": {"dispersion": {**head, "beta": beta, "auxiliary": auxiliary}},
    }


_DISPERSION_RUNS: dict[str, tuple[int, tuple[int, int], float]] = {
    "gta2cs-daformer": (0, (1024, 512), 0.6),
    "gta2cs-hrda": (1, (2048, 1024), 0.6),
    "gta2cs-mic": (2, (2048, 1024), 0.6),
    "synthia2cs-daformer": (0, (1280, 760), 0.3),
    "synthia2cs-hrda": (1, (2560, 1520), 0.3),
    "synthia2cs-mic": (2, (2560, 1520), 0.3),
}
"""(seed, source resize, beta) of each published dispersion config: ``gta2cs_daformer_``,
``gtaHR2csHR_hrda_``, ``gtaHR2csHR_mic_``, ``synthia2cs_daformer_``, ``synthiaHR2csHR_hrda_``
and ``synthiaHR2csHR_mic_dispersion.py`` (``seed``, ``beta_disagreement_multiplier``) and
their datasets' ``Resize(img_scale=...)`` (``configs/_base_/datasets/*_disp_*.py:19``)."""
_DISPERSION_RUNS |= {
    f"cs2{target}-{method}": (seed, resize, 0.6)
    for target in ("acdc", "darkzurich")
    for method, seed, resize in (
        ("daformer", 0, (1024, 512)),
        ("hrda", 0, (2048, 1024)),
        ("mic", 0, (2048, 1024)),
    )
}
"""No reference ran the dispersion plugin from Cityscapes: these runs keep their host preset's
seed and source resize and take the published settings shared by the six configs, with the
plugin's default beta (GTA's 0.6)."""
_DISPERSION_RUNS |= {
    "daformer": _DISPERSION_RUNS["gta2cs-daformer"],
    "hrda": _DISPERSION_RUNS["gta2cs-hrda"],
    "mic": _DISPERSION_RUNS["gta2cs-mic"],
}

PLUGIN_PROFILES: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {
    ("quick", "dispersion"): _quick_dispersion,
    ("quick-mit", "dispersion"): _quick_dispersion,
    **{
        (name, "dispersion"): partial(_published_dispersion, *run)
        for name, run in _DISPERSION_RUNS.items()
    },
}
"""Settings a preset takes when a plugin is enabled, applied over the preset and under the
user's config file, flags and overrides."""


def plugin_profile(preset_name: str, plugins: list[str]) -> dict[str, Any]:
    """The overlay of ``PLUGIN_PROFILES`` for these plugins on this preset (may be empty)."""
    out: dict[str, Any] = {}
    for name in plugins:
        profile = PLUGIN_PROFILES.get((preset_name, name))
        if profile is not None:
            out = merge(out, profile())
    return out
