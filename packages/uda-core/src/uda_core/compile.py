"""``runtime.compile``: ``torch.compile`` of the student, the EMA teacher and the frozen
ImageNet encoder, falling back to eager execution.

Compilation traces each network's forward (and AOTAutograd the student's backward) into graphs that
Inductor turns into fused kernels: far fewer operator dispatches per step, so a host-bound
GPU step gets faster; the first iterations (and each new input shape) pay the compile time.
See docs/speed.md.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def compile_in_place(module: nn.Module, log: Callable[[str], None]) -> None:
    """``module.compile()`` with Inductor (state dict keys unchanged). Where Inductor fails
    on a graph (no C++ compiler, an unsupported operator), that graph runs eagerly and ``log``
    gets one line, once."""
    failed: list[BaseException] = []

    def inductor_or_eager(graph, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        try:
            return compile_fx(graph, example_inputs)
        except Exception as error:
            if not failed:
                reason = (str(error).strip().splitlines() or [""])[0][:200]
                log(
                    f"runtime.compile: compilation failed ({type(error).__name__}: {reason}); "
                    f"running {type(module).__name__} eagerly where it failed"
                )
            failed.append(error)
            return graph.forward

    module.compile(backend=inductor_or_eager)
