"""Recurrent cores with one interface: the paper's RFWP block and the LSTM baseline.

A core maps x [T, B, input_size] and a state (a tuple of [B, ...] tensors) to y [T, B, output_size]
and the next state. `reset[t, b]` puts sequence b's state back to its initial value before step t.

    core = make_core("rdn", input_size=257)
    y, state = core(x, core.initial_state(batch_size), reset)
"""
import dataclasses

import torch
from torch import nn

from .layers import FastWeightLayer, FeedForward
from .options import CORES, FEATURE_MAPS, CoreConfig


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

    def _state_shapes(self, B):
        """The shapes of initial_state(B), kept per batch size: making them (on the meta device)
        took 50 us, which every acting step paid in _check."""
        shapes = getattr(self, "_state_shapes_by_batch", None)
        if shapes is None:
            shapes = self._state_shapes_by_batch = {}
        if B not in shapes:
            shapes[B] = [tuple(s.shape) for s in self.initial_state(B, device="meta")]
        return shapes[B]

    def _check(self, x, state, reset):
        name = type(self).__name__
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name}: x must be [T, B, input_size] (3 dims), got {shape}")
        T, B, F = x.shape
        if F != self.input_size:
            raise ValueError(f"{name}: x has {F} features, the core was built for input_size={self.input_size}")
        want = self._state_shapes(B)
        if not isinstance(state, (tuple, list)) or len(state) != len(want):
            raise ValueError(f"{name}: state must be a tuple of {len(want)} tensors as returned by "
                             f"initial_state(batch_size), got {type(state).__name__}"
                             + (f" of {len(state)}" if isinstance(state, (tuple, list)) else ""))
        for i, (s, w) in enumerate(zip(state, want)):
            if tuple(s.shape) != w:
                raise ValueError(f"{name}: state[{i}] has shape {tuple(s.shape)}, expected "
                                 f"{w} for batch size {B}")
        if reset is not None:
            if tuple(reset.shape) != (T, B) or reset.dtype != torch.bool:
                raise ValueError(f"{name}: reset must be a bool tensor [T, B] = [{T}, {B}], "
                                 f"got {reset.dtype} {tuple(reset.shape)}")


class LSTMCore(Core):
    """nn.LSTM (cuDNN on GPU) over a sequence, torch.lstm_cell for an actor's single step. The state
    is (h, c), each [B, layers, hidden]."""

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
        if x.shape[0] == 1:
            return self._step(x, state, reset)
        h, c = (s.transpose(0, 1).contiguous() for s in state)
        T = x.shape[0]
        # One cuDNN call per stretch without a reset, instead of one call per step.
        starts = [0] if reset is None else \
            sorted({0, *reset[1:].any(1).nonzero().flatten().add(1).tolist()})
        ys = []
        # fp32 even under bf16 autocast: cuDNN RNNs take bf16 only from cuDNN 9.13 on.
        with torch.autocast(x.device.type, enabled=False):
            for a, b in zip(starts, starts[1:] + [T]):
                if reset is not None:
                    gone = reset[a][None, :, None]
                    h, c = h.masked_fill(gone, 0.0), c.masked_fill(gone, 0.0)
                y, (h, c) = self.lstm(x[a:b].to(h.dtype), (h, c))
                ys.append(y)
        return ys[0] if len(ys) == 1 else torch.cat(ys), (h.transpose(0, 1), c.transpose(0, 1))

    def _step(self, x, state, reset):
        """An actor's step (T = 1): torch.lstm_cell layer by layer, on the state in its own [B, layers,
        hidden] layout. nn.LSTM would need [layers, B, hidden] copies in and out and its sequence
        machinery around one step: 331 -> 245-255 us per step of 8 envs (hidden 128, one CPU thread)."""
        h, c = state
        if reset is not None:
            gone = reset[0][:, None, None]
            h, c = h.masked_fill(gone, 0.0), c.masked_fill(gone, 0.0)
        y, hs, cs = x[0], [], []
        with torch.autocast(x.device.type, enabled=False):    # fp32, as the sequence path
            y = y.to(h.dtype)
            for layer, weights in enumerate(self.lstm.all_weights):    # [w_ih, w_hh, b_ih, b_hh] per layer
                y, c_l = torch.lstm_cell(y, (h[:, layer], c[:, layer]), *weights)
                hs.append(y)
                cs.append(c_l)
        return y[None], (torch.stack(hs, 1), torch.stack(cs, 1))


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
    if config.get("feature_map", "paper") not in FEATURE_MAPS:
        raise ValueError(f"unknown feature_map {config['feature_map']!r}; choose one of {', '.join(FEATURE_MAPS)}")
    cfg = CoreConfig(**config)
    if CORES[name] is None:
        return LSTMCore(input_size, cfg)
    return RFWPCore(CORES[name], input_size, cfg)
