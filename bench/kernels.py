"""Time the fused fast-weight kernels against the reference loops, cuDNN's LSTM and fla.

    python bench/kernels.py              # on a CUDA machine: prints a markdown table
    python bench/kernels.py --smoke      # no GPU: tiny shapes under Triton's interpreter, to prove
                                         # the script runs (its times mean nothing)

For each rule at the paper's RL shape (B=32, T=50, H=4, D=32) and a large one (B=256, T=80, H=8,
D=64): forward+backward (upstream gradient on y) and one acting step (T=1, under no_grad, state in
and out), each the median of CUDA-event timings (triton.testing.do_bench). Beside them: the reference
PyTorch loop, cuDNN's nn.LSTM with hidden size H·D on the same B, T, and flash-linear-attention's
fused_recurrent_delta_rule when `fla` imports (it has no per-step reset: it runs without one). Then
the whole 2-layer rdn core (full BPTT, and with truncate_fast_weight_grad) against the LSTM core
at B=32, T=50, all with input size 256.
"""
import argparse
import inspect
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {"paper RL": dict(B=32, T=50, H=4, D=32), "large": dict(B=256, T=80, H=8, D=64)}
SMOKE_SHAPES = {"smoke": dict(B=2, T=3, H=2, D=5)}
RULES = ("sum_rule", "delta_rule", "rdn", "delta_rnn")


