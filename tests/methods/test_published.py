"""The published number printed beside ours is the one of the run's own experiment."""

from uda_methods.published import compare_line, published_result


def test_published_numbers_follow_preset_method_and_plugin():
    assert published_result("gta2cs-mic", "mic", []).miou == 75.9
    assert published_result("gta2cs-mic", "mic", ["dispersion"]).miou == 77.3
    assert published_result("mic", "mic", ["dispersion"]).miou == 77.3
    synthia = published_result("synthia2cs-hrda", "hrda", ["dispersion"])
    assert (synthia.metric, synthia.miou) == ("mIoU16", 67.8)
    assert published_result("gta2cs-mic", "daformer", []) is None  # not the published run
    assert published_result("quick", "mic", []) is None
    assert published_result(None, "mic", []) is None


def test_compare_line_reads_the_metric_of_the_benchmark():
    line = compare_line({"mIoU": 0.5, "mIoU16": 0.6}, published_result("synthia2cs-mic", "mic", []))
    assert line.startswith("mIoU16 60.00; published 67.3 (MIC (CVPR 2023), Synthia -> Cityscapes)")
