"""Speed options train as the reference path does: multi-tensor EMA and AdamW, losses kept on
the device and read every log interval (issue 16)."""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from tests.methods.test_hrda import tiny_model, uda_batch
from uda_core.compile import compile_in_place
from uda_core.config import OptimConfig
from uda_core.ema import EMATeacher
from uda_core.engine import LossLog
from uda_core.optim import build_optimizer
from uda_methods.config import MethodConfig
from uda_methods.registry import method_class


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.LayerNorm(7)
    )


@torch.no_grad()
def per_tensor_update(teacher: EMATeacher, student: nn.Module, step: int) -> None:
    """The update before the multi-tensor one: two operations per tensor (MIC 2f932a9
    ``seg/mmseg/models/uda/dacs.py:122-135`` for the parameters)."""
    a = teacher.alpha_at(step)
    for t, s in zip(teacher.model.parameters(), student.parameters(), strict=True):
        t.mul_(a).add_(s.detach(), alpha=1.0 - a)
    for t, s in zip(teacher.model.buffers(), student.buffers(), strict=True):
        if t.dtype.is_floating_point:
            t.mul_(a).add_(s.detach(), alpha=1.0 - a)
        else:
            t.copy_(s)


def perturb(student: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*student.parameters(), *student.buffers()]:
            if tensor.dtype.is_floating_point:
                tensor.add_(torch.randn(tensor.shape, generator=g))
            else:
                tensor.add_(1)


def test_multi_tensor_ema_update_equals_the_per_tensor_blend():
    student = small_net()
    fast, slow = EMATeacher(student, 0.99), EMATeacher(student, 0.99)
    for step in range(1, 5):
        perturb(student, step)
        fast.update(student, step)
        per_tensor_update(slow, student, step)
    for (name, a), b in zip(
        fast.model.state_dict().items(), slow.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_multi_tensor_ema_keeps_own_buffers_when_asked():
    student = small_net()
    teacher = EMATeacher(student, 0.99, buffers="own")
    before = copy.deepcopy(dict(teacher.model.named_buffers()))
    perturb(student, 1)
    teacher.update(student, 1)
    for name, value in teacher.model.named_buffers():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("implementation", ["foreach", "auto"])
def test_adamw_implementations_give_the_per_tensor_loops_update(implementation):
    nets = [small_net(), small_net()]
    optimizers = [
        build_optimizer(net, OptimConfig(implementation=kind, lr=1e-2))
        for net, kind in zip(nets, ["for-loop", implementation], strict=True)
    ]
    defaults = optimizers[1].defaults
    assert defaults["foreach"] or defaults["fused"]
    image = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        for net, optimizer in zip(nets, optimizers, strict=True):
            net(image).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_loss_log_sums_on_the_device_and_reads_the_means_once(monkeypatch):
    log = LossLog()
    steps = [{"a": torch.tensor(1.0), "b": 2.0}, {"a": torch.tensor(3.0)}, {"a": torch.tensor(5.0)}]

    def read(*_):
        raise AssertionError("a host read inside a step")

    with monkeypatch.context() as patched:
        for name in ("item", "__float__", "tolist"):
            patched.setattr(torch.Tensor, name, read)
        for logs in steps:
            log.add(logs)
    assert log.means() == {"a": 3.0, "b": 2.0}
    log.clear()
    assert log.means() == {}


def train_mic(reference: bool, monkeypatch, steps: int = 3):
    """``steps`` MIC iterations on a tiny model; ``reference``: per-tensor AdamW and EMA and
    every loss read on the host each step, as before the speed options."""
    cfg = MethodConfig(name="mic", mic_base="daformer", mic_mask_block=8)
    model = tiny_model(cfg)
    optimizer = build_optimizer(
        model, OptimConfig(implementation="for-loop" if reference else "auto")
    )
    method = method_class("mic")(model, Accelerator(cpu=True), cfg, {})
    with monkeypatch.context() as patched:
        if reference:
            patched.setattr(EMATeacher, "update", per_tensor_update)
        batch, history, log = uda_batch(), [], LossLog()
        torch.manual_seed(1)
        for iteration in range(steps):
            logs = method.train_step(batch, iteration)
            if reference:
                history.append({k: float(v) for k, v in logs.items()})
            else:
                assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in logs.values())
                log.add(logs)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            method.after_optimizer_step(iteration)
    means = {k: sum(h[k] for h in history) / steps for k in history[0]} if reference else None
    return model, method.teacher.model, means or log.means()


@pytest.mark.slow  # about 10 s on 2 idle cores
def test_three_mic_steps_with_the_speed_options_equal_the_reference_path(monkeypatch):
    student, teacher, logs = train_mic(False, monkeypatch)
    ref_student, ref_teacher, ref_logs = train_mic(True, monkeypatch)
    for ours, theirs in ((student, ref_student), (teacher, ref_teacher)):
        for (name, a), b in zip(
            ours.state_dict().items(), theirs.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert logs.keys() == ref_logs.keys()
    for key, value in logs.items():
        assert value == pytest.approx(ref_logs[key], rel=1e-4, abs=1e-6), key


@pytest.fixture
def fresh_dynamo():
    """Compile in this process only (no worker pool left behind), caches reset after."""
    import torch._dynamo
    import torch._inductor.config

    with torch._inductor.config.patch(compile_threads=1):
        yield
    torch._dynamo.reset()


def train_once(net: nn.Module, image: torch.Tensor) -> torch.Tensor:
    optimizer = build_optimizer(net, OptimConfig(lr=1e-2))
    loss = net(image).square().mean()
    loss.backward()
    optimizer.step()
    return loss.detach()


def test_compile_falls_back_to_eager_with_one_line(fresh_dynamo, monkeypatch):
    import torch._inductor.compile_fx

    def broken(*_, **__):
        raise RuntimeError("no compiler here\nmore detail")

    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx", broken)
    eager, compiled, lines = small_net(), small_net(), []
    compile_in_place(compiled, lines.append)
    image = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    assert train_once(compiled, image) == train_once(eager, image)
    other = torch.randn(1, 3, 9, 9)  # another shape: compiled again, failing again
    torch.testing.assert_close(compiled(other), eager(other), rtol=0, atol=0)
    assert len(lines) == 1 and "RuntimeError: no compiler here" in lines[0]
    for a, b in zip(compiled.state_dict().values(), eager.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_train_step_equals_the_eager_one(fresh_dynamo):
    """Loss and gradients within float tolerance (compared before the AdamW step: Adam's
    first update is lr x the gradient's sign, which rounding flips where a gradient is ~0)."""
    eager, compiled, lines = small_net(), small_net(), []
    compile_in_place(compiled, lines.append)
    image = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    losses = [net(image).square().mean() for net in (compiled, eager)]
    for loss in losses:
        loss.backward()
    assert lines == []  # Inductor compiled it (a C++ compiler is there)
    torch.testing.assert_close(*losses)
    for a, b in zip(compiled.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    for a, b in zip(compiled.buffers(), eager.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
