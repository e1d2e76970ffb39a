"""The cost of truncate_fast_weight_grad (the paper's gradient cut) on the reference path, on CPU.

    python bench/truncation.py [--batch-size 32 --unroll-length 50 --repeats 5]

Times forward+backward of the paper's 2-layer core (d_model 128, 4 heads of 32, FF 512, input 257)
for each fast-weight rule, three ways, interleaved so that load from other processes hits them
alike: full BPTT; truncated inside the op (one call over the unroll, the state a constant to each
step's backward: what the layer does now); and truncated the way the layer used to do it, one op
call per step with the state detached in between. Prints the median of the repeats and the ratios.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fwp_core import make_core  # noqa: E402

CORES = ("linear_transformer", "delta_net", "rdn", "delta_rnn")


def per_step_forward(core, x, state, reset):
    """The old truncation: each fast-weight layer called one step at a time, the state detached."""
    h = core.input_proj(x)
    n = core._per_layer
    for i, (fw_norm, fw, ff_norm, ff) in enumerate(zip(core.fw_norms, core.fw_layers, core.ff_norms, core.ff_layers)):
        s, ys = tuple(state[i * n:(i + 1) * n]), []
        z = fw_norm(h)
        for t in range(x.shape[0]):
            s = tuple(v.detach() for v in s)
            y_t, s = fw._run(z[t:t + 1], s, reset[t:t + 1])
            ys.append(y_t)
        h = h + fw.out_proj(torch.cat(ys).flatten(2))
        h = h + ff(ff_norm(h))
    return h


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--unroll-length", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    B, T = args.batch_size, args.unroll_length
    x = torch.randn(T, B, 257)
    reset = torch.rand(T, B) < 0.02
    rows = []
    for name in CORES:
        full, cut = make_core(name, 257), make_core(name, 257, truncate_fast_weight_grad=True)
        cut.load_state_dict(full.state_dict())
        state = full.initial_state(B)
        ways = {"full BPTT": lambda: full(x, state, reset)[0],
                "truncated in the op": lambda: cut(x, state, reset)[0],
                "truncated, one call per step": lambda: per_step_forward(cut, x, state, reset)}
        times = {k: [] for k in ways}
        for _ in range(args.repeats):
            for k, forward in ways.items():
                t0 = time.perf_counter()
                forward().sum().backward()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        rows.append((name, med))
    print(f"# truncate_fast_weight_grad on the reference path (CPU, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}): 2-layer core forward+backward, B={B}, T={T}, median of {args.repeats}\n")
    print("| core | full BPTT (ms) | truncated in the op (ms) | truncated, one call per step (ms) | "
          "per-step / in-op |\n|---|---:|---:|---:|---:|")
    for name, med in rows:
        print(f"| {name} | {med['full BPTT']:.0f} | {med['truncated in the op']:.0f} | "
              f"{med['truncated, one call per step']:.0f} | "
              f"{med['truncated, one call per step'] / med['truncated in the op']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
