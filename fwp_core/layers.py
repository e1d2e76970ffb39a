"""The fast-weight layer (a slow net that programs a fast-weight rule) and the feed-forward block.

One `FastWeightLayer` serves every rule of the paper. Its slow net is a single Linear whose output
is laid out per head ([..., H, parts]) so that each head's q, k, v, β sit side by side; the rule
itself runs in `fwp_core.ops` (reference loop on CPU, fused Triton kernels on CUDA), except the
Delta LSTM's recurrent gates, which stay a PyTorch loop here.
"""
import torch
from torch import nn
from torch.nn import functional as F

from . import ops
from .ops.delta_rule.naive import delta_update, read
from .options import FEATURE_MAPS, RDN_INITS

RULES = ("sum_rule", "delta_rule", "rdn", "delta_rnn", "delta_lstm")
# FEATURE_MAPS' "paper" (options.py): each rule's map in the paper's code.
PAPER_FEATURE_MAP = {"sum_rule": "elu_p1", "delta_rule": "elu_p1", "rdn": "softmax", "delta_rnn": "softmax",
                     "delta_lstm": "elu_p1"}
ELU_P1_EPS = 1e-5   # the paper's RL code: elu(x) + 1 divided by (its sum + 1e-5)


def feature_map(x, kind):
    """φ over the head dimension: softmax, or elu+1 divided by (its sum + 1e-5)."""
    if kind == "softmax":
        return torch.softmax(x, dim=-1)
    x = F.elu(x) + 1.0
    return x / (x.sum(dim=-1, keepdim=True) + ELU_P1_EPS)


