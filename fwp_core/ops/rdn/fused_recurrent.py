"""Fused Triton kernels of the Recurrent Delta Net, tested against naive.py.

    s = tanh(m_t y_{t-1})    q = softmax(q_x + R_q s)    k = softmax(k_x + R_k s)    v = v_x + R_v s
    β = σ(b_x + r_b·s)       W̃ = m_t W_{t-1}    δ = v − W̃ᵀk    W_t = W̃ + β k δᵀ    y_t = W_tᵀ q

The step's q, k, v, β depend on all of y_{t-1}, so one program owns one (sequence, head) with its
whole [D, D] fast weight and the head's R_q, R_k, R_v in registers, and runs all T steps: one launch
forward, one backward, however long the sequence.

Backward. Every step's gradient needs W_t and W̃ in reverse order, and it feeds dy_{t-1}, so the
forward replay that serves the delta rule is not enough. Storing W every step would take
T·B·H·D² floats (2.7 GB at B=256, T=80, H=8, D=64). Inverting the update
(W̃ = (I − βkkᵀ)⁻¹(W_t − βkvᵀ)) is unsound: singular when β|k|² → 1 and undefined across a reset.
Instead the forward stores the step's small vectors (s, q, k, δ, β) and W every CHECKPOINT_EVERY
steps (before that step's reset), and the backward walks W back by subtracting the stored rank-one
write, W̃ = W_t − β k δᵀ: no division, so rounding errors add (about one ulp of W per step) instead
of being amplified. Each checkpoint restores W exactly, bounding that drift to one chunk, and a reset
(which erases W_{t-1}) is crossed by replaying the chunk from its checkpoint.

The gradients of the per-head R_q, R_k, R_v, r_b are sums over (t, b) of outer products of the
pre-activation gradients with s: the kernel writes those per-step gradients (they are dq_x, dk_x,
dv_x, db_x anyway) and one batched matmul on the host reduces them, instead of per-program partial
matrices. With truncation (TRUNCATE) the carried dL/dW and dL/dy_{t-1} restart from zero at every
step: W_{t-1} and y_{t-1} are constants to step t (R and r_b still collect every step's share).
"""
import torch
import triton
import triton.language as tl

from .. import _triton_utils as tu
from .._triton_utils import lanes, softmax


@triton.jit
def _tanh(x):
    return 2 * tl.sigmoid(2 * x) - 1


@triton.jit
def _inputs(qx, sq_t, kx, sk_t, vx, sv_t, bx, sb_t, reset, B, b, t, live, o, D,
            HAS_RESET: tl.constexpr, ACC: tl.constexpr):
    """Step t's slow-net inputs and reset flag (zeros unless live), loaded a step ahead of their
    use so the load latency overlaps the previous step's arithmetic."""
    m = lanes(o, D, live)
    qx_t = tl.load(qx + t * sq_t + o, mask=m, other=0).to(ACC)
    kx_t = tl.load(kx + t * sk_t + o, mask=m, other=0).to(ACC)
    vx_t = tl.load(vx + t * sv_t + o, mask=m, other=0).to(ACC)
    bx_t = tl.load(bx + t * sb_t, mask=live, other=0).to(ACC)
    r_t = tl.load(reset + t * B + b, mask=live & HAS_RESET, other=0) != 0
    return qx_t, kx_t, vx_t, bx_t, r_t


@triton.jit
def _saved(s_buf, q_buf, k_buf, d_buf, b_buf, dy, reset, B, H, D, b, bh, t, live, vec, o,
           HAS_RESET: tl.constexpr, ACC: tl.constexpr):
    """What the backward reads of step t (zeros unless live), loaded a step ahead of its use."""
    m = lanes(o, D, live)
    off = t * B * H * D + vec
    s = tl.load(s_buf + off, mask=m, other=0)
    q = tl.load(q_buf + off, mask=m, other=0)
    k = tl.load(k_buf + off, mask=m, other=0)
    d = tl.load(d_buf + off, mask=m, other=0)
    beta = tl.load(b_buf + t * B * H + bh, mask=live, other=0)
    dy_t = tl.load(dy + off, mask=m, other=0).to(ACC)
    r_t = tl.load(reset + t * B + b, mask=live & HAS_RESET, other=0) != 0
    return s, q, k, d, beta, dy_t, r_t


