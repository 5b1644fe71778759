"""Public API: accepted inputs, outputs, errors, the custom op and the README example."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from uda_dispersion import dispersion_map, instances, reference

README = Path(__file__).parents[2] / "packages" / "uda-dispersion" / "README.md"


def scene(b=2, h=24, w=32, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, (b, h // 4, w // 4)).repeat(4, 1).repeat(4, 2)
    labels[:, :2] = 255
    return labels, rng.random((b, h, w)).astype(np.float32)


def test_numpy_in_numpy_out_and_torch_in_torch_out():
    labels, depth = scene()
    as_numpy = dispersion_map(labels, depth, min_area=4)
    as_torch = dispersion_map(torch.from_numpy(labels), torch.from_numpy(depth), min_area=4)
    assert isinstance(as_numpy, np.ndarray) and isinstance(as_torch, torch.Tensor)
    assert as_numpy.dtype == np.float32 and as_torch.dtype == torch.float32
    assert as_numpy.shape == (2, 1, 24, 32)
    np.testing.assert_array_equal(as_torch.numpy(), as_numpy)


@pytest.mark.parametrize("layout", ["hw", "bhw", "b1hw"])
def test_accepts_hw_bhw_and_b1hw_inputs(layout):
    labels, depth = scene(b=1)
    expected = dispersion_map(labels, depth, min_area=4)
    reshape = {"hw": lambda x: x[0], "bhw": lambda x: x, "b1hw": lambda x: x[:, None]}[layout]
    np.testing.assert_array_equal(
        dispersion_map(reshape(labels), reshape(depth), min_area=4), expected
    )


@pytest.mark.parametrize(
    "dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16]
)
def test_any_integer_label_dtype_gives_the_same_map(dtype):
    labels, depth = scene()
    labels = np.where(labels == 255, 100, labels)
    expected = dispersion_map(labels, depth, min_area=4, ignore_index=100)
    got = dispersion_map(
        torch.from_numpy(labels).to(dtype), torch.from_numpy(depth), min_area=4, ignore_index=100
    )
    np.testing.assert_array_equal(got.numpy(), expected)


def test_negative_ignore_index_is_allowed():
    labels, depth = scene()
    labels = np.where(labels == 255, -1, labels)
    np.testing.assert_allclose(
        dispersion_map(labels, depth, ignore_index=-1, min_area=4),
        reference.dispersion_map(labels, depth, ignore_index=-1, min_area=4),
        atol=1e-5,
    )


def test_float64_depth_is_read_as_float32():
    labels, depth = scene()
    np.testing.assert_array_equal(
        dispersion_map(labels, depth.astype(np.float64)), dispersion_map(labels, depth)
    )


def test_instances_agree_with_the_map():
    labels, depth = scene()
    found = instances(torch.from_numpy(labels), torch.from_numpy(depth), min_area=4, fill=-1.0)
    ids, table = found.ids, found.table
    assert ids.shape == (2, 1, 24, 32) and ids.dtype == torch.int32
    assert int(table.area.sum()) == int((ids >= 0).sum())
    assert table.centroid.shape == (len(table.area), 3)
    values = torch.cat([table.dispersion, torch.tensor([-1.0])])[ids.long()]
    torch.testing.assert_close(
        values, dispersion_map(torch.from_numpy(labels), torch.from_numpy(depth), min_area=4)
    )
    assert table.batch.tolist() == sorted(table.batch.tolist())
    assert set(table.class_id.tolist()) <= {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("labels", "depth", "message"),
    [
        (np.zeros((4, 5), np.int64), np.zeros((4, 6)), "shapes differ"),
        (np.zeros((2, 4, 5), np.int64), np.zeros((3, 4, 5)), "shapes differ"),
        (np.zeros((4, 5)), np.zeros((4, 5)), "integer"),
        (np.zeros((4, 5), bool), np.zeros((4, 5)), "integer"),
        (np.zeros((4, 5), np.int64), np.full((4, 5), np.nan), "NaN or infinite"),
        (np.zeros((4, 5), np.int64), np.full((4, 5), np.inf), "NaN or infinite"),
        (np.full((4, 5), -3), np.zeros((4, 5)), "found -3"),
        (np.full((4, 5), 2**40), np.zeros((4, 5)), "2^31"),
        (np.zeros((0, 5), np.int64), np.zeros((0, 5)), "empty"),
        (np.zeros((2, 3, 4, 5), np.int64), np.zeros((2, 3, 4, 5)), "B x 1 x H x W"),
        ([[0, 1]], np.zeros((1, 2)), "numpy.ndarray"),
        (np.array([[0, None]], dtype=object), np.zeros((1, 2)), "dtype object"),
        (np.zeros((1, 2), np.int64), np.array([["a", "b"]]), "must hold numbers"),
    ],
)
def test_bad_input_raises_one_clear_value_error(labels, depth, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        dispersion_map(labels, depth)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"connectivity": 6}, "connectivity must be 4 or 8"),
        ({"weighting": "volume"}, "weighting must be one of"),
        ({"min_area": -1}, "min_area must be >= 0"),
        ({"depth_weight": np.inf}, "depth_weight must be finite"),
        ({"min_area": 2.5}, "min_area must be an integer, got 2.5"),
        ({"connectivity": "8"}, "connectivity must be an integer"),
        ({"ignore_index": None}, "ignore_index must be an integer"),
        ({"fill": "x"}, "fill must be a real number"),
        ({"depth_weight": None}, "depth_weight must be a real number"),
        ({"weighting": 1}, "weighting must be one of"),
        ({"max_instances": -1}, "max_instances must be >= 0 or None"),
        ({"max_instances": 1.5}, "max_instances must be an integer"),
    ],
)
def test_bad_options_raise_one_clear_value_error(kwargs, message):
    for function in (dispersion_map, instances):
        with pytest.raises(ValueError, match=re.escape(message)):
            function(np.zeros((4, 4), np.int64), np.zeros((4, 4)), **kwargs)


def test_numpy_integer_options_are_accepted():
    labels, depth = scene()
    np.testing.assert_array_equal(
        dispersion_map(labels, depth, min_area=np.int64(4), connectivity=np.int32(8)),
        dispersion_map(labels, depth, min_area=4),
    )


def test_meta_tensors_raise_value_error():
    labels = torch.zeros(2, 4, 4, dtype=torch.int64, device="meta")
    depth = torch.zeros(2, 4, 4, device="meta")
    for function in (dispersion_map, instances):
        with pytest.raises(ValueError, match="meta tensors hold no values"):
            function(labels, depth)


def test_registered_op_rejects_float_labels_and_other_layouts():
    op = torch.ops.uda_dispersion.dispersion_map
    options = (255, 8, 4, 1.0, "uniform", -1.0, -1)
    depth = torch.zeros(1, 4, 4)
    with pytest.raises(ValueError, match="labels must hold integer class ids, got dtype"):
        op(torch.zeros(1, 4, 4), depth, *options)
    with pytest.raises(ValueError, match="takes B x H x W labels and depth of one shape"):
        op(torch.zeros(4, 4, dtype=torch.int64), depth[0], *options)
    compiled = torch.compile(lambda lab, d: op(lab, d, *options), fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="labels must hold integer class ids"):  # torch wraps it
        compiled(torch.zeros(1, 4, 4), depth)


def noise(size, seed=0):
    """Pixel-noise labels: nearly every pixel its own instance (the pair step's worst case)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 19, (size, size)), rng.random((size, size)).astype(np.float32)


def test_more_instances_than_max_instances_raise_one_value_error_naming_both():
    labels, depth = noise(32)
    count = len(instances(labels, depth, min_area=1, max_instances=None).table.area)
    with pytest.raises(ValueError) as raised:
        dispersion_map(labels, depth, min_area=1, max_instances=count - 1)
    message = str(raised.value)
    assert "\n" not in message
    assert f"image 0 of the batch has {count} instances of at least min_area=1" in message
    assert f"max_instances={count - 1}" in message and "None for no limit" in message
    np.testing.assert_array_equal(
        dispersion_map(labels, depth, min_area=1, max_instances=count),
        dispersion_map(labels, depth, min_area=1, max_instances=None),
    )


def test_max_instances_counts_instances_of_min_area_per_image():
    labels, depth = scene()
    table = instances(labels, depth, min_area=16).table
    per_image = np.bincount(table.batch[table.area >= 16], minlength=2)
    dispersion_map(labels, depth, min_area=16, max_instances=int(per_image.max()))
    with pytest.raises(ValueError, match=f"has {per_image.max()} instances of at least min_area"):
        dispersion_map(labels, depth, min_area=16, max_instances=int(per_image.max()) - 1)
    dispersion_map(labels, depth, min_area=int(table.area.max()) + 1, max_instances=0)


def test_ctrl_c_interrupts_a_long_map_within_a_second():
    """Pixel noise at 512 x 512 with min_area=1 takes minutes; SIGINT must end it at once with
    KeyboardInterrupt (the native code runs without the GIL and checks for signals)."""
    script = (
        "import time\n"
        "import numpy as np\n"
        "from uda_dispersion import dispersion_map\n"
        "rng = np.random.default_rng(0)\n"
        "labels = rng.integers(0, 19, (512, 512)).astype(np.uint8)\n"
        "depth = rng.random((512, 512)).astype(np.float32)\n"
        "print('started', flush=True)\n"
        "try:\n"
        "    dispersion_map(labels, depth, min_area=1, max_instances=None)\n"
        "except KeyboardInterrupt:\n"
        "    print(time.monotonic(), flush=True)\n"
        "    raise\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "started"
        time.sleep(1.0)
        assert child.poll() is None, "the map finished before the signal"
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert err.strip().splitlines()[-1] == "KeyboardInterrupt"
    waited = float(out.strip()) - sent  # CLOCK_MONOTONIC is shared by all processes
    assert waited < 1.0, f"took {waited:.2f} s to stop"


def test_custom_op_passes_opcheck():
    labels, depth = scene()
    args = (torch.from_numpy(labels), torch.from_numpy(depth), 255, 8, 4, 1.0, "uniform", -1.0, -1)
    torch.library.opcheck(torch.ops.uda_dispersion.dispersion_map.default, args)


def test_runs_inside_torch_compile_without_graph_break():
    labels, depth = (torch.from_numpy(x) for x in scene())

    def weighted(labels, depth):
        return dispersion_map(labels, depth, min_area=4).clamp(min=0) * depth.unsqueeze(1)

    compiled = torch.compile(weighted, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(labels, depth), weighted(labels, depth))


def test_readme_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README shows the API in a python block"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