class FastWeightLayer(nn.Module):
    """x [T, B, d_model] -> y [T, B, d_model]; the recurrent state is a tuple of [B, ...] tensors."""

    def __init__(self, d_model, num_heads, head_dim, rule, feature_map="paper",
                 truncate_fast_weight_grad=False, bias=True, rdn_init="small"):
        """feature_map: see FEATURE_MAPS; bias: the slow net and the output projection have biases
        (the paper's layers have none); rdn_init: "small" (R ~ N(0, 0.01/D), r_b = 0: the recurrence
        starts gentle) or "paper" (R and r_b ~ N(0, 1/D))."""
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"unknown fast-weight rule {rule!r}; choose one of {', '.join(RULES)}")
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"unknown feature_map {feature_map!r}; choose one of {', '.join(FEATURE_MAPS)}")
        if rule in ("rdn", "delta_rnn") and feature_map == "elu_p1":
            # These rules apply softmax to signals that see the recurrence, inside the step.
            raise ValueError(f"rule {rule!r} uses the softmax feature map inside its recurrence; "
                             f"feature_map={feature_map!r} is only available for sum_rule, delta_rule and "
                             "delta_lstm (its feed-forward q and k)")
        if rdn_init not in RDN_INITS:
            raise ValueError(f"unknown rdn_init {rdn_init!r}; choose one of {', '.join(RDN_INITS)}")
        self.rule, self.H, self.D = rule, num_heads, head_dim
        self.phi = PAPER_FEATURE_MAP[rule] if feature_map == "paper" else feature_map
        self.truncate = truncate_fast_weight_grad
        D = head_dim
        # Per-head slow-net output sizes, in the order they are split below.
        self.parts = {
            "sum_rule": [D, D, D],                       # q k v
            "delta_rule": [D, D, D, 1],                  # q k v β
            "rdn": [D, D, D, 1],                         # q_x k_x v_x b_x
            "delta_rnn": [D, D, D, 1, D, D, 1],          # q k v β k_r v_r β_r
            "delta_lstm": [D, D, D, 1] * 3 + [D, D, 1] * 3,
        }[rule]
        self.slow_net = nn.Linear(d_model, num_heads * sum(self.parts), bias=bias)
        self.out_proj = nn.Linear(num_heads * D, d_model, bias=bias)
        if rule == "rdn":
            # Per-head recurrent matrices of the slow net and the β recurrence.
            std = D ** -0.5 if rdn_init == "paper" else 0.1 * D ** -0.5
            self.R = nn.Parameter(torch.randn(3, num_heads, D, D) * std)
            self.rb = nn.Parameter(torch.randn(num_heads, D) * D ** -0.5 if rdn_init == "paper"
                                   else torch.zeros(num_heads, D))

    def initial_state(self, batch_size, device=None, dtype=torch.float32):
        B, H, D = batch_size, self.H, self.D
        shapes = {
            "sum_rule": [(B, H, D, D)],
            "delta_rule": [(B, H, D, D)],
            "rdn": [(B, H, D, D), (B, H, D)],
            "delta_rnn": [(B, H, D, D), (B, H, D, D), (B, H, D)],
            "delta_lstm": [(B, 3 * H, D, D), (B, 3 * H, D, D), (B, H, D), (B, H, D)],
        }[self.rule]
        return tuple(torch.zeros(s, device=device, dtype=dtype) for s in shapes)

    def forward(self, x, state, reset=None):
        # With truncate (the paper's RL code) each op runs the whole unroll in one call and its
        # backward treats the carried state as a constant at every step, instead of computing the
        # gradient through time to discard it.
        y, state = self._run(x, state, reset)
        return self.out_proj(y.flatten(2)), state

    def _run(self, x, state, reset):
        T, B, _ = x.shape
        H, D, cut = self.H, self.D, self.truncate
        p = self.slow_net(x).view(T, B, H, -1).split(self.parts, dim=-1)
        if self.rule == "sum_rule":
            q, k, v = p
            y, W = ops.sum_rule(feature_map(q, self.phi), feature_map(k, self.phi), v, state, reset, truncate=cut)
            return y, (W,)
        if self.rule == "delta_rule":
            q, k, v, b = p
            y, W = ops.delta_rule(feature_map(q, self.phi), feature_map(k, self.phi), v,
                                  torch.sigmoid(b.squeeze(-1)), state, reset, truncate=cut)
            return y, (W,)
        if self.rule == "rdn":
            qx, kx, vx, bx = p
            Rq, Rk, Rv = self.R
            return ops.rdn(qx, kx, vx, bx.squeeze(-1), Rq, Rk, Rv, self.rb, state, reset, truncate=cut)
        if self.rule == "delta_rnn":
            q, k, v, b, kr, vr, br = p
            return ops.delta_rnn(torch.softmax(q, -1), torch.softmax(k, -1), v,
                                 torch.sigmoid(b.squeeze(-1)), torch.softmax(kr, -1), vr,
                                 torch.sigmoid(br.squeeze(-1)), state, reset, truncate=cut)
        return self._delta_lstm(p, state, reset)

    def _delta_lstm(self, p, state, reset):
        """Delta LSTM: the paper's language-model Delta LSTM (v4) adapted to RL (the paper's RL code
        has no Delta LSTM). As in the LM code: the three feed-forward q, k use elu+1 with sum
        normalisation (feature_map "paper"), the recurrent keys softmax, and the layer's output is
        scaled by 1/sqrt(d_head). The three gate pre-activations z_i, z_u, z_o come from three
        delta-rule nets run as one op call over 3H heads; the recurrent fast matrices R_i, R_u, R_o
        are read with softmax(h_{t-1}), which the op cannot see ahead of time, hence the loop."""
        T, B, H, D = p[0].shape[0], p[0].shape[1], self.H, self.D
        W, R, h, c = state
        ff, rec = p[:12], p[12:]
        gate = lambda parts: torch.cat(parts, dim=2)  # noqa: E731  3 gates -> 3H heads
        q, k, v, b = (gate(ff[i::4]) for i in range(4))
        z, W = ops.delta_rule(feature_map(q, self.phi), feature_map(k, self.phi), v,
                              torch.sigmoid(b.squeeze(-1)), W, reset, truncate=self.truncate)
        kr, vr, br = (gate(rec[i::3]) for i in range(3))
        kr, br = torch.softmax(kr, -1), torch.sigmoid(br.squeeze(-1))
        acc = R.dtype
        hs = []
        for t in range(T):
            if self.truncate:
                R, h, c = R.detach(), h.detach(), c.detach()
            if reset is not None:
                keep = (~reset[t]).to(acc)
                R = R * keep[:, None, None, None]
                h, c = h * keep[:, None, None], c * keep[:, None, None]
            R = delta_update(R, kr[t].to(acc), vr[t].to(acc), br[t].to(acc))
            s = torch.softmax(h, dim=-1).repeat(1, 3, 1)                    # [B, 3H, D]
            zi, zu, zo = (z[t].to(acc) + read(R, s)).split(H, dim=1)
            i, o = torch.sigmoid(zi), torch.sigmoid(zo)
            c = i * zu + (1 - i) * c
            h = o * c
            hs.append(h)
        # The LM code scales the layer's output (not the carried h) by 1/sqrt(d_head).
        return torch.stack(hs) * D ** -0.5, (W, R, h, c)


class FeedForward(nn.Module):
    """Position-wise Linear → ReLU → Linear (the residual and the LayerNorm live in the core)."""

    def __init__(self, d_model, ff_dim):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, ff_dim), nn.ReLU(), nn.Linear(ff_dim, d_model))

    def forward(self, x):
        return self.net(x)