@triton.jit(do_not_specialize=["T", "B", "H"])
def _rdn_fwd(qx, sq_t, sq_b, sq_h, kx, sk_t, sk_b, sk_h, vx, sv_t, sv_b, sv_h, bx, sb_t, sb_b, sb_h,
             Rq, Rk, Rv, rb, W0, y0, reset, y, WT, yT, s_buf, q_buf, k_buf, d_buf, b_buf, ckpt,
             T, B, H, D, BD: tl.constexpr, CK: tl.constexpr, HAS_RESET: tl.constexpr,
             SAVE: tl.constexpr, ACC: tl.constexpr):
    # y, *_buf: [T, B, H, D] contiguous ([T, B, H] for b_buf), ckpt: [ceil(T/CK), B, H, D, D].
    bh = tl.program_id(0).to(tl.int64)
    b, h = bh // H, bh % H
    o = tl.arange(0, BD)
    m = o < D
    m2 = m[:, None] & m[None, :]
    r_off = h * D * D + o[:, None] * D + o[None, :]          # R[h, i, j]: i rows, j columns
    Rq = tl.load(Rq + r_off, mask=m2, other=0).to(ACC)
    Rk = tl.load(Rk + r_off, mask=m2, other=0).to(ACC)
    Rv = tl.load(Rv + r_off, mask=m2, other=0).to(ACC)
    rb = tl.load(rb + h * D + o, mask=m, other=0).to(ACC)
    w_off = bh * D * D + o[:, None] * D + o[None, :]
    W = tl.load(W0 + w_off, mask=m2, other=0).to(ACC)
    y_prev = tl.load(y0 + bh * D + o, mask=m, other=0).to(ACC)
    qx, kx, vx = qx + b * sq_b + h * sq_h, kx + b * sk_b + h * sk_h, vx + b * sv_b + h * sv_h
    bx = bx + b * sb_b + h * sb_h
    vec = bh * D + o                                        # this head's lanes in [T, B, H, D]
    t0 = bh * 0
    nq, nk, nv, nb, nr = _inputs(qx, sq_t, kx, sk_t, vx, sv_t, bx, sb_t, reset, B, b, t0, T > 0, o, D,
                                 HAS_RESET, ACC)
    for t in range(T):
        t64 = tl.cast(t, tl.int64)
        qx_t, kx_t, vx_t, bx_t, r_t = nq, nk, nv, nb, nr
        nq, nk, nv, nb, nr = _inputs(qx, sq_t, kx, sk_t, vx, sv_t, bx, sb_t, reset, B, b, t64 + 1,
                                     t64 + 1 < T, o, D, HAS_RESET, ACC)
        if SAVE:
            if t64 % CK == 0:
                tl.store(ckpt + (t64 // CK) * B * H * D * D + w_off, W, mask=m2)
        if HAS_RESET:
            W = tl.where(r_t, 0.0, W)
            y_prev = tl.where(r_t, 0.0, y_prev)
        s = _tanh(y_prev)
        q = softmax(qx_t + tl.sum(Rq * s[None, :], 1), m)
        k = softmax(kx_t + tl.sum(Rk * s[None, :], 1), m)
        v = vx_t + tl.sum(Rv * s[None, :], 1)
        beta = tl.sigmoid(bx_t + tl.sum(rb * s, 0))
        d = v - tl.sum(W * k[:, None], 0)
        W += (beta * k)[:, None] * d[None, :]
        y_prev = tl.sum(W * q[:, None], 0)
        off = t64 * B * H * D + vec
        tl.store(y + off, y_prev.to(y.dtype.element_ty), mask=m)
        if SAVE:
            tl.store(s_buf + off, s, mask=m)
            tl.store(q_buf + off, q, mask=m)
            tl.store(k_buf + off, k, mask=m)
            tl.store(d_buf + off, d, mask=m)
            tl.store(b_buf + t64 * B * H + bh, beta)
    tl.store(WT + w_off, W, mask=m2)
    tl.store(yT + bh * D + o, y_prev, mask=m)


@triton.jit(do_not_specialize=["T", "B", "H"])
def _rdn_bwd(Rq, Rk, Rv, rb, WT, reset, s_buf, q_buf, k_buf, d_buf, b_buf, ckpt, dy, dWT, dyT,
             dqx, dkx, dvx, dbx, dW0, dy0, T, B, H, D, BD: tl.constexpr, CK: tl.constexpr,
             HAS_RESET: tl.constexpr, TRUNCATE: tl.constexpr, ACC: tl.constexpr):
    # Every [T, B, H, D] tensor here is contiguous; dqx..dbx are the pre-activation gradients.
    bh = tl.program_id(0).to(tl.int64)
    b, h = bh // H, bh % H
    o = tl.arange(0, BD)
    m = o < D
    m2 = m[:, None] & m[None, :]
    r_off = h * D * D + o[:, None] * D + o[None, :]
    Rq = tl.load(Rq + r_off, mask=m2, other=0).to(ACC)
    Rk = tl.load(Rk + r_off, mask=m2, other=0).to(ACC)
    Rv = tl.load(Rv + r_off, mask=m2, other=0).to(ACC)
    rb = tl.load(rb + h * D + o, mask=m, other=0).to(ACC)
    w_off = bh * D * D + o[:, None] * D + o[None, :]
    W = tl.load(WT + w_off, mask=m2, other=0)               # W_t, walked back step by step
    G = tl.load(dWT + w_off, mask=m2, other=0).to(ACC)      # dL/dW_t
    g_next = tl.load(dyT + bh * D + o, mask=m, other=0).to(ACC)  # dL/dy_t from step t+1
    vec = bh * D + o
    tT = bh * 0 + T - 1
    ns, nq, nk, nd, nb, ndy, nr = _saved(s_buf, q_buf, k_buf, d_buf, b_buf, dy, reset, B, H, D, b, bh,
                                         tT, T > 0, vec, o, HAS_RESET, ACC)
    for i in range(T):
        t64 = tl.cast(T - 1 - i, tl.int64)
        off = t64 * B * H * D + vec
        s, q, k, d, beta, dy_t, r_t = ns, nq, nk, nd, nb, ndy, nr
        ns, nq, nk, nd, nb, ndy, nr = _saved(s_buf, q_buf, k_buf, d_buf, b_buf, dy, reset, B, H, D, b,
                                             bh, t64 - 1, t64 > 0, vec, o, HAS_RESET, ACC)
        gy = g_next + dy_t
        # y = Wᵀq
        dq = tl.sum(W * gy[None, :], 1)
        G += q[:, None] * gy[None, :]
        # W = W̃ + β k δᵀ, δ = v − W̃ᵀk
        kG = tl.sum(G * k[:, None], 0)
        dd = beta * kG
        db = tl.sum(kG * d, 0)
        Wp = W - (beta * k)[:, None] * d[None, :]
        if HAS_RESET:
            Wp = tl.where(r_t, 0.0, Wp)
        dk = beta * tl.sum(G * d[None, :], 1) - tl.sum(Wp * dd[None, :], 1)
        G -= k[:, None] * dd[None, :]
        # the feature maps and the recurrent projections of s
        dab = db * beta * (1 - beta)
        daq = q * (dq - tl.sum(q * dq, 0))
        dak = k * (dk - tl.sum(k * dk, 0))
        tl.store(dqx + off, daq, mask=m)
        tl.store(dkx + off, dak, mask=m)
        tl.store(dvx + off, dd, mask=m)
        tl.store(dbx + t64 * B * H + bh, dab)
        ds = (tl.sum(Rq * daq[:, None], 0) + tl.sum(Rk * dak[:, None], 0)
              + tl.sum(Rv * dd[:, None], 0) + rb * dab)
        g_next = ds * (1 - s * s)
        # W_{t-1}: subtract the write, or at a checkpoint / across a reset rebuild it exactly
        W = Wp
        at_ckpt = t64 % CK == 0
        if HAS_RESET:
            G = tl.where(r_t, 0.0, G)
            g_next = tl.where(r_t, 0.0, g_next)
            at_ckpt = at_ckpt | r_t
        if TRUNCATE:    # W_{t-1} and y_{t-1} are constants to step t: nothing flows further back
            G = tl.zeros_like(G)
            g_next = tl.zeros_like(g_next)
        if at_ckpt:
            c0 = t64 // CK * CK
            W = tl.load(ckpt + (t64 // CK) * B * H * D * D + w_off, mask=m2, other=0)
            for j in range(c0, t64):
                if HAS_RESET:
                    W = tl.where(tl.load(reset + j * B + b) != 0, 0.0, W)
                off_j = j * B * H * D + vec
                k_j = tl.load(k_buf + off_j, mask=m, other=0)
                d_j = tl.load(d_buf + off_j, mask=m, other=0)
                W += (tl.load(b_buf + j * B * H + bh) * k_j)[:, None] * d_j[None, :]
    tl.store(dW0 + w_off, G, mask=m2)
    tl.store(dy0 + bh * D + o, g_next, mask=m)


def _forward(qx, kx, vx, bx, Rq, Rk, Rv, rb, W0, y0, reset, save):
    T, B, H, D = qx.shape
    BD, acc, dev = tu.block(D), W0.dtype, qx.device
    y = torch.empty(T, B, H, D, dtype=qx.dtype, device=dev)
    WT, yT = torch.empty_like(W0), torch.empty_like(y0)
    if save:
        s, q, k, d = (torch.empty(T, B, H, D, dtype=acc, device=dev) for _ in range(4))
        beta = torch.empty(T, B, H, dtype=acc, device=dev)
        ckpt = torch.empty(triton.cdiv(T, tu.CHECKPOINT_EVERY), B, H, D, D, dtype=acc, device=dev)
        saved = (s, q, k, d, beta, ckpt)
    else:
        saved = (y,) * 6  # never written (SAVE=False): nothing is allocated for a backward
    reset_bytes, has_reset = tu.reset_arg(reset, qx)
    _rdn_fwd[(B * H,)](*tu.seq(qx), *tu.seq(kx), *tu.seq(vx), *tu.steps(bx), Rq.contiguous(),
                       Rk.contiguous(), Rv.contiguous(), rb.contiguous(), W0.contiguous(),
                       y0.contiguous(), reset_bytes, y, WT, yT, *saved, T, B, H, D, BD=BD,
                       CK=tu.CHECKPOINT_EVERY, HAS_RESET=has_reset, SAVE=save,
                       ACC=tu.acc_type(W0), num_warps=tu.warps(BD * BD, tiles_held=4))
    return y, WT, yT, (saved if save else None)


class _RDN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qx, kx, vx, bx, Rq, Rk, Rv, rb, W0, y0, reset, truncate):
        y, WT, yT, saved = _forward(qx, kx, vx, bx, Rq, Rk, Rv, rb, W0, y0, reset, True)
        ctx.save_for_backward(Rq, Rk, Rv, rb, WT, reset, *saved)
        ctx.dtypes = (qx.dtype, kx.dtype, vx.dtype, bx.dtype)
        ctx.truncate = truncate
        return y, WT, yT

    @staticmethod
    def backward(ctx, dy, dWT, dyT):
        Rq, Rk, Rv, rb, WT, reset, s, q, k, d, beta, ckpt = ctx.saved_tensors
        T, B, H, D = s.shape
        BD = tu.block(D)
        dqx, dkx, dvx = (torch.empty_like(s) for _ in range(3))
        dbx = torch.empty_like(beta)
        dW0, dy0 = torch.empty_like(WT), torch.empty(B, H, D, dtype=s.dtype, device=s.device)
        reset_bytes, has_reset = tu.reset_arg(reset, s)
        _rdn_bwd[(B * H,)](Rq.contiguous(), Rk.contiguous(), Rv.contiguous(), rb.contiguous(), WT,
                           reset_bytes, s, q, k, d, beta, ckpt, dy.contiguous(), dWT.contiguous(),
                           dyT.contiguous(), dqx, dkx, dvx, dbx, dW0, dy0, T, B, H, D, BD=BD,
                           CK=tu.CHECKPOINT_EVERY, HAS_RESET=has_reset, TRUNCATE=ctx.truncate,
                           ACC=tu.acc_type(WT), num_warps=tu.warps(BD * BD, tiles_held=4))
        # (R s)_i = Σ_j R[i, j] s_j, so dR[h, i, j] = Σ_{t,b} da[t, b, h, i] s[t, b, h, j].
        outer = lambda da: torch.einsum("tbhi,tbhj->hij", da, s)  # noqa: E731
        drb = torch.einsum("tbh,tbhj->hj", dbx, s)
        dq_t, dk_t, dv_t, db_t = ctx.dtypes
        return (dqx.to(dq_t), dkx.to(dk_t), dvx.to(dv_t), dbx.to(db_t), outer(dqx).to(Rq.dtype),
                outer(dkx).to(Rk.dtype), outer(dvx).to(Rv.dtype), drb.to(rb.dtype), dW0, dy0, None, None)


def fused_recurrent_rdn(qx, kx, vx, bx, Rq, Rk, Rv, rb, W, y_last, reset, truncate=False):
    """qx, kx, vx: [T, B, H, D]; bx: [T, B, H]; Rq, Rk, Rv: [H, D, D]; rb: [H, D]; W: [B, H, D, D]
    and y_last: [B, H, D] in float32/64; reset: [T, B] bool or None. Returns y [T, B, H, D] in
    qx's dtype and the final (W, y_last). Without gradients to compute (the acting path: T = 1
    under no_grad) it runs the forward kernel alone and stores nothing for a backward."""
    inputs = (qx, kx, vx, bx, Rq, Rk, Rv, rb, W, y_last)
    tu.check_inputs("rdn", _rdn_fwd, inputs, (qx.shape[-1],))
    if tu.needs_grad(*inputs):
        y, WT, yT = _RDN.apply(*inputs, reset, truncate)
    else:
        y, WT, yT, _ = _forward(*inputs, reset, False)
    return y, (WT, yT)
