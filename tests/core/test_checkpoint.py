import os
import time

import pytest
import torch

from uda_core.checkpoint import (
    atomic_write_bytes,
    find_latest,
    load_checkpoint,
    periodic_checkpoints,
    prune_checkpoints,
    save_checkpoint,
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
