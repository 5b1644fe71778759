"""The CUDA backend equals the CPU backend. Runs only where a GPU is present."""

import numpy as np
import pytest
import torch

import uda_dispersion
from uda_dispersion import dispersion_map, instances

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def random_scene(b, h, w, block, classes=6, ignored=0.1, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, (b, -(-h // block), -(-w // block)))
    labels = labels.repeat(block, 1).repeat(block, 2)[:, :h, :w]
    labels[rng.random(labels.shape) < ignored] = 255
    depth = rng.random((b, h, w)).astype(np.float32)
    return torch.from_numpy(labels), torch.from_numpy(depth)


def test_build_has_cuda():
    assert uda_dispersion.cuda_built()


@pytest.mark.parametrize(
    ("b", "h", "w", "block"),
    [(1, 1, 1, 1), (2, 17, 33, 1), (3, 64, 48, 4), (2, 512, 512, 16), (2, 1024, 1024, 32)],
)
@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("weighting", ["uniform", "area"])
def test_cuda_equals_cpu(b, h, w, block, connectivity, weighting):
    labels, depth = random_scene(b, h, w, block)
    kwargs = {"connectivity": connectivity, "weighting": weighting, "min_area": 4}
    cpu = instances(labels, depth, **kwargs)
    gpu = instances(labels.cuda(), depth.cuda(), **kwargs)
    torch.testing.assert_close(gpu.ids.cpu(), cpu.ids)
    for name in ("batch", "class_id", "area"):
        torch.testing.assert_close(getattr(gpu.table, name).cpu(), getattr(cpu.table, name))
    torch.testing.assert_close(gpu.table.centroid.cpu(), cpu.table.centroid, rtol=0, atol=1e-9)
    torch.testing.assert_close(gpu.table.dispersion.cpu(), cpu.table.dispersion, rtol=0, atol=1e-5)
    out = dispersion_map(labels.cuda(), depth.cuda(), **kwargs)
    assert out.device.type == "cuda"
    torch.testing.assert_close(
        out.cpu(), dispersion_map(labels, depth, **kwargs), rtol=0, atol=1e-5
    )


def test_one_huge_instance_and_checkerboard_on_cuda():
    huge = torch.zeros(2, 1024, 1024, dtype=torch.int64)
    huge[:, 500:540, 10:90] = 1
    board = torch.from_numpy((np.indices((256, 256)).sum(0) % 2)[None])
    for labels, kwargs in ((huge, {}), (board, {"connectivity": 4, "min_area": 1})):
        depth = torch.rand(labels.shape)
        torch.testing.assert_close(
            dispersion_map(labels.cuda(), depth.cuda(), **kwargs).cpu(),
            dispersion_map(labels, depth, **kwargs),
            rtol=0,
            atol=1e-5,
        )


def test_runs_on_the_current_stream():
    labels, depth = random_scene(2, 256, 256, 8)
    expected = dispersion_map(labels, depth)
    stream = torch.cuda.Stream()
    labels, depth = labels.cuda(), depth.cuda()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = dispersion_map(labels, depth)
    stream.synchronize()
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=1e-5)


def test_bad_input_on_cuda_raises_value_error():
    labels = torch.full((4, 4), -2, device="cuda")
    with pytest.raises(ValueError, match="found -2"):
        dispersion_map(labels, torch.zeros(4, 4, device="cuda"))
    with pytest.raises(ValueError, match="NaN"):
        dispersion_map(labels.abs(), torch.full((4, 4), float("nan"), device="cuda"))


def test_compiled_on_cuda():
    labels, depth = (x.cuda() for x in random_scene(2, 64, 64, 4))

    def shifted(labels, depth):
        return dispersion_map(labels, depth) + 1

    compiled = torch.compile(shifted, fullgraph=True)
    torch.testing.assert_close(compiled(labels, depth), shifted(labels, depth))


def test_max_instances_on_cuda_raises_the_cpu_error_and_none_lifts_it():
    labels, depth = random_scene(2, 96, 96, 1, classes=19, ignored=0.0)
    kwargs = {"min_area": 1, "max_instances": None}
    torch.testing.assert_close(
        dispersion_map(labels.cuda(), depth.cuda(), **kwargs).cpu(),
        dispersion_map(labels, depth, **kwargs),
        rtol=0,
        atol=1e-5,
    )
    messages = []
    for device in ("cpu", "cuda"):
        with pytest.raises(ValueError, match="more than max_instances=100") as raised:
            dispersion_map(labels.to(device), depth.to(device), min_area=1, max_instances=100)
        messages.append(str(raised.value))
    assert messages[0] == messages[1]
