import math

import pytest
import torch
from torch import nn

from uda_core.config import EvalConfig
from uda_core.evaluation import IoUReport, confusion_matrix, predict_logits

NAMES = ("a", "b", "c", "d")


def test_iou_from_a_hand_computed_confusion_matrix():
    # rows: label, columns: prediction
    conf = torch.tensor([[5, 1, 0, 0], [2, 3, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]])
    report = IoUReport.from_confusion(conf, NAMES, {"ab": (0, 1), "cd": (2, 3)})
    assert report.iou[0] == pytest.approx(5 / (5 + 1 + 2))
    assert report.iou[1] == pytest.approx(3 / (3 + 2 + 1))
    assert report.iou[2] == 0.0  # predicted once, never labelled
    assert report.iou[3] == 0.0  # labelled once, never predicted
    assert report.miou == pytest.approx((5 / 8 + 3 / 6) / 4)
    assert report.subsets["ab"] == pytest.approx((5 / 8 + 3 / 6) / 2)
    assert report.accuracy == pytest.approx(8 / 12)


def test_absent_class_is_nan_and_left_out_of_the_mean():
    conf = torch.tensor([[4, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    report = IoUReport.from_confusion(conf, NAMES)
    assert math.isnan(report.iou[2]) and math.isnan(report.iou[3])
    assert report.miou == 1.0


class PixelwiseModel(nn.Module):
    """Logits depend only on each pixel, so every inference mode must agree."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


def test_sliding_window_equals_whole_image_for_a_pixelwise_model():
    torch.manual_seed(0)
    model = PixelwiseModel().eval()
    image = torch.randn(2, 3, 50, 70)
    whole = predict_logits(model, image, EvalConfig(mode="whole"))
    slide = predict_logits(
        model, image, EvalConfig(mode="slide", crop_size=(32, 24), stride=(20, 16))
    )
    assert torch.allclose(whole, slide, atol=1e-5)


def test_confusion_matrix_ignores_255_and_scores_at_label_size():
    model = PixelwiseModel().eval()
    image = torch.randn(1, 3, 8, 8)
    pred = predict_logits(model, image, EvalConfig()).argmax(1)
    label = torch.nn.functional.interpolate(pred[None].float(), (16, 16), mode="nearest")[0].long()
    label[:, :4] = 255
    conf = confusion_matrix(
        model, [{"image": image, "label": label}], 4, EvalConfig(), torch.device("cpu")
    )
    assert conf.sum() == 16 * 12
