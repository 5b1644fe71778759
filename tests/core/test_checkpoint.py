import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from uda_core.checkpoint import (
    atomic_write_bytes,
    find_latest,
    load_checkpoint,
    periodic_checkpoints,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from uda_core.errors import UdaError


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": {}, "config": {"v": 1}})

    def explode(f):
        f.write(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write_bytes(path, explode)
    assert load_checkpoint(path)["config"] == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_corrupt_and_foreign_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UdaError, match="cannot be read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(UdaError, match="not a uda checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(UdaError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_latest_is_the_newest_periodic_checkpoint_of_any_run(tmp_path):
    for run, iters in (("a", (3, 6)), ("b", (3,))):
        for it in iters:
            save_checkpoint(
                tmp_path / run / "checkpoints" / f"iter_{it:06d}.pt", {"model": {}, "config": {}}
            )
            time.sleep(0.01)
    newest = tmp_path / "b" / "checkpoints" / "iter_000003.pt"
    os.utime(newest)
    assert find_latest(tmp_path) == newest
    assert find_latest(tmp_path / "a").name == "iter_000006.pt"
    with pytest.raises(UdaError, match="no checkpoint"):
        find_latest(tmp_path / "empty")


def test_pruning_keeps_the_newest(tmp_path):
    for it in (2, 4, 6, 8):
        save_checkpoint(tmp_path / "checkpoints" / f"iter_{it:06d}.pt", {"model": {}, "config": {}})
    prune_checkpoints(tmp_path, 2)
    assert [p.name for p in periodic_checkpoints(tmp_path)] == ["iter_000006.pt", "iter_000008.pt"]


class _WritesAFile:
    """A pickle payload: unpickling it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_with_a_code_payload_fails_in_one_line_and_runs_nothing(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "x": _WritesAFile(marker)}, path)
    with pytest.raises(UdaError, match="objects other than tensors") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_a_folder_given_as_a_checkpoint_is_named_a_folder(tmp_path):
    with pytest.raises(UdaError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_random_states_are_saved_as_tensors_a_plain_weights_only_load_reads(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": {}, "config": {}, "rng": [rng_state()]})
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(torch.load(path, weights_only=True)["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_random_states_of_earlier_versions_still_restore(tmp_path):
    np.random.seed(5)
    old = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"model": {}, "config": {}, "rng": [old]})
    expected = np.random.rand()
    np.random.seed(9)
    set_rng_state(load_checkpoint(path)["rng"][0])
    assert np.random.rand() == expected
