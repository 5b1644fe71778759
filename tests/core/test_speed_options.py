"""Speed options train as the reference path does: multi-tensor EMA, fused / multi-tensor
AdamW, one autocast cast per weight and step, losses kept on the device and read every log
interval (issue 16)."""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import sys
from pathlib import Path

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
from uda_core.precision import one_cast_per_step
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


def graded_net() -> nn.Module:
    """A net whose every parameter has a gradient away from zero. (A bias just before a
    normalisation, as in ``small_net``, has an exactly zero gradient: what autograd returns
    is rounding noise, which Adam's normalised update turns into a full ``lr`` step whose
    sign any reordering of the arithmetic flips.)"""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Tanh())


@pytest.mark.parametrize("implementation", ["foreach", "fused", "auto"])
def test_adamw_implementations_give_the_per_tensor_loops_update(implementation):
    nets = [graded_net(), graded_net()]
    optimizers = [
        build_optimizer(net, OptimConfig(implementation=kind, lr=1e-2, weight_decay=0.01))
        for net, kind in zip(nets, ["for-loop", implementation], strict=True)
    ]
    defaults = optimizers[1].defaults
    assert defaults["foreach"] or defaults["fused"]
    image = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        for net, optimizer in zip(nets, optimizers, strict=True):
            net(image).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_auto_picks_the_fused_adamw_where_pytorch_has_it(monkeypatch):
    """PyTorch >= 2.4 has fused AdamW kernels on the CPU and CUDA: one call per group and
    step, no per-parameter step counters read on the host; elsewhere ``foreach``."""
    cfg = OptimConfig(implementation="auto")
    assert build_optimizer(graded_net(), cfg).defaults["fused"]
    assert build_optimizer(graded_net(), cfg, torch.device("cpu")).defaults["fused"]
    import torch.utils._foreach_utils as foreach_utils

    monkeypatch.setattr(foreach_utils, "_get_fused_kernels_supported_devices", lambda: ["cuda"])
    fallback = build_optimizer(graded_net(), cfg).defaults
    assert fallback["foreach"] and not fallback["fused"]
    on_cuda = build_optimizer(graded_net(), cfg, torch.device("cuda")).defaults
    assert on_cuda["foreach"] and not on_cuda["fused"]  # the parameters are on the CPU still


def casts_of_two_autocast_passes(hold: bool) -> tuple[int, list[torch.Tensor]]:
    """Two bf16 passes of one net, each in its own autocast region with its own backward
    (as a method's source and mixed passes): ``aten::_to_copy`` calls and the gradients."""
    from torch.profiler import profile

    net = graded_net()
    image = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    with profile() as prof, one_cast_per_step() if hold else contextlib.nullcontext():
        for scale in (1.0, 2.0):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = net(scale * image).float().square().mean()
            assert not torch.is_autocast_enabled("cpu")  # backward runs without autocast
            loss.backward()
    casts = sum(e.name == "aten::_to_copy" for e in prof.events())
    return casts, [p.grad for p in net.parameters()]


