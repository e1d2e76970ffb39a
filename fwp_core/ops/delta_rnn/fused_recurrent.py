"""Fused Triton kernels of the Delta RNN, tested against naive.py.

    z_t = delta_rule(q, k, v, β)_t                                (W: a Delta Net, see delta_rule)
    R̃ = m_t R_{t-1}    δ = v_r − R̃ᵀk_r    R_t = R̃ + β_r k_r δᵀ    y_t = z_t + R_tᵀ softmax(m_t y_{t-1})

z never sees y, so it is the delta rule's kernel as is (with its column split across programs);
its output stays in the accumulation dtype. The recurrent part reads R_t with softmax(y_{t-1}),
which needs all of y_{t-1}: one program per (sequence, head) holds R and runs every step.

Its backward has the Recurrent Delta Net's problem (dy_{t-1} depends on R_t, in reverse order) and
the same answer (see rdn/fused_recurrent.py): the forward stores the step's p = softmax(y_{t-1}),
δ and R every CHECKPOINT_EVERY steps; the backward walks R back by subtracting the stored rank-one
write, restores it exactly at each checkpoint and replays the chunk across a reset.
"""
import torch
import triton
import triton.language as tl

from .. import _triton_utils as tu
from .._triton_utils import lanes, softmax
from ..delta_rule.fused_recurrent import DeltaRule
from ..delta_rule.fused_recurrent import _forward as _delta_rule_forward


@triton.jit
def _inputs(z, kr, sk_t, vr, sv_t, br, sb_t, reset, B, H, D, b, t, live, vec, o,
            HAS_RESET: tl.constexpr, ACC: tl.constexpr):
    """Step t's inputs and reset flag (zeros unless live), loaded a step ahead of their use so the
    load latency overlaps the previous step's arithmetic."""
    m = lanes(o, D, live)
    z_t = tl.load(z + t * B * H * D + vec, mask=m, other=0)
    k = tl.load(kr + t * sk_t + o, mask=m, other=0).to(ACC)
    v = tl.load(vr + t * sv_t + o, mask=m, other=0).to(ACC)
    beta = tl.load(br + t * sb_t, mask=live, other=0).to(ACC)
    r_t = tl.load(reset + t * B + b, mask=live & HAS_RESET, other=0) != 0
    return z_t, k, v, beta, r_t


@triton.jit
def _saved(p_buf, d_buf, kr, sk_t, br, sb_t, dy, reset, B, H, D, b, t, live, vec, o,
           HAS_RESET: tl.constexpr, ACC: tl.constexpr):
    """What the backward reads of step t (zeros unless live), loaded a step ahead of its use."""
    m = lanes(o, D, live)
    off = t * B * H * D + vec
    p = tl.load(p_buf + off, mask=m, other=0)
    d = tl.load(d_buf + off, mask=m, other=0)
    k = tl.load(kr + t * sk_t + o, mask=m, other=0).to(ACC)
    beta = tl.load(br + t * sb_t, mask=live, other=0).to(ACC)
    dy_t = tl.load(dy + off, mask=m, other=0).to(ACC)
    r_t = tl.load(reset + t * B + b, mask=live & HAS_RESET, other=0) != 0
    return p, d, k, beta, dy_t, r_t


