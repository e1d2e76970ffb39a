"""Plain PyTorch reference of the Delta RNN (a fast recurrent net), one step at a time.

    W_t = W_{t-1} + β k (v − W_{t-1}ᵀ k)ᵀ;          z_t = W_tᵀ q
    R_t = R_{t-1} + β_r k_r (v_r − R_{t-1}ᵀ k_r)ᵀ
    y_t = z_t + R_tᵀ softmax(y_{t-1})
"""
import torch

from ..delta_rule.naive import delta_update, read


def delta_rnn_naive(q, k, v, beta, kr, vr, br, W, R, y_last, reset, truncate=False):
    """q, k, v, kr, vr: [T, B, H, D]; beta, br: [T, B, H]; W, R: [B, H, D, D]; y_last: [B, H, D];
    reset: [T, B] bool or None; truncate: no gradient crosses steps through W, R or y_{t-1}.
    Returns y [T, B, H, D] in q's dtype and the final (W, R, y_last)."""
    acc = W.dtype
    ys = []
    for t in range(q.shape[0]):
        if truncate:
            W, R, y_last = W.detach(), R.detach(), y_last.detach()
        if reset is not None:
            keep = (~reset[t]).to(acc)
            W = W * keep[:, None, None, None]
            R = R * keep[:, None, None, None]
            y_last = y_last * keep[:, None, None]
        W = delta_update(W, k[t].to(acc), v[t].to(acc), beta[t].to(acc))
        R = delta_update(R, kr[t].to(acc), vr[t].to(acc), br[t].to(acc))
        z = read(W, q[t].to(acc))
        y_last = z + read(R, torch.softmax(y_last, dim=-1))
        ys.append(y_last)
    return torch.stack(ys).to(q.dtype), (W, R, y_last)