def rule_inputs(torch, rule, B, T, H, D, device, dtype):
    """Inputs as the layers give them (feature maps applied where the rule expects it), with
    requires_grad, a zero initial state and a reset mask with a few episode starts."""
    g = torch.Generator(device="cpu").manual_seed(0)
    rn = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    sm = lambda x: torch.softmax(x, -1)  # noqa: E731
    seq = lambda: rn(T, B, H, D)  # noqa: E731
    if rule == "sum_rule":
        args, state = [sm(seq()), sm(seq()), seq()], [(B, H, D, D)]
    elif rule == "delta_rule":
        args, state = [sm(seq()), sm(seq()), seq(), torch.sigmoid(rn(T, B, H))], [(B, H, D, D)]
    elif rule == "rdn":
        R = lambda: rn(H, D, D) * (0.1 / D ** 0.5)  # noqa: E731
        args = [seq(), seq(), seq(), rn(T, B, H), R(), R(), R(), rn(H, D) * 0.1]
        state = [(B, H, D, D), (B, H, D)]
    else:
        args = [sm(seq()), sm(seq()), seq(), torch.sigmoid(rn(T, B, H)), sm(seq()), seq(),
                torch.sigmoid(rn(T, B, H))]
        state = [(B, H, D, D), (B, H, D, D), (B, H, D)]
    args = [a.to(dtype).requires_grad_() for a in args]
    state = tuple(torch.zeros(s, device=device) for s in state)
    reset = torch.rand(T, B, generator=g).to(device) < 0.02
    return args, state, reset


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on CPU under TRITON_INTERPRET=1 (no GPU needed)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="input dtype of the fast-weight ops (state and accumulation: float32)")
    opts = parser.parse_args()
    if opts.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernel modules are first imported
        os.environ["FWP_BACKEND"] = "triton"  # the rdn core too (on CUDA that is the default)
    import torch
    if not opts.smoke and not torch.cuda.is_available():
        print("bench/kernels.py: no CUDA device, nothing to measure (the kernels' timings need a GPU). "
              "Run it on a CUDA machine, or with --smoke to check the script under the interpreter.")
        return 0
    from fwp_core import make_core, ops

    device = "cpu" if opts.smoke else "cuda"
    dtype = getattr(torch, opts.dtype)
    shapes = SMOKE_SHAPES if opts.smoke else SHAPES
    if opts.smoke:
        def bench(fn):  # wall clock of a few runs: proves the code path, measures nothing
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(times)
    else:
        import triton.testing

        def bench(fn):
            return triton.testing.do_bench(fn, return_mode="median")

    fla_delta_rule, fla_note = None, ""
    try:
        from fla.ops.delta_rule import fused_recurrent_delta_rule as fla_delta_rule
    except Exception as e:  # fla 0.6 fails to import with triton 3.9 (ok with triton <= 3.8)
        fla_note = f"fla not importable ({type(e).__name__}: {str(e).splitlines()[0][:120]}): no fla rows"

    rows = []

    def fwd_bwd_and_step(call, args, state, reset, step_args, step_reset=None):
        """call(args, state, reset) -> (y, final state). Times forward+backward on the whole
        sequence (upstream gradient on y) and one step under no_grad on step_args."""
        dy = torch.randn_like(call(args, state, reset)[0])

        def train():
            y, _ = call(args, state, reset)
            y.backward(dy)

        def act():
            with torch.no_grad():
                call(step_args, state, step_reset)

        return bench(train), bench(act)

    for shape_name, s in shapes.items():
        B, T, H, D = s["B"], s["T"], s["H"], s["D"]
        label = f"{shape_name} B={B} T={T} H={H} D={D}"
        for rule in RULES:
            args, state, reset = rule_inputs(torch, rule, B, T, H, D, device, dtype)
            timed = 4 if rule == "rdn" else len(args)        # rdn's Rq, Rk, Rv, rb are not per step
            step = [a.detach()[:1] for a in args[:timed]] + [a.detach() for a in args[timed:]]
            for backend in ("triton", "reference"):
                call = lambda a, st, r, rule=rule, backend=backend: getattr(ops, rule)(  # noqa: E731
                    *a, state=st, reset=r, backend=backend)
                rows.append((label, f"{rule} ({backend})",
                             *fwd_bwd_and_step(call, args, state, reset, step, reset[:1])))
            if rule == "delta_rule" and fla_delta_rule is not None:
                bthk = [a.detach().transpose(0, 1).contiguous().requires_grad_() for a in args]
                params = inspect.signature(fla_delta_rule).parameters
                kw = {"head_first": False} if "head_first" in params else {}  # older fla: [B, H, T, D]
                call = lambda a, st, r: fla_delta_rule(  # noqa: E731
                    a[0], a[1], a[2], a[3], scale=1.0, initial_state=st[0], output_final_state=True, **kw)
                rows.append((label, "delta_rule (fla fused_recurrent, no reset)",
                             *fwd_bwd_and_step(call, bthk, state, None, [a.detach()[:, :1] for a in bthk])))
        lstm = torch.nn.LSTM(H * D, H * D).to(device)
        x = torch.randn(T, B, H * D, device=device, requires_grad=True)
        hc = tuple(torch.zeros(1, B, H * D, device=device) for _ in range(2))
        call = lambda a, st, r: lstm(a[0], st)  # noqa: E731
        rows.append((label, f"cuDNN nn.LSTM({H * D}, {H * D})",
                     *fwd_bwd_and_step(call, [x], hc, None, [x.detach()[:1]])))

    B, T = (2, 3) if opts.smoke else (32, 50)
    core_label = f"core B={B} T={T} in=256"
    core_names = {"rdn": "rdn core (2 layers, 4 heads of 32)", "lstm": "lstm core (hidden 256)",
                  "rdn_cut": "rdn core, truncate_fast_weight_grad"}
    for name in ("rdn", "lstm", "rdn_cut"):
        core = make_core(name.removesuffix("_cut"), 256, truncate_fast_weight_grad=name.endswith("_cut")).to(device)
        x = torch.randn(T, B, 256, device=device)
        reset = torch.zeros(T, B, dtype=torch.bool, device=device)
        reset[T // 2, 0] = True
        call = lambda a, st, r, core=core: core(a[0], st, r)  # noqa: E731
        rows.append((core_label, core_names[name],
                     *fwd_bwd_and_step(call, [x], core.initial_state(B), reset, [x[:1]], reset[:1])))

    if opts.smoke:
        where = "CPU, Triton interpreter: smoke run, times meaningless"
    else:
        where = torch.cuda.get_device_name()
    import triton
    print(f"# Fast-weight kernels ({where}; torch {torch.__version__}, triton {triton.__version__}, "
          f"inputs {opts.dtype}, state float32)\n")
    print("| shape | what | forward+backward (ms) | acting step T=1 (ms) |\n|---|---|---|---|")
    for label, what, train, act in rows:
        print(f"| {label} | {what} | {train:.3f} | {act:.3f} |")
    by = {(label, what): (train, act) for label, what, train, act in rows}
    print()
    for label in {r[0] for r in rows if r[1].startswith("delta_rule (triton)")}:
        fla_row = by.get((label, "delta_rule (fla fused_recurrent, no reset)"))
        if fla_row:
            speedup = fla_row[0] / by[(label, "delta_rule (triton)")][0]
            print(f"- {label}: delta_rule forward+backward {speedup:.2f}x faster than fla's "
                  f"fused_recurrent_delta_rule (target >= 3x)")
    rdn_core, lstm_core = by[(core_label, core_names["rdn"])], by[(core_label, core_names["lstm"])]
    print(f"- rdn core / LSTM core time: forward+backward {rdn_core[0] / lstm_core[0]:.2f}, acting step "
          f"{rdn_core[1] / lstm_core[1]:.2f} (targets <= 1)")
    if fla_note:
        print(f"- {fla_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
