"""One autocast weight cast per parameter and training step.

Under mixed precision every student pass (source, mixed, masked; on HRDA each at two
scales) runs in an autocast region of its own (Accelerate wraps the prepared model's
forward), and autocast drops its cache of low-precision parameter copies whenever the
outermost region exits: each pass cast every weight again, and a MIC step cast the
student's weights three times. ``one_cast_per_step`` holds the cache for the whole step, so
each trainable weight is cast once, at its first use, and the later passes reuse that copy.
It enables nothing itself: code outside the model passes still runs without autocast, and
every backward pass (after its forward's region has exited) too, as before.

The cached copy holds the same values as a fresh cast (the weights do not change within a
step; the optimiser steps after it, when the cache is gone), so the training is identical.
Autocast caches only leaf tensors that require gradients: the EMA teacher and other frozen
networks are cast at each use as before. Memory: the low-precision copy of the student's
weights (half their fp32 size in bf16) lives until the step ends, instead of until the last
backward pass that saved it. ``torch.compile``'d graphs do their own casts (Dynamo does not
use this cache).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_cast_per_step() -> Iterator[None]:
    """Keep autocast's cast cache from the first model pass of a step to the end of the step.

    The cache lives while autocast's nesting count is above zero (``torch.autocast`` clears
    it when the count returns to zero); this holds one count for the step, then clears the
    cache as the outermost autocast region would.
    """
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