def test_one_cast_per_step_casts_each_weight_once_and_keeps_the_gradients():
    held, held_grads = casts_of_two_autocast_passes(hold=True)
    fresh, fresh_grads = casts_of_two_autocast_passes(hold=False)
    weights = 4  # two convolutions' weights and biases, cast at the first pass only
    assert fresh - held == weights
    for a, b in zip(held_grads, fresh_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_one_cast_per_step_drops_the_casts_when_the_step_ends():
    """The optimiser changes the weights between steps: the next step casts them anew."""
    net, image = graded_net(), torch.randn(1, 3, 9, 9)
    outputs = []
    for _ in range(2):
        with one_cast_per_step(), torch.autocast("cpu", dtype=torch.bfloat16):
            outputs.append(net(image))
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fresh = graded_net()
        with torch.no_grad():
            for p in fresh.parameters():
                p.add_(1.0)
        expected = fresh(image)
    torch.testing.assert_close(outputs[1], expected, rtol=0, atol=0)


# Accelerate fixes the precision once per process: the bf16 MIC steps run in a process of
# their own, with and without the step-wide cast cache, and print what they trained.
BF16_MIC_STEPS = """
import contextlib, json, sys
import torch
from accelerate import Accelerator
from tests.methods.test_hrda import tiny_model, uda_batch
from uda_core.config import OptimConfig
from uda_core.optim import build_optimizer
from uda_core.precision import one_cast_per_step
from uda_methods.config import MethodConfig
from uda_methods.registry import method_class

accelerator = Accelerator(cpu=True, mixed_precision="bf16")
out = {}
for hold in (True, False):
    cfg = MethodConfig(name="mic", mic_base="daformer", mic_mask_block=8)
    model = tiny_model(cfg)
    optimizer = build_optimizer(model, OptimConfig())
    model, optimizer = accelerator.prepare(model, optimizer)
    method = method_class("mic")(model, accelerator, cfg, {})
    torch.manual_seed(1)
    logs = []
    for iteration in range(3):
        with one_cast_per_step() if hold else contextlib.nullcontext():
            step = method.train_step(uda_batch(), iteration)
        logs.append({k: float(v) for k, v in step.items()})
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_optimizer_step(iteration)
    weights = {**model.state_dict(), **method.teacher.model.state_dict()}
    sums = {k: [float(v.double().sum()), float(v.double().abs().sum())] for k, v in weights.items()}
    out[hold] = {"logs": logs, "weights": sums}
print(json.dumps(out))
"""


@pytest.mark.slow  # about 20 s on 2 idle cores
def test_bf16_mic_steps_with_one_cast_per_step_equal_those_without():
    """The cached bf16 copy of a weight holds what a fresh cast gives (the weights do not
    change within a step), so three MIC steps train the same student and teacher, bit for
    bit, with the cast cache held over the step (the engine's) and without (before)."""
    root = Path(__file__).parents[2]
    command = [sys.executable, "-c", BF16_MIC_STEPS]
    result = subprocess.run(command, capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    held, fresh = runs["true"], runs["false"]
    assert held["logs"][0].keys() >= {"src.seg", "mix.seg", "mask.seg"}
    assert held["logs"] == fresh["logs"]
    assert held["weights"] == fresh["weights"]


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


def train_steps(method, optimizer, steps: int) -> list[dict[str, float]]:
    """``steps`` training steps on ``uda_batch()`` from seed 1, as the engine runs them; the
    logged losses of each."""
    torch.manual_seed(1)
    logs = []
    for iteration in range(steps):
        step = method.train_step(uda_batch(), iteration)
        method.finish_backward()
        logs.append({k: float(v) for k, v in step.items()})
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_optimizer_step(iteration)
    return logs


def train_mic_backward(base: str, once: bool, plugin: bool, steps: int = 2):
    """``steps`` MIC steps on a tiny model, one backward per pass or one per step."""
    from uda_dispersion.plugin import DispersionPlugin

    cfg = MethodConfig(name="mic", mic_base=base, hrda_detail_crop=(32, 32), mic_mask_block=8)
    plugins = {"dispersion": DispersionPlugin({"weight_hook": False})} if plugin else {}
    model = tiny_model(cfg, plugins.get("dispersion"))
    optimizer = build_optimizer(model, OptimConfig())
    method = method_class("mic")(model, Accelerator(cpu=True), cfg, plugins)
    method.backward_once = once
    passes = []
    original = method.accelerator.backward
    method.accelerator.backward = lambda loss: (passes.append(1), original(loss))
    logs = train_steps(method, optimizer, steps)
    return model, method.teacher.model, logs, len(passes)


@pytest.mark.parametrize(("base", "plugin"), [("hrda", True), ("daformer", False)])
def test_one_backward_per_step_trains_what_one_backward_per_pass_trains(base, plugin):
    """``runtime.backward: once`` sums the source, mixed and masked losses and runs one
    backward: the gradients are those of the three backward passes (the reference's order,
    ``per-pass``) up to float rounding, so two MIC steps (HRDA with the dispersion plugin,
    and DAFormer) train the same student and teacher and log the same losses."""
    ours = train_mic_backward(base, True, plugin)
    reference = train_mic_backward(base, False, plugin)
    assert (ours[3], reference[3]) == (2, 6)  # backward calls: one per step, three per step
    for a, b in ((ours[0], reference[0]), (ours[1], reference[1])):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)
    assert ours[2][0].keys() >= {"src.seg", "mix.seg", "mask.seg"}
    for step, ref_step in zip(ours[2], reference[2], strict=True):
        assert step.keys() == ref_step.keys()
        for key, value in step.items():
            assert value == pytest.approx(ref_step[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize(
    ("backward", "precision", "once"),
    [
        ("auto", "bf16", True),
        ("auto", "fp16", True),
        ("auto", "no", False),
        ("per-pass", "bf16", False),
        ("once", "no", True),
    ],
)
def test_backward_auto_is_one_backward_per_step_under_mixed_precision_only(
    backward, precision, once
):
    """``runtime.backward: auto`` runs one backward per step where it saves work (bf16/fp16:
    one cast of each weight's gradient per step instead of one per pass) and the reference's
    one backward per pass in fp32 (where one per step saves nothing and holds more memory)."""
    from uda_core.config import RuntimeConfig

    assert RuntimeConfig(backward=backward, precision=precision).backward_once is once


def train_mic_shared(shared: bool, steps: int = 2):
    """``steps`` MIC (HRDA) steps with the dispersion plugin on a MiT-B0 model (its EMA
    teacher encodes each image on its own), the teacher's context and windows in one encoder
    pass or two; also the batch sizes the teacher's encoder saw."""
    from uda_dispersion.plugin import DispersionPlugin
    from uda_methods.config import ModelConfig
    from uda_methods.registry import build_method_model

    cfg = MethodConfig(
        name="mic",
        hrda_detail_crop=(32, 32),
        mic_mask_block=8,
        hrda_shared_encoder_pass=shared,
    )
    plugin = DispersionPlugin({"weight_hook": False})
    torch.manual_seed(0)
    model_cfg = ModelConfig(encoder="mit_b0", decoder="daformer", channels=16)
    model = build_method_model(model_cfg, cfg, 19)
    model.heads[plugin.name] = plugin.build_head(16, 19)
    optimizer = build_optimizer(model, OptimConfig())
    method = method_class("mic")(model, Accelerator(cpu=True), cfg, {plugin.name: plugin})
    sizes: list[int] = []
    method.teacher.model.encoder.register_forward_hook(lambda m, a, o: sizes.append(len(a[0])))
    logs = train_steps(method, optimizer, steps)
    return model, method.teacher.model, logs, sizes


def test_mic_steps_with_a_shared_teacher_encoder_pass_train_what_two_passes_train():
    """The reference's teacher runs HRDA's encoder twice per pseudo-label batch (context,
    then the detail windows). ``method.hrda_shared_encoder_pass`` runs it once on both (2 + 18
    images of 32 px for a 64 px target crop), and two MIC + dispersion steps train the same
    student and teacher and log the same losses within float rounding."""
    ours = train_mic_shared(True)
    reference = train_mic_shared(False)
    assert ours[3] == [20, 20] and reference[3] == [2, 18, 2, 18]
    for a, b in ((ours[0], reference[0]), (ours[1], reference[1])):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)
    assert ours[2][0].keys() >= {"src.seg", "mix.seg", "mask.seg", "pseudo_weight"}
    for step, ref_step in zip(ours[2], reference[2], strict=True):
        assert step.keys() == ref_step.keys()
        for key, value in step.items():
            assert value == pytest.approx(ref_step[key], rel=1e-4, abs=1e-6), key
