"""Recurrent cores with one interface: the paper's RFWP block and the LSTM baseline.

A core maps x [T, B, input_size] and a state (a tuple of [B, ...] tensors) to y [T, B, output_size]
and the next state. `reset[t, b]` puts sequence b's state back to its initial value before step t.

    core = make_core("rdn", input_size=257)
    y, state = core(x, core.initial_state(batch_size), reset)
"""
import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import FEATURE_MAPS, RDN_INITS, FastWeightLayer, FeedForward

# Core name -> fast-weight rule (None: the LSTM baseline).
CORES = {
    "lstm": None,
    "linear_transformer": "sum_rule",
    "delta_net": "delta_rule",
    "delta_rnn": "delta_rnn",
    "rdn": "rdn",
    "delta_lstm": "delta_lstm",
}


def config_field(default, help, choices=None):
    """A dataclass field with its meaning and, if given, its valid values (the project's config
    dataclasses use it: `launch.py config` lists the meanings, the config loader checks choices)."""
    meta = {"help": help} if choices is None else {"help": help, "choices": tuple(choices)}
    return field(default=default, metadata=meta)


_f = config_field


@dataclass
class CoreConfig:
    """Sizes and options of the cores; defaults are the paper's RL block and its LSTM baseline."""
    d_model: int = _f(128, "RFWP: width of the residual stream")
    num_layers: int = _f(2, "RFWP: fast-weight layers (each followed by a feed-forward block)")
    num_heads: int = _f(4, "RFWP: heads per fast-weight layer")
    head_dim: int = _f(32, "RFWP: per-head key/value size D (fast weights are D x D per head)")
    ff_dim: int = _f(512, "RFWP: hidden width of the feed-forward blocks")
    feature_map: str = _f("paper", "RFWP: the map of q and k. paper: each rule's map in the paper's code "
                          "(elu+1 divided by its sum + 1e-5 for linear_transformer, delta_net and delta_lstm's "
                          "feed-forward q, k; softmax inside rdn and delta_rnn); softmax or elu_p1 where the "
                          "map is outside the recurrence", FEATURE_MAPS)
    truncate_fast_weight_grad: bool = _f(False, "RFWP: no gradient through the fast weights and the previous "
                                         "output across steps (the paper's RL code); false: full BPTT over "
                                         "the unroll")
    fw_bias: bool = _f(True, "RFWP: biases in the slow nets and output projections of the fast-weight "
                       "layers (the paper's have none)")
    rdn_init: str = _f("small", "RFWP rdn: R_q, R_k, R_v ~ N(0, 0.01/D) and r_b = 0 (small), or all "
                       "~ N(0, 1/D) (paper)", RDN_INITS)
    hidden_size: int = _f(256, "LSTM: hidden size")
    lstm_layers: int = _f(1, "LSTM: layers")


class Core(nn.Module):
    """The interface both core families share; subclasses set `input_size`, `output_size`."""

    input_size: int
    output_size: int

    def initial_state(self, batch_size, device=None):
        """The zero state for `batch_size` sequences, on `device` (default: the core's)."""
        raise NotImplementedError

    def _like_params(self, device):
        p = next(self.parameters())
        # States accumulate in float32 (float64 for a float64 core), whatever the weights' dtype.
        return (p.device if device is None else device,
                torch.float64 if p.dtype == torch.float64 else torch.float32)

    def _check(self, x, state, reset):
        name = type(self).__name__
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name}: x must be [T, B, input_size] (3 dims), got {shape}")
        T, B, F = x.shape
        if F != self.input_size:
            raise ValueError(f"{name}: x has {F} features, the core was built for input_size={self.input_size}")
        want = self.initial_state(B, device="meta")
        if not isinstance(state, (tuple, list)) or len(state) != len(want):
            raise ValueError(f"{name}: state must be a tuple of {len(want)} tensors as returned by "
                             f"initial_state(batch_size), got {type(state).__name__}"
                             + (f" of {len(state)}" if isinstance(state, (tuple, list)) else ""))
        for i, (s, w) in enumerate(zip(state, want)):
            if tuple(s.shape) != tuple(w.shape):
                raise ValueError(f"{name}: state[{i}] has shape {tuple(s.shape)}, expected "
                                 f"{tuple(w.shape)} for batch size {B}")
        if reset is not None:
            if tuple(reset.shape) != (T, B) or reset.dtype != torch.bool:
                raise ValueError(f"{name}: reset must be a bool tensor [T, B] = [{T}, {B}], "
                                 f"got {reset.dtype} {tuple(reset.shape)}")


