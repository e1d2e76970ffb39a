"""Slow, per-element float64 implementations of the fast-weight rules, written independently of
fwp_core (plain Python loops over every index; 0-dim tensors only so autograd still applies).
They are the ground truth of the op tests and, through those, of the kernels' tests."""
import torch


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _softmax(xs):
    m = max(float(x.detach()) for x in xs)
    e = [torch.exp(x - m) for x in xs]
    z = sum(e)
    return [x / z for x in e]


def _sigmoid(x):
    return 1.0 / (1.0 + torch.exp(-x))


def _read(W, q):
    """(Wᵀ q)_j = Σ_i W[i][j] q_i"""
    return [sum(W[i][j] * q[i] for i in range(len(q))) for j in range(len(W[0]))]


def _delta(W, k, v, beta):
    v_old = _read(W, k)
    return [[W[i][j] + beta * k[i] * (v[j] - v_old[j]) for j in range(len(v))] for i in range(len(k))]


def _sum(W, k, v):
    return [[W[i][j] + k[i] * v[j] for j in range(len(v))] for i in range(len(k))]


def _mat(x):  # tensor [Dk, Dv] -> list of lists of 0-dim tensors
    return [[x[i, j] for j in range(x.shape[1])] for i in range(x.shape[0])]


def _vec(x):
    return [x[i] for i in range(x.shape[0])]


def _zero_mat(W):
    return [[0.0 * w for w in row] for row in W]


def _stack_mat(W):
    return torch.stack([torch.stack(list(row)) for row in W])


def _run(T, B, H, init, step, reset):
    """Loop over b, h, t; `init(b, h)` gives that sequence's state (a list), `step(state, t, b, h)`
    returns (y list, new state). A reset zeroes the whole state before step t."""
    ys = [[[None] * H for _ in range(B)] for _ in range(T)]
    finals = [[None] * H for _ in range(B)]
    for b in range(B):
        for h in range(H):
            st = init(b, h)
            for t in range(T):
                if reset is not None and bool(reset[t, b]):
                    st = [_zero_mat(s) if isinstance(s[0], list) else [0.0 * x for x in s] for s in st]
                y, st = step(st, t, b, h)
                ys[t][b][h] = torch.stack(y)
            finals[b][h] = st
    y = torch.stack([torch.stack([torch.stack(ys[t][b]) for b in range(B)]) for t in range(T)])
    out = []
    for i in range(len(finals[0][0])):
        per = [[finals[b][h][i] for h in range(H)] for b in range(B)]
        conv = (lambda s: _stack_mat(s)) if isinstance(per[0][0][0], list) else (lambda s: torch.stack(s))
        out.append(torch.stack([torch.stack([conv(per[b][h]) for h in range(H)]) for b in range(B)]))
    return y, out


def sum_rule(q, k, v, W0, reset):
    T, B, H, _ = q.shape

    def step(st, t, b, h):
        W = _sum(st[0], _vec(k[t, b, h]), _vec(v[t, b, h]))
        return _read(W, _vec(q[t, b, h])), [W]
    y, (W,) = _run(T, B, H, lambda b, h: [_mat(W0[b, h])], step, reset)
    return y, W


def delta_rule(q, k, v, beta, W0, reset):
    T, B, H, _ = q.shape

    def step(st, t, b, h):
        W = _delta(st[0], _vec(k[t, b, h]), _vec(v[t, b, h]), beta[t, b, h])
        return _read(W, _vec(q[t, b, h])), [W]
    y, (W,) = _run(T, B, H, lambda b, h: [_mat(W0[b, h])], step, reset)
    return y, W


def rdn(qx, kx, vx, bx, Rq, Rk, Rv, rb, W0, y0, reset):
    T, B, H, D = qx.shape

    def step(st, t, b, h):
        W, y_prev = st
        s = [torch.tanh(x) for x in y_prev]
        rec = lambda R, i: sum(R[h, i, j] * s[j] for j in range(D))  # noqa: E731
        q = _softmax([qx[t, b, h, i] + rec(Rq, i) for i in range(D)])
        k = _softmax([kx[t, b, h, i] + rec(Rk, i) for i in range(D)])
        v = [vx[t, b, h, i] + rec(Rv, i) for i in range(D)]
        beta = _sigmoid(bx[t, b, h] + _dot(_vec(rb[h]), s))
        W = _delta(W, k, v, beta)
        y = _read(W, q)
        return y, [W, y]
    y, (W, y_last) = _run(T, B, H, lambda b, h: [_mat(W0[b, h]), _vec(y0[b, h])], step, reset)
    return y, (W, y_last)


def delta_rnn(q, k, v, beta, kr, vr, br, W0, R0, y0, reset):
    T, B, H, D = q.shape

    def step(st, t, b, h):
        W, R, y_prev = st
        W = _delta(W, _vec(k[t, b, h]), _vec(v[t, b, h]), beta[t, b, h])
        R = _delta(R, _vec(kr[t, b, h]), _vec(vr[t, b, h]), br[t, b, h])
        z = _read(W, _vec(q[t, b, h]))
        r = _read(R, _softmax(y_prev))
        y = [a + c for a, c in zip(z, r)]
        return y, [W, R, y]
    init = lambda b, h: [_mat(W0[b, h]), _mat(R0[b, h]), _vec(y0[b, h])]  # noqa: E731
    y, (W, R, y_last) = _run(T, B, H, init, step, reset)
    return y, (W, R, y_last)
