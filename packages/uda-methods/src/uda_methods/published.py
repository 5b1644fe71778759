"""The published target mIoU of each preset, to print beside a run's own.

GTA5 rows are 19-class mIoU on Cityscapes val; Synthia rows the 16-class mean over the classes
Synthia has (published as mIoU19 x 19/16, which is the same number when the 3 missing classes
score 0). Cityscapes -> ACDC and Dark Zurich rows are the test servers' 19-class mIoU (HRDA
README table, MIC paper Table 2), while a run scores the val split: the line says so.
Domain-generalisation rows (``PUBLISHED_DG``) give each unseen target's val mIoU and their mean.
Sources: the DAFormer, HRDA and MIC papers, HRDA's extension paper (PAMI 2023, which reports
DAFormer and HRDA on ACDC and Dark Zurich) and the dispersion paper's results table.

The DeepLabV2 presets (``gta2cs-dlv2-*``, ``presets.DLV2_PRESETS``) have no row: the reference
repositories (lhoyer/DAFormer, HRDA, MIC: READMEs, configs, ``experiments.py``) publish no
DeepLabV2 result. The numbers are only in the papers' tables (MIC Table 1, ``experiments.py``
id 81; HRDA Table 2, HRDA ``experiments.py`` id 41; DAFormer Table 1), which no stored source
holds for checking, so none is copied here and those runs print no published number.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    metric: str
    """The report's key: ``mIoU`` or ``mIoU16``."""
    miou: float
    source: str
    benchmark: str = "GTA5 -> Cityscapes"
    test_server: bool = False
    """The number is the test server's; ours is the val split's."""
    digits: int = 1
    """Decimals the source gives (the DG table: 2)."""


_GTA, _SYNTHIA = "mIoU", "mIoU16"
_SYN, _ACDC, _DZ = "Synthia -> Cityscapes", "Cityscapes -> ACDC", "Cityscapes -> Dark Zurich"
_EXTENSION = "HRDA extension (PAMI 2023)"
PUBLISHED: dict[tuple[str, bool], Published] = {
    ("gta2cs-daformer", False): Published(_GTA, 68.3, "DAFormer (CVPR 2022)"),
    ("gta2cs-hrda", False): Published(_GTA, 73.8, "HRDA (ECCV 2022)"),
    ("gta2cs-mic", False): Published(_GTA, 75.9, "MIC (CVPR 2023)"),
    ("gta2cs-daformer", True): Published(_GTA, 70.2, "dispersion paper"),
    ("gta2cs-hrda", True): Published(_GTA, 75.1, "dispersion paper"),
    ("gta2cs-mic", True): Published(_GTA, 77.3, "dispersion paper"),
    ("synthia2cs-daformer", False): Published(_SYNTHIA, 60.9, "DAFormer (CVPR 2022)", _SYN),
    ("synthia2cs-hrda", False): Published(_SYNTHIA, 65.8, "HRDA (ECCV 2022)", _SYN),
    ("synthia2cs-mic", False): Published(_SYNTHIA, 67.3, "MIC (CVPR 2023)", _SYN),
    ("synthia2cs-daformer", True): Published(_SYNTHIA, 63.2, "dispersion paper", _SYN),
    ("synthia2cs-hrda", True): Published(_SYNTHIA, 67.8, "dispersion paper", _SYN),
    ("synthia2cs-mic", True): Published(_SYNTHIA, 70.3, "dispersion paper", _SYN),
    ("cs2acdc-daformer", False): Published(_GTA, 55.4, _EXTENSION, _ACDC, True),
    ("cs2acdc-hrda", False): Published(_GTA, 68.0, _EXTENSION, _ACDC, True),
    ("cs2acdc-mic", False): Published(_GTA, 70.4, "MIC (CVPR 2023)", _ACDC, True),
    ("cs2darkzurich-daformer", False): Published(_GTA, 53.8, _EXTENSION, _DZ, True),
    ("cs2darkzurich-hrda", False): Published(_GTA, 55.9, _EXTENSION, _DZ, True),
    ("cs2darkzurich-mic", False): Published(_GTA, 60.2, "MIC (CVPR 2023)", _DZ, True),
}
"""No published dispersion runs exist for ACDC and Dark Zurich; those runs print no number."""


def _dg(cityscapes: float, bdd100k: float, mapillary: float, mean: float) -> dict[str, Published]:
    def row(metric: str, miou: float, target: str) -> Published:
        return Published(metric, miou, _EXTENSION, f"GTA5 -> {target}, DG", digits=2)

    return {
        "cityscapes": row(_GTA, cityscapes, "Cityscapes"),
        "bdd100k": row(_GTA, bdd100k, "BDD100K"),
        "mapillary": row(_GTA, mapillary, "Mapillary"),
        "mean": row("mean_mIoU", mean, "Cityscapes, BDD100K, Mapillary"),
    }


PUBLISHED_DG: dict[str, dict[str, Published]] = {
    "gta-dg-daformer": _dg(52.65, 47.89, 54.66, 51.73),
    "gta-dg-hrda": _dg(57.41, 49.11, 61.16, 55.90),
}
"""Domain generalisation from GTA5, val mIoU per unseen target (by layout) and their mean
(HRDA ``dg`` branch ``README.md:118-119``, from the extension paper; means of three seeds).
No published dispersion DG runs exist."""
PUBLISHED |= {(name, False): targets["cityscapes"] for name, targets in PUBLISHED_DG.items()}
ALIASES = {"daformer": "gta2cs-daformer", "hrda": "gta2cs-hrda", "mic": "gta2cs-mic"}


def published_result(
    preset: str | None, method: str, plugins: list[str] | tuple[str, ...]
) -> Published | None:
    """The published number of a run from ``preset`` whose method is still the preset's own
    (another ``--method`` on a published preset is not a published experiment)."""
    name = ALIASES.get(preset or "", preset)
    if name is None or not name.endswith(f"-{method}"):
        return None
    return PUBLISHED.get((name, "dispersion" in plugins))


def compare_line(report_values: dict[str, float], published: Published) -> str:
    """``METRIC X; published Y (source, benchmark)``, values in percent."""
    ours = 100 * report_values[published.metric]
    where = f"{published.benchmark}, test server; ours: val" if published.test_server else ""
    return (
        f"{published.metric} {ours:.2f}; published {published.miou:.{published.digits}f} "
        f"({published.source}, "
        f"{where or published.benchmark})"
    )


def published_line(
    preset: str | None,
    method: str,
    plugins: list[str] | tuple[str, ...],
    report_values: dict[str, float],
) -> str | None:
    """``compare_line`` for a run that is a published experiment, else None."""
    published = published_result(preset, method, plugins)
    return None if published is None else compare_line(report_values, published)


def published_target_line(
    preset: str | None,
    method: str,
    plugins: list[str] | tuple[str, ...],
    target: str,
    report_values: dict[str, float],
) -> str | None:
    """``compare_line`` for one target of a published DG run (``target``: a layout, or
    ``mean`` with ``report_values["mean_mIoU"]``), else None."""
    if published_result(preset, method, plugins) is None:
        return None
    published = PUBLISHED_DG.get(preset or "", {}).get(target)
    return None if published is None else compare_line(report_values, published)
