"""Time the fused fast-weight kernels against the reference loops, cuDNN's LSTM and fla.

    python bench/kernels.py              # on a CUDA machine: prints a markdown table
    python bench/kernels.py --dtype float32 bfloat16 --sweep     # what bench/gpu_check.sh runs
    python bench/kernels.py --smoke      # no GPU: tiny shapes under Triton's interpreter, to prove
                                         # the script runs (its times mean nothing)

For each rule at the paper's RL shape (B=32, T=50, H=4, D=32) and a large one (B=256, T=80, H=8,
D=64): forward+backward (upstream gradient on y) and one acting step (T=1, under no_grad, state in
and out), each the median of CUDA-event timings (triton.testing.do_bench). Beside them: the reference
PyTorch loop, cuDNN's nn.LSTM with hidden size H·D on the same B, T, and flash-linear-attention's
fused_recurrent_delta_rule when `fla` imports (it has no per-step reset: it runs without one). Then
the whole 2-layer rdn core (full BPTT, and with truncate_fast_weight_grad) against the LSTM core
at B=32, T=50, all with input size 256. With bfloat16 inputs the ops get bf16 tensors and the LSTM
and the cores run under bf16 autocast, as the learner does.

--sweep: delta_rule (the column-split launch sum_rule shares) and rdn (the recurrent one delta_rnn
shares) with one launch knob of fwp_core/ops/_triton_utils.py changed at a time: the column block BV
and the warps of column_blocks, CHECKPOINT_EVERY and the warps of the recurrent kernels; each row also
gives how far its y is from the launch the wrappers choose now (0 or rounding, else a bug).
Tables are printed row by row, so a run stopped at a time limit keeps what it measured.
"""
import argparse
import inspect
import os
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


def fla_call(torch, fla_delta_rule):
    """fla's fused_recurrent_delta_rule as `call(args, state, reset)` on our [T, B, H, ...] inputs
    transposed to its [B, T, H, ...] once (outside the timing), and the transposed step inputs."""
    params = inspect.signature(fla_delta_rule).parameters
    kw = {"head_first": False} if "head_first" in params else {}   # older fla: [B, H, T, D] by default

    def wrap(args, state):
        bthk = [a.detach().transpose(0, 1).contiguous().requires_grad_() for a in args]
        # The initial state asks for its gradient: fla's backward then writes dh0 (one [B, H, D, D]
        # store); without it Triton's interpreter fails on the kernel's None pointer (the dry run).
        h0 = state[0].detach().clone().requires_grad_()
        return bthk, (h0,)

    def call(a, st, r):
        return fla_delta_rule(a[0], a[1], a[2], a[3], scale=1.0, initial_state=st[0],
                              output_final_state=True, **kw)
    return wrap, call


