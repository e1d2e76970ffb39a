"""The Core interface, for every core: stepping equals one call, resets, gradient paths, errors."""
import pytest
import torch

from fwp_core import CORES, make_core

SMALL = dict(d_model=16, num_layers=2, num_heads=2, head_dim=5, ff_dim=24, hidden_size=12)
IN = 7


def _core(name, **kw):
    torch.manual_seed(0)
    return make_core(name, IN, **{**SMALL, **kw}).double()


def _random_state(core, B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s.shape, generator=g, dtype=torch.float64) * 0.3
                 for s in core.initial_state(B))


@pytest.mark.parametrize("name", CORES)
def test_stepping_one_at_a_time_equals_one_call(name):
    core, T, B = _core(name), 6, 3
    x = torch.randn(T, B, IN, dtype=torch.float64)
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[2, 0] = reset[4, 2] = True
    state0 = _random_state(core, B)
    y, final = core(x, state0, reset)
    state, ys = state0, []
    for t in range(T):
        y_t, state = core(x[t:t + 1], state, reset[t:t + 1])
        ys.append(y_t)
    torch.testing.assert_close(torch.cat(ys), y, rtol=1e-10, atol=1e-10)
    for a, b in zip(state, final):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert y.shape == (T, B, core.output_size)


@pytest.mark.parametrize("name", CORES)
def test_reset_equals_a_fresh_start(name):
    core, T, B, t0 = _core(name), 7, 2, 3
    x = torch.randn(T, B, IN, dtype=torch.float64)
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[t0, 1] = True
    y, _ = core(x, _random_state(core, B), reset)
    y_fresh, _ = core(x[t0:, 1:], core.initial_state(1))
    torch.testing.assert_close(y[t0:, 1:], y_fresh, rtol=1e-10, atol=1e-10)
    # The other sequence did not reset: its outputs must differ from a fresh start there.
    y_other, _ = core(x[t0:, :1], core.initial_state(1))
    assert not torch.allclose(y[t0:, :1], y_other)


def _grad_of_y_t_wrt_x(core, T, t, reset=None):
    x = torch.randn(T, 1, IN, dtype=torch.float64, requires_grad=True)
    y, _ = core(x, core.initial_state(1, ), reset)
    (g,) = torch.autograd.grad(y[t].sum(), x)
    return g[:, 0].abs().sum(-1)  # [T]: how much each input step reaches y_t


@pytest.mark.parametrize("name", CORES)
def test_full_bptt_and_resets_cut_the_gradient(name):
    core, T, t = _core(name), 6, 5
    g = _grad_of_y_t_wrt_x(core, T, t)
    assert (g[:t + 1] > 0).all(), f"some earlier step does not reach y_{t}: {g}"
    assert (g[t + 1:] == 0).all()
    reset = torch.zeros(T, 1, dtype=torch.bool)
    reset[3, 0] = True
    g = _grad_of_y_t_wrt_x(core, T, t, reset)
    assert (g[:3] == 0).all(), f"gradient crossed the reset: {g}"
    assert (g[3:t + 1] > 0).all()


@pytest.mark.parametrize("name", [n for n, rule in CORES.items() if rule is not None])
def test_truncated_fast_weight_gradient_stays_within_the_step(name):
    core, T, t = _core(name, truncate_fast_weight_grad=True), 5, 4
    g = _grad_of_y_t_wrt_x(core, T, t)
    assert (g[:t] == 0).all(), f"gradient crossed time despite truncation: {g}"
    assert g[t] > 0
    # Truncation changes gradients only, never values.
    full = _core(name)
    x = torch.randn(T, 2, IN, dtype=torch.float64)
    torch.testing.assert_close(core(x, core.initial_state(2))[0], full(x, full.initial_state(2))[0])


def test_initial_state_layout():
    for name in CORES:
        core = _core(name)
        state = core.initial_state(4)
        assert isinstance(state, tuple) and all(s.shape[0] == 4 for s in state)
        assert all((s == 0).all() for s in state)


def test_paper_defaults():
    core = make_core("rdn", 257)
    assert core.output_size == 128 and len(core.fw_layers) == 2
    assert core.fw_layers[0].H == 4 and core.fw_layers[0].D == 32
    assert core.ff_layers[0].net[0].out_features == 512
    assert make_core("lstm", 257).output_size == 256


# -- bad input ------------------------------------------------------------------------------------

def test_unknown_core_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown core 'transformer'; choose one of ") as err:
        make_core("transformer", 10)
    listed = str(err.value).split("choose one of ")[1].split(", ")
    assert sorted(listed) == sorted(CORES)          # every core, whatever their order or number


def test_unknown_option_and_bad_feature_map():
    with pytest.raises(ValueError, match="unknown core option.*heads.*valid:.*num_heads"):
        make_core("rdn", 10, heads=3)
    with pytest.raises(ValueError, match="unknown feature_map 'relu'; choose one of paper, softmax, elu_p1"):
        make_core("delta_net", 10, feature_map="relu")
    with pytest.raises(ValueError, match="softmax feature map inside its recurrence"):
        make_core("rdn", 10, feature_map="elu_p1")


