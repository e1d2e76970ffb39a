"""Plain PyTorch reference of the Recurrent Delta Net (RDN), one step at a time.

The slow net's key, query, value and learning rate see the layer's previous output, so the feature
maps sit inside the recurrence:

    s = tanh(y_{t-1})
    q = softmax(q_x + R_q s)     k = softmax(k_x + R_k s)     v = v_x + R_v s
    β = sigmoid(b_x + r_b · s)
    W_t = W_{t-1} + β k (v − W_{t-1}ᵀ k)ᵀ          y_t = W_tᵀ q

R_q, R_k, R_v are per-head [D, D] matrices with (R s)_i = Σ_j R[i, j] s_j and r_b a per-head [D]
vector, so a head never needs another head's values.
"""
import torch

from ..delta_rule.naive import delta_update, read


def rdn_naive(qx, kx, vx, bx, Rq, Rk, Rv, rb, W, y_last, reset, truncate=False):
    """qx, kx, vx: [T, B, H, D]; bx: [T, B, H]; Rq, Rk, Rv: [H, D, D]; rb: [H, D];
    W: [B, H, D, D]; y_last: [B, H, D]; reset: [T, B] bool or None; truncate: no gradient
    crosses steps through W or y_{t-1} (R and r_b still get theirs from every step).
    Returns y [T, B, H, D] in qx's dtype and the final (W, y_last)."""
    acc = W.dtype
    T, B, H, D = qx.shape
    # The loop runs once per acting step on an actor and T times per update, on small tensors
    # (B 8-16, H 4, D 32), where each op's fixed cost is most of its time: so the four signals of
    # a step are one tensor [B, H, 3D + 1] (q_x k_x v_x b_x), their recurrent parts one batched
    # matmul per head with r_b as a last column of R ([H, D, 3D + 1], s as [H, B, D]), q and k one
    # softmax, and the resets are looked at once per call. The same sums as the equations above.
    x = torch.cat([qx, kx, vx, bx.unsqueeze(-1)], dim=-1).to(acc)                 # [T, B, H, 3D+1]
    R = torch.cat([Rq, Rk, Rv, rb.unsqueeze(1)], dim=1).to(acc).transpose(1, 2)   # [H, D, 3D+1]
    keep = None if reset is None else (~reset).to(acc)
    steps_with_reset = [False] * T if reset is None else reset.any(1).tolist()
    ys = []
    for t in range(T):
        if truncate:
            W, y_last = W.detach(), y_last.detach()
        if steps_with_reset[t]:
            W = W * keep[t, :, None, None, None]
            y_last = y_last * keep[t, :, None, None]
        s = torch.tanh(y_last)
        z = x[t] + torch.bmm(s.transpose(0, 1), R).transpose(0, 1)                  # [B, H, 3D+1]
        q, k = torch.softmax(z[..., :2 * D].unflatten(-1, (2, D)), dim=-1).unbind(-2)
        v, beta = z[..., 2 * D:3 * D], torch.sigmoid(z[..., 3 * D])
        W = delta_update(W, k, v, beta)
        y_last = read(W, q)
        ys.append(y_last)
    return torch.stack(ys).to(qx.dtype), (W, y_last)