class LSTMCore(Core):
    """nn.LSTM (cuDNN on GPU). The state is (h, c), each [B, layers, hidden]."""

    def __init__(self, input_size, cfg):
        super().__init__()
        self.input_size, self.output_size = input_size, cfg.hidden_size
        self.lstm = nn.LSTM(input_size, cfg.hidden_size, num_layers=cfg.lstm_layers)

    def initial_state(self, batch_size, device=None):
        device, dtype = self._like_params(device)
        shape = (batch_size, self.lstm.num_layers, self.lstm.hidden_size)
        return (torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def forward(self, x, state, reset=None):
        self._check(x, state, reset)
        h, c = (s.transpose(0, 1).contiguous() for s in state)
        T = x.shape[0]
        # One cuDNN call per stretch without a reset, instead of one call per step.
        starts = [0] if reset is None else sorted({0, *reset[1:].any(1).nonzero().flatten().add(1).tolist()})
        ys = []
        for a, b in zip(starts, starts[1:] + [T]):
            if reset is not None:
                keep = (~reset[a]).to(h.dtype)[None, :, None]
                h, c = h * keep, c * keep
            # fp32 even under bf16 autocast: cuDNN RNNs take bf16 only from cuDNN 9.13 on.
            with torch.autocast(x.device.type, enabled=False):
                y, (h, c) = self.lstm(x[a:b].to(h.dtype), (h, c))
            ys.append(y)
        return torch.cat(ys), (h.transpose(0, 1), c.transpose(0, 1))


class RFWPCore(Core):
    """The paper's RL block: input_proj, then per layer
    x = x + out_proj(rule(slow_net(LN(x))))  and  x = x + FF(LN(x))."""

    def __init__(self, rule, input_size, cfg):
        super().__init__()
        self.input_size, self.output_size = input_size, cfg.d_model
        self.input_proj = nn.Linear(input_size, cfg.d_model)
        self.fw_norms = nn.ModuleList(nn.LayerNorm(cfg.d_model) for _ in range(cfg.num_layers))
        self.fw_layers = nn.ModuleList(
            FastWeightLayer(cfg.d_model, cfg.num_heads, cfg.head_dim, rule, cfg.feature_map,
                            cfg.truncate_fast_weight_grad, cfg.fw_bias, cfg.rdn_init) for _ in range(cfg.num_layers))
        self.ff_norms = nn.ModuleList(nn.LayerNorm(cfg.d_model) for _ in range(cfg.num_layers))
        self.ff_layers = nn.ModuleList(FeedForward(cfg.d_model, cfg.ff_dim) for _ in range(cfg.num_layers))
        self._per_layer = len(self.fw_layers[0].initial_state(1, device="meta"))

    def initial_state(self, batch_size, device=None):
        device, dtype = self._like_params(device)
        return tuple(s for layer in self.fw_layers for s in layer.initial_state(batch_size, device, dtype))

    def forward(self, x, state, reset=None):
        self._check(x, state, reset)
        x = self.input_proj(x)
        n, new_state = self._per_layer, []
        for i, (fw_norm, fw, ff_norm, ff) in enumerate(
                zip(self.fw_norms, self.fw_layers, self.ff_norms, self.ff_layers)):
            y, s = fw(fw_norm(x), tuple(state[i * n:(i + 1) * n]), reset)
            x = x + y
            x = x + ff(ff_norm(x))
            new_state.extend(s)
        return x, tuple(new_state)


def make_core(name, input_size, **config):
    """Build core `name` (one of CORES) for inputs of `input_size` features; `config` overrides
    CoreConfig's fields."""
    if name not in CORES:
        raise ValueError(f"unknown core {name!r}; choose one of {', '.join(CORES)}")
    fields = {f.name for f in dataclasses.fields(CoreConfig)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"unknown core option(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    cfg = CoreConfig(**config)
    if cfg.feature_map not in FEATURE_MAPS:
        raise ValueError(f"unknown feature_map {cfg.feature_map!r}; choose one of {', '.join(FEATURE_MAPS)}")
    if CORES[name] is None:
        return LSTMCore(input_size, cfg)
    return RFWPCore(CORES[name], input_size, cfg)