@pytest.mark.parametrize("name", ["lstm", "rdn"])
def test_bad_core_input_is_named(name):
    core = _core(name)
    state = core.initial_state(2)
    with pytest.raises(ValueError, match=r"x must be \[T, B, input_size\] \(3 dims\)"):
        core(torch.zeros(2, IN, dtype=torch.float64), state)
    with pytest.raises(ValueError, match=f"x has 5 features, the core was built for input_size={IN}"):
        core(torch.zeros(3, 2, 5, dtype=torch.float64), state)
    with pytest.raises(ValueError, match=r"state\[0\] has shape .* for batch size 3"):
        core(torch.zeros(3, 3, IN, dtype=torch.float64), state)
    with pytest.raises(ValueError, match=r"reset must be a bool tensor \[T, B\] = \[3, 2\]"):
        core(torch.zeros(3, 2, IN, dtype=torch.float64), state, torch.zeros(3, 2))


def test_the_elu_feature_map_in_a_delta_net_layer_against_its_definition():
    """A Delta Net layer with feature_map=elu_p1 against the definition written out here in float64:
    q and k through elu(x) + 1 (x + 1 above 0, exp(x) below) divided by their sum + 1e-5,
    β = sigmoid(b), W += β k (v − Wᵀk)ᵀ and y = Wᵀq step by step, then the output projection."""
    from fwp_core.layers import FastWeightLayer
    torch.manual_seed(0)
    T, B, H, D, d = 5, 2, 2, 4, 8
    layer = FastWeightLayer(d, H, D, "delta_rule", "elu_p1").double()
    x = torch.randn(T, B, d, dtype=torch.float64) * 2          # both signs well inside elu's two pieces
    y, (W_out,) = layer(x, layer.initial_state(B, dtype=torch.float64))

    with torch.no_grad():
        p = layer.slow_net(x).view(T, B, H, 3 * D + 1)
        elu1 = lambda z: torch.where(z > 0, z + 1, torch.exp(z))            # noqa: E731
        phi = lambda z: elu1(z) / (elu1(z).sum(-1, keepdim=True) + 1e-5)    # noqa: E731
        W, ys = torch.zeros(B, H, D, D, dtype=torch.float64), []
        for t in range(T):
            q, k, v, beta = phi(p[t, ..., :D]), phi(p[t, ..., D:2 * D]), p[t, ..., 2 * D:3 * D], p[t, ..., 3 * D]
            for b in range(B):
                for h in range(H):
                    W[b, h] += torch.sigmoid(beta[b, h]) * torch.outer(k[b, h], v[b, h] - W[b, h].T @ k[b, h])
            ys.append(torch.einsum("bhkv,bhk->bhv", W, q))
        expected = layer.out_proj(torch.stack(ys).flatten(2))
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(W_out, W, rtol=1e-10, atol=1e-12)


def test_lstm_steps_against_the_lstm_equations():
    """The LSTM core stepped one step at a time (an actor's path) and in one call (the learner's),
    2 layers, with resets, against the LSTM written out here in float64: per layer,
    i, f, g, o = split(W_ih x + b_ih + W_hh h + b_hh) (PyTorch's gate order),
    c' = σ(f) c + σ(i) tanh(g), h' = σ(o) tanh(c'), the layer's h' the next layer's input."""
    torch.manual_seed(0)
    T, B, H, L = 5, 3, 6, 2
    core = make_core("lstm", IN, hidden_size=H, lstm_layers=L).double()
    x = torch.randn(T, B, IN, dtype=torch.float64)
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[2, 1] = reset[3, 0] = True
    state0 = _random_state(core, B)

    h, c = (s.clone() for s in state0)                  # [B, L, H]
    expected = []
    with torch.no_grad():
        for t in range(T):
            h[reset[t]], c[reset[t]] = 0.0, 0.0
            inp = x[t]
            for layer in range(L):
                w_ih, w_hh, b_ih, b_hh = (getattr(core.lstm, f"{n}_l{layer}")
                                          for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
                i, f, g, o = (inp @ w_ih.T + b_ih + h[:, layer] @ w_hh.T + b_hh).split(H, dim=-1)
                c[:, layer] = torch.sigmoid(f) * c[:, layer] + torch.sigmoid(i) * torch.tanh(g)
                h[:, layer] = torch.sigmoid(o) * torch.tanh(c[:, layer])
                inp = h[:, layer]
            expected.append(inp.clone())
    expected = torch.stack(expected)

    state, ys = state0, []
    for t in range(T):
        y_t, state = core(x[t:t + 1], state, reset[t:t + 1])
        ys.append(y_t)
    y_all, state_all = core(x, state0, reset)
    for y, final in ((torch.cat(ys), state), (y_all, state_all)):
        torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(final[0], h, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(final[1], c, rtol=1e-10, atol=1e-12)