def sweep_configs(tu, rule, B, H, D, device, smoke):
    """(label, patches) around the launch the wrappers choose now: one knob changed at a time.
    delta_rule stands for the column-split rules (sum_rule shares its launch), rdn for the
    recurrent ones (delta_rnn shares CHECKPOINT_EVERY and the warps rule)."""
    import triton
    if rule == "delta_rule":
        BK, BV0, _, W0 = tu.column_blocks(B, H, D, D, device)
        configs = [(BV0, W0)]
        bvs = [bv for bv in (8, 16, 32, 64) if bv <= tu.block(D)]
        configs += [(bv, W0) for bv in bvs] + [(BV0, w) for w in (1, 2, 4, 8)]
        if smoke:
            configs = configs[:1] + [(BV0, 1 if W0 != 1 else 2)]
        out = []
        for bv, w in dict.fromkeys(configs):
            def blocks(B_, H_, DK, DV, dev, bv=bv, w=w):
                return tu.block(DK), bv, triton.cdiv(DV, bv), w
            label = f"BV={bv}, warps={w}" + (" (now)" if (bv, w) == (BV0, W0) else "")
            out.append((label, {"column_blocks": blocks}))
        return out
    W0, CK0 = tu.warps(tu.block(D) ** 2, tiles_held=4), tu.CHECKPOINT_EVERY
    configs = [(CK0, W0)] + [(ck, W0) for ck in (4, 8, 16, 32)] + [(CK0, w) for w in (2, 4, 8)]
    if smoke:
        configs = configs[:1] + [(2, 2 if W0 != 2 else 4)]      # both knobs at once: the path, not a sweep
    out = []
    for ck, w in dict.fromkeys(configs):
        label = f"CHECKPOINT_EVERY={ck}, warps={w}" + (" (now)" if (ck, w) == (CK0, W0) else "")
        out.append((label, {"CHECKPOINT_EVERY": ck, "warps": lambda tile, tiles_held=2, w=w: w}))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on CPU under TRITON_INTERPRET=1 (no GPU needed)")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=("float32", "bfloat16"),
                        help="input dtype(s) of the fast-weight ops, one table each (state and accumulation: "
                             "float32; the LSTM and the cores run under bf16 autocast in the bfloat16 table)")
    parser.add_argument("--sweep", action="store_true",
                        help="then time delta_rule and rdn (float32) with the launch knobs of "
                             "fwp_core/ops/_triton_utils.py changed one at a time: column block, warps, "
                             "CHECKPOINT_EVERY")
    parser.add_argument("--sweep-seconds", type=float, default=float("inf"),
                        help="start no new sweep launch after this many seconds (each compiles kernels)")
    opts = parser.parse_args()
    if opts.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernel modules are first imported
        os.environ["FWP_BACKEND"] = "triton"  # the rdn core too (on CUDA that is the default)
    import torch
    if not opts.smoke and not torch.cuda.is_available():
        print("bench/kernels.py: no CUDA device, nothing to measure (the kernels' timings need a GPU). "
              "Run it on a CUDA machine, or with --smoke to check the script under the interpreter.")
        return 0
    import triton

    from fwp_core import make_core, ops
    from fwp_core.ops import _triton_utils as tu

    device = "cpu" if opts.smoke else "cuda"
    shapes = SMOKE_SHAPES if opts.smoke else SHAPES
    if opts.smoke:
        def bench(fn):  # one wall-clock run: proves the code path, measures nothing
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    else:
        import triton.testing

        def bench(fn):
            return triton.testing.do_bench(fn, return_mode="median")

    fla_delta_rule, fla_note = None, ""
    try:
        from fla.ops.delta_rule import fused_recurrent_delta_rule as fla_delta_rule
    except Exception as e:  # not installed, or an fla that does not import with this Triton
        fla_note = f"fla not importable ({type(e).__name__}: {str(e).splitlines()[0][:120]}): no fla rows"
    else:
        import fla
        fla_note = f"fla {getattr(fla, '__version__', '?')}: fused_recurrent_delta_rule runs without resets"

    seen = {}

    def fwd_bwd_and_step(call, args, state, reset, step_args, step_reset=None, autocast=False):
        """call(args, state, reset) -> (y, final state). Times forward+backward on the whole
        sequence (upstream gradient on y) and one step under no_grad on step_args."""
        amp = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=autocast)  # noqa: E731
        with amp():
            dy = torch.randn_like(call(args, state, reset)[0])
        seen["y"] = str(dy.dtype).removeprefix("torch.")

        def train():
            with amp():
                y, _ = call(args, state, reset)
            y.backward(dy)

        def act():
            with torch.no_grad(), amp():
                call(step_args, state, step_reset)

        return bench(train), bench(act)

    where = "CPU, Triton interpreter: smoke run, times meaningless" if opts.smoke else torch.cuda.get_device_name()
    print(f"# Fast-weight kernels ({where}; torch {torch.__version__}, triton {triton.__version__})\n")
    if fla_note:
        print(f"- {fla_note}")
    core_B, core_T = (2, 3) if opts.smoke else (32, 50)
    core_label = f"core B={core_B} T={core_T} in=256"
    core_names = {"rdn": "rdn core (2 layers, 4 heads of 32)", "lstm": "lstm core (hidden 256)",
                  "rdn_cut": "rdn core, truncate_fast_weight_grad"}
    core_sizes = {}
    if opts.smoke:   # the paper's core under the interpreter takes seconds per call: a small one
        core_names = {"rdn": "rdn core (2 layers, 2 heads of 4)", "lstm": "lstm core (hidden 8)",
                      "rdn_cut": "rdn core, truncate_fast_weight_grad"}
        core_sizes = dict(d_model=8, num_heads=2, head_dim=4, ff_dim=16, hidden_size=8)
    for dtype_name in opts.dtype:
        dtype = getattr(torch, dtype_name)
        # The learner's bf16 is CUDA autocast; the CPU's oneDNN LSTM refuses bf16 autocast here, so
        # the smoke run's LSTM and cores stay float32 in the bf16 table (the rows say what y was).
        amp = dtype == torch.bfloat16 and device == "cuda"
        print(f"\n## inputs {dtype_name}, state float32" + (" (LSTM and cores: bf16 autocast)" if amp else "")
              + "\n")
        print("| shape | what | forward+backward (ms) | acting step T=1 (ms) |\n|---|---|---|---|", flush=True)
        by = {}

        def row(label, what, times):
            by[(label, what)] = times
            print(f"| {label} | {what} | {times[0]:.3f} | {times[1]:.3f} |", flush=True)

        for shape_name, sh in shapes.items():
            B, T, H, D = sh["B"], sh["T"], sh["H"], sh["D"]
            label = f"{shape_name} B={B} T={T} H={H} D={D}"
            for rule in RULES:
                args, state, reset = rule_inputs(torch, rule, B, T, H, D, device, dtype)
                timed = 4 if rule == "rdn" else len(args)        # rdn's Rq, Rk, Rv, rb are not per step
                step = [a.detach()[:1] for a in args[:timed]] + [a.detach() for a in args[timed:]]
                for backend in ("triton", "reference"):
                    call = lambda a, st, r, rule=rule, backend=backend: getattr(ops, rule)(  # noqa: E731
                        *a, state=st, reset=r, backend=backend)
                    row(label, f"{rule} ({backend})", fwd_bwd_and_step(call, args, state, reset, step, reset[:1]))
                if rule == "delta_rule" and fla_delta_rule is not None:
                    what = "delta_rule (fla fused_recurrent, no reset)"
                    try:
                        wrap, call = fla_call(torch, fla_delta_rule)
                        bthk, h0 = wrap(args, state)
                        row(label, what, fwd_bwd_and_step(call, bthk, h0, None, [a.detach()[:, :1] for a in bthk]))
                    except Exception as e:  # noqa: BLE001  fla's failure is a finding, not the end of the run
                        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:150]
                        print(f"| {label} | {what}: failed, {msg.replace('|', '/')} | - | - |", flush=True)
            lstm = torch.nn.LSTM(H * D, H * D).to(device)
            x = torch.randn(T, B, H * D, device=device, requires_grad=True)
            hc = tuple(torch.zeros(1, B, H * D, device=device) for _ in range(2))
            call = lambda a, st, r: lstm(a[0], st)  # noqa: E731
            times = fwd_bwd_and_step(call, [x], hc, None, [x.detach()[:1]], autocast=amp)
            row(label, f"{'cuDNN ' if device == 'cuda' else ''}nn.LSTM({H * D}, {H * D}), y {seen['y']}", times)
        for name in ("rdn", "lstm", "rdn_cut") if not (opts.smoke and dtype_name != opts.dtype[0]) else ():
            core = make_core(name.removesuffix("_cut"), 256, truncate_fast_weight_grad=name.endswith("_cut"),
                             **core_sizes).to(device)
            x = torch.randn(core_T, core_B, 256, device=device)
            reset = torch.zeros(core_T, core_B, dtype=torch.bool, device=device)
            reset[core_T // 2, 0] = True
            call = lambda a, st, r, core=core: core(a[0], st, r)  # noqa: E731
            times = fwd_bwd_and_step(call, [x], core.initial_state(core_B), reset, [x[:1]], reset[:1], autocast=amp)
            row(core_label, f"{core_names[name]}, y {seen['y']}", times)
        print()
        for label in dict.fromkeys(k[0] for k in by if k[1] == "delta_rule (triton)"):
            fla_row = by.get((label, "delta_rule (fla fused_recurrent, no reset)"))
            if fla_row:
                speedup = fla_row[0] / by[(label, "delta_rule (triton)")][0]
                print(f"- {label}: delta_rule forward+backward {speedup:.2f}x faster than fla's "
                      f"fused_recurrent_delta_rule (target >= 3x)")
        cores = [[v for (lab, what), v in by.items() if lab == core_label and what.startswith(core_names[n] + ",")]
                 for n in ("rdn", "lstm")]
        if all(cores):           # (the smoke run times the cores in its first table only)
            (rdn_core,), (lstm_core,) = cores
            print(f"- rdn core / LSTM core time: forward+backward {rdn_core[0] / lstm_core[0]:.2f}, acting step "
                  f"{rdn_core[1] / lstm_core[1]:.2f} (targets <= 1)", flush=True)

    if opts.sweep:
        print("\n## launch knobs (float32 inputs; one changed at a time from the launch the wrappers "
              "choose now)\n")
        print("| shape | rule | launch | forward+backward (ms) | acting step T=1 (ms) | max abs y - y now |\n"
              "|---|---|---|---|---|---|", flush=True)
        saved = {k: getattr(tu, k) for k in ("column_blocks", "warps", "CHECKPOINT_EVERY")}
        groups = []        # one per (shape, rule): its inputs and its configs, the launch now first
        for shape_name, sh in shapes.items():
            B, T, H, D = sh["B"], sh["T"], sh["H"], sh["D"]
            for rule in ("delta_rule", "rdn"):
                args, state, reset = rule_inputs(torch, rule, B, T, H, D, device, torch.float32)
                timed = 4 if rule == "rdn" else len(args)
                step = [a.detach()[:1] for a in args[:timed]] + [a.detach() for a in args[timed:]]
                groups.append(dict(label=f"{shape_name} B={B} T={T} H={H} D={D}", rule=rule, args=args, state=state,
                                   reset=reset, step=step, y_now=None,
                                   configs=sweep_configs(tu, rule, B, H, D, torch.device(device), opts.smoke)))
        # Round robin over the groups (each compiles new kernels per config), until --sweep-seconds.
        order = [(g, g["configs"][i]) for i in range(max(len(g["configs"]) for g in groups)) for g in groups
                 if i < len(g["configs"])]
        t0, left = time.monotonic(), 0
        for n, (g, (what, patches)) in enumerate(order):
            if time.monotonic() - t0 > opts.sweep_seconds:
                left = len(order) - n
                break
            label, rule = g["label"], g["rule"]
            call = lambda a, st, r, rule=rule: getattr(ops, rule)(*a, state=st, reset=r, backend="triton")  # noqa: E731
            try:
                for k, v in patches.items():
                    setattr(tu, k, v)
                with torch.no_grad():
                    y = call(g["args"], g["state"], g["reset"])[0]
                if g["y_now"] is None and "(now)" in what:
                    g["y_now"] = y
                diff = f"{(y - g['y_now']).abs().max().item():.1e}" if g["y_now"] is not None else "-"
                train, act = fwd_bwd_and_step(call, g["args"], g["state"], g["reset"], g["step"], g["reset"][:1])
                print(f"| {label} | {rule} | {what} | {train:.3f} | {act:.3f} | {diff} |", flush=True)
            except Exception as e:  # noqa: BLE001  a launch the compiler refuses is a finding
                msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:150]
                print(f"| {label} | {rule} | {what} | failed: {msg.replace('|', '/')} | - | - |", flush=True)
            finally:
                for k, v in saved.items():
                    setattr(tu, k, v)
        if left:
            print(f"\n- sweep stopped at --sweep-seconds {opts.sweep_seconds:g}: {left} of {len(order)} launches not timed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
