"""Compile every fused fast-weight kernel for an H100 (sm_90) on a machine without a GPU.

Triton's interpreter (how the tests run the kernels on CPU) accepts code that the GPU compiler
rejects, so this compiles the exact launches the op wrappers make (forward with and without saving
for backward, backward; float32 and bfloat16 inputs; head dims 32 and 64) through Triton's whole
pipeline down to a cubin, and prints registers and spills per kernel (ptxas -v). Launch shapes are
those of the paper's RL shape (B=32, H=4, D=32) and the large one (B=256, H=8, D=64) on an H100
(132 SMs).

    python bench/compile_kernels.py [--quiet]

Run it without TRITON_INTERPRET set. tests/test_kernels.py runs it with --quiet.
"""
import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fwp_core import ops  # noqa: E402
from fwp_core.ops import _triton_utils as tu  # noqa: E402

OPS = ("sum_rule", "delta_rule", "rdn", "delta_rnn")
TARGET = GPUTarget("cuda", 90, 32)
POINTER = {torch.float32: "*fp32", torch.float64: "*fp64", torch.bfloat16: "*bf16", torch.uint8: "*u8"}


def capture_launches():
    """Run the op wrappers on CPU tensors with every kernel launch recorded instead of run."""
    launches = []
    kernels = {}
    for op in OPS:
        module = importlib.import_module(f"fwp_core.ops.{op}.fused_recurrent")
        for name, obj in vars(module).items():
            if isinstance(obj, triton.runtime.JITFunction) and name.endswith(("_fwd", "_bwd")):
                kernels[name] = obj
    for kernel in kernels.values():
        kernel.run = lambda *args, grid, warmup, _k=kernel, **kw: launches.append((_k, args, kw))
    tu.check_inputs = lambda *a, **k: None   # CPU tensors stand in for CUDA ones: nothing runs
    tu.sm_count = lambda device: 132         # an H100's SMs, which set the column split
    g = torch.Generator().manual_seed(0)
    for op in OPS:
        for B, H, D in ((32, 4, 32), (256, 8, 64)):
            for dtype in (torch.float32, torch.bfloat16):
                T = 3
                shapes = {"sum_rule": [(T, B, H, D)] * 3, "delta_rule": [(T, B, H, D)] * 3 + [(T, B, H)],
                          "rdn": [(T, B, H, D)] * 3 + [(T, B, H), (H, D, D), (H, D, D), (H, D, D), (H, D)],
                          "delta_rnn": [(T, B, H, D)] * 3 + [(T, B, H)]
                          + [(T, B, H, D)] * 2 + [(T, B, H)]}[op]
                args = [torch.rand(s, generator=g).to(dtype).requires_grad_() for s in shapes]
                reset = torch.zeros(T, B, dtype=torch.bool)
                y, final = getattr(ops, op)(*args, reset=reset, backend="triton")
                final = final if isinstance(final, tuple) else (final,)
                (y.float().sum() + sum(s.sum() for s in final)).backward()
                with torch.no_grad():                 # the acting path: no reset, nothing saved
                    getattr(ops, op)(*[a[:1] if a.shape[0] == T else a for a in args], backend="triton")
    return launches, sorted(kernels)


def signature(kernel, args, kw):
    sig, constexprs = {}, {}
    for name, a in zip(kernel.arg_names, args):
        sig[name] = POINTER[a.dtype] if isinstance(a, torch.Tensor) else "i32"
    for name in kernel.arg_names[len(args):]:
        sig[name], constexprs[name] = "constexpr", kw[name]
    return sig, constexprs


def registers(ptx):
    from triton.backends.nvidia.compiler import get_ptxas
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        Path(path).write_text(ptx)
        out = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", path, "-o", path + ".cubin"],
                             capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores", out)
    return (regs.group(1) if regs else "?"), (spill.group(1) if spill else "?")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    quiet = parser.parse_args().quiet
    if triton.knobs.runtime.interpret:
        sys.exit("unset TRITON_INTERPRET: the interpreter compiles nothing")
    launches, names = capture_launches()
    seen, compiled = set(), set()
    if not quiet:
        print("| kernel | constexprs | inputs | warps | registers | spill bytes |\n|---|---|---|---|---|---|")
    for kernel, args, kw in launches:
        kw = dict(kw)
        warps = kw.pop("num_warps")
        sig, constexprs = signature(kernel, args, kw)
        key = (kernel.__name__, tuple(sig.items()), tuple((k, str(v)) for k, v in constexprs.items()), warps)
        if key in seen:
            continue
        seen.add(key)
        out = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs), target=TARGET,
                             options={"num_warps": warps})
        assert out.asm["cubin"], kernel.__name__
        compiled.add(kernel.__name__)
        if not quiet:
            shown = ", ".join(f"{k}={getattr(v, 'name', v)}" for k, v in constexprs.items())
            inputs = "bf16" if "*bf16" in sig.values() else "fp32"
            print(f"| {kernel.__name__} | {shown} | {inputs} | {warps} | "
                  f"{' | '.join(registers(out.asm['ptx']))} |")
    missing = sorted(set(names) - compiled)
    if missing:
        sys.exit(f"never launched, not compiled: {', '.join(missing)}")
    print(f"compiled {len(seen)} kernel variants for sm_90; all {len(names)} kernels compiled")


if __name__ == "__main__":
    main()