@triton.jit(do_not_specialize=["T", "B", "H"])
def _delta_rnn_fwd(z, kr, sk_t, sk_b, sk_h, vr, sv_t, sv_b, sv_h, br, sb_t, sb_b, sb_h,
                   R0, y0, reset, y, RT, yT, p_buf, d_buf, ckpt, T, B, H, D, BD: tl.constexpr,
                   CK: tl.constexpr, HAS_RESET: tl.constexpr, SAVE: tl.constexpr, ACC: tl.constexpr):
    # z, y, p_buf, d_buf: [T, B, H, D] contiguous; ckpt: [ceil(T/CK), B, H, D, D].
    bh = tl.program_id(0).to(tl.int64)
    b, h = bh // H, bh % H
    o = tl.arange(0, BD)
    m = o < D
    m2 = m[:, None] & m[None, :]
    w_off = bh * D * D + o[:, None] * D + o[None, :]
    R = tl.load(R0 + w_off, mask=m2, other=0).to(ACC)
    y_prev = tl.load(y0 + bh * D + o, mask=m, other=0).to(ACC)
    kr, vr = kr + b * sk_b + h * sk_h, vr + b * sv_b + h * sv_h
    br = br + b * sb_b + h * sb_h
    vec = bh * D + o
    nz, nk, nv, nb, nr = _inputs(z, kr, sk_t, vr, sv_t, br, sb_t, reset, B, H, D, b, bh * 0, T > 0, vec, o,
                                 HAS_RESET, ACC)
    for t in range(T):
        t64 = tl.cast(t, tl.int64)
        z_t, k, v, beta, r_t = nz, nk, nv, nb, nr
        nz, nk, nv, nb, nr = _inputs(z, kr, sk_t, vr, sv_t, br, sb_t, reset, B, H, D, b, t64 + 1,
                                     t64 + 1 < T, vec, o, HAS_RESET, ACC)
        if SAVE:
            if t64 % CK == 0:
                tl.store(ckpt + (t64 // CK) * B * H * D * D + w_off, R, mask=m2)
        if HAS_RESET:
            R = tl.where(r_t, 0.0, R)
            y_prev = tl.where(r_t, 0.0, y_prev)
        p = softmax(y_prev, m)
        d = v - tl.sum(R * k[:, None], 0)
        R += (beta * k)[:, None] * d[None, :]
        off = t64 * B * H * D + vec
        y_prev = z_t + tl.sum(R * p[:, None], 0)
        tl.store(y + off, y_prev.to(y.dtype.element_ty), mask=m)
        if SAVE:
            tl.store(p_buf + off, p, mask=m)
            tl.store(d_buf + off, d, mask=m)
    tl.store(RT + w_off, R, mask=m2)
    tl.store(yT + bh * D + o, y_prev, mask=m)


@triton.jit(do_not_specialize=["T", "B", "H"])
def _delta_rnn_bwd(kr, sk_t, sk_b, sk_h, br, sb_t, sb_b, sb_h, RT, reset, p_buf, d_buf, ckpt,
                   dy, dRT, dyT, dz, dkr, dvr, dbr, dR0, dy0, T, B, H, D, BD: tl.constexpr,
                   CK: tl.constexpr, HAS_RESET: tl.constexpr, TRUNCATE: tl.constexpr, ACC: tl.constexpr):
    # p_buf, d_buf, dy, dz, dkr, dvr: [T, B, H, D] contiguous; dbr: [T, B, H].
    bh = tl.program_id(0).to(tl.int64)
    b, h = bh // H, bh % H
    o = tl.arange(0, BD)
    m = o < D
    m2 = m[:, None] & m[None, :]
    w_off = bh * D * D + o[:, None] * D + o[None, :]
    R = tl.load(RT + w_off, mask=m2, other=0)               # R_t, walked back step by step
    G = tl.load(dRT + w_off, mask=m2, other=0).to(ACC)      # dL/dR_t
    g_next = tl.load(dyT + bh * D + o, mask=m, other=0).to(ACC)  # dL/dy_t from step t+1
    kr, br = kr + b * sk_b + h * sk_h, br + b * sb_b + h * sb_h
    vec = bh * D + o
    tT = bh * 0 + T - 1
    np_, nd, nk, nb, ndy, nr = _saved(p_buf, d_buf, kr, sk_t, br, sb_t, dy, reset, B, H, D, b, tT, T > 0,
                                      vec, o, HAS_RESET, ACC)
    for i in range(T):
        t64 = tl.cast(T - 1 - i, tl.int64)
        off = t64 * B * H * D + vec
        p, d, k, beta, dy_t, r_t = np_, nd, nk, nb, ndy, nr
        np_, nd, nk, nb, ndy, nr = _saved(p_buf, d_buf, kr, sk_t, br, sb_t, dy, reset, B, H, D, b,
                                          t64 - 1, t64 > 0, vec, o, HAS_RESET, ACC)
        gy = g_next + dy_t
        tl.store(dz + off, gy, mask=m)
        # y = z + Rᵀp
        dp = tl.sum(R * gy[None, :], 1)
        G += p[:, None] * gy[None, :]
        # R = R̃ + β k δᵀ, δ = v − R̃ᵀk
        kG = tl.sum(G * k[:, None], 0)
        dd = beta * kG
        Rp = R - (beta * k)[:, None] * d[None, :]
        if HAS_RESET:
            Rp = tl.where(r_t, 0.0, Rp)
        tl.store(dvr + off, dd, mask=m)
        tl.store(dbr + t64 * B * H + bh, tl.sum(kG * d, 0))
        tl.store(dkr + off, beta * tl.sum(G * d[None, :], 1) - tl.sum(Rp * dd[None, :], 1), mask=m)
        G -= k[:, None] * dd[None, :]
        g_next = p * (dp - tl.sum(p * dp, 0))
        # R_{t-1}: subtract the write, or at a checkpoint / across a reset rebuild it exactly
        R = Rp
        at_ckpt = t64 % CK == 0
        if HAS_RESET:
            G = tl.where(r_t, 0.0, G)
            g_next = tl.where(r_t, 0.0, g_next)
            at_ckpt = at_ckpt | r_t
        if TRUNCATE:    # R_{t-1} and y_{t-1} are constants to step t: nothing flows further back
            G = tl.zeros_like(G)
            g_next = tl.zeros_like(g_next)
        if at_ckpt:
            c0 = t64 // CK * CK
            R = tl.load(ckpt + (t64 // CK) * B * H * D * D + w_off, mask=m2, other=0)
            for j in range(c0, t64):
                if HAS_RESET:
                    R = tl.where(tl.load(reset + j * B + b) != 0, 0.0, R)
                k_j = tl.load(kr + j * sk_t + o, mask=m, other=0).to(ACC)
                d_j = tl.load(d_buf + j * B * H * D + vec, mask=m, other=0)
                R += (tl.load(br + j * sb_t).to(ACC) * k_j)[:, None] * d_j[None, :]
    tl.store(dR0 + w_off, G, mask=m2)
    tl.store(dy0 + bh * D + o, g_next, mask=m)


def _recurrent_forward(z, kr, vr, br, R0, y0, reset, save, y_dtype):
    T, B, H, D = z.shape
    BD, acc, dev = tu.block(D), R0.dtype, z.device
    y = torch.empty(T, B, H, D, dtype=y_dtype, device=dev)
    RT, yT = torch.empty_like(R0), torch.empty_like(y0)
    if save:
        p, d = (torch.empty(T, B, H, D, dtype=acc, device=dev) for _ in range(2))
        ckpt = torch.empty(triton.cdiv(T, tu.CHECKPOINT_EVERY), B, H, D, D, dtype=acc, device=dev)
        saved = (p, d, ckpt)
    else:
        saved = (y,) * 3  # never written (SAVE=False)
    reset_bytes, has_reset = tu.reset_arg(reset, z)
    _delta_rnn_fwd[(B * H,)](z.contiguous(), *tu.seq(kr), *tu.seq(vr), *tu.steps(br), R0.contiguous(),
                             y0.contiguous(), reset_bytes, y, RT, yT, *saved, T, B, H, D, BD=BD,
                             CK=tu.CHECKPOINT_EVERY, HAS_RESET=has_reset, SAVE=save,
                             ACC=tu.acc_type(R0), num_warps=tu.warps(BD * BD, tiles_held=4))
    return y, RT, yT, (saved if save else None)


class _DeltaRNNRecurrence(torch.autograd.Function):
    """(z, kr, vr, br, R0, y0, reset, y_dtype, truncate) -> (y, R_final, y_final)."""

    @staticmethod
    def forward(ctx, z, kr, vr, br, R0, y0, reset, y_dtype, truncate):
        y, RT, yT, saved = _recurrent_forward(z, kr, vr, br, R0, y0, reset, True, y_dtype)
        ctx.save_for_backward(kr, br, RT, reset, *saved)
        ctx.dtypes = (z.dtype, kr.dtype, vr.dtype, br.dtype)
        ctx.truncate = truncate
        return y, RT, yT

    @staticmethod
    def backward(ctx, dy, dRT, dyT):
        kr, br, RT, reset, p, d, ckpt = ctx.saved_tensors
        T, B, H, D = p.shape
        BD = tu.block(D)
        dz, dkr, dvr = (torch.empty_like(p) for _ in range(3))
        dbr = torch.empty(T, B, H, dtype=p.dtype, device=p.device)
        dR0, dy0 = torch.empty_like(RT), torch.empty(B, H, D, dtype=p.dtype, device=p.device)
        reset_bytes, has_reset = tu.reset_arg(reset, p)
        _delta_rnn_bwd[(B * H,)](*tu.seq(kr), *tu.steps(br), RT, reset_bytes, p, d, ckpt,
                                 dy.contiguous(), dRT.contiguous(), dyT.contiguous(), dz, dkr, dvr,
                                 dbr, dR0, dy0, T, B, H, D, BD=BD, CK=tu.CHECKPOINT_EVERY,
                                 HAS_RESET=has_reset, TRUNCATE=ctx.truncate, ACC=tu.acc_type(RT),
                                 num_warps=tu.warps(BD * BD, tiles_held=4))
        dz_t, dk_t, dv_t, db_t = ctx.dtypes
        return (dz.to(dz_t), dkr.to(dk_t), dvr.to(dv_t), dbr.to(db_t), dR0, dy0, None, None, None)


def fused_recurrent_delta_rnn(q, k, v, beta, kr, vr, br, W, R, y_last, reset, truncate=False):
    """q, k, v, kr, vr: [T, B, H, D]; beta, br: [T, B, H]; W, R: [B, H, D, D] and y_last: [B, H, D]
    in float32/64; reset: [T, B] bool or None. Returns y [T, B, H, D] in q's dtype and the final
    (W, R, y_last). Without gradients to compute (the acting path: T = 1 under no_grad) it runs the
    two forward kernels alone and stores nothing for a backward."""
    inputs = (q, k, v, beta, kr, vr, br, W, R, y_last)
    tu.check_inputs("delta_rnn", _delta_rnn_fwd, inputs, (q.shape[-1],))
    if tu.needs_grad(*inputs):
        z, WT = DeltaRule.apply(q, k, v, beta, W, reset, W.dtype, truncate)
        y, RT, yT = _DeltaRNNRecurrence.apply(z, kr, vr, br, R, y_last, reset, q.dtype, truncate)
    else:
        z, WT, _ = _delta_rule_forward(q, k, v, beta, W, reset, False, W.dtype)
        y, RT, yT, _ = _recurrent_forward(z, kr, vr, br, R, y_last, reset, False, q.dtype)
    return y, (WT, RT, yT)
