"""Random inputs for the fast-weight ops, shared by the reference and the kernel tests."""
import torch

OPS = ("sum_rule", "delta_rule", "rdn", "delta_rnn")


def random_case(op, T, B, H, D, dtype=torch.float64, device="cpu", seed=0, reset_p=0.3,
                random_state=True):
    """Returns (inputs tuple in the op's argument order, state tuple or None, reset [T, B] bool).
    Keys are softmax-normalised as they are after the feature map, so values stay moderate."""
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    fm = lambda x: torch.softmax(x, -1)  # noqa: E731
    sig = torch.sigmoid
    if op == "sum_rule":
        args = (fm(rn(T, B, H, D)), fm(rn(T, B, H, D)), rn(T, B, H, D))
        state = (rn(B, H, D, D) * 0.5,)
    elif op == "delta_rule":
        args = (fm(rn(T, B, H, D)), fm(rn(T, B, H, D)), rn(T, B, H, D), sig(rn(T, B, H)))
        state = (rn(B, H, D, D) * 0.5,)
    elif op == "rdn":
        args = (rn(T, B, H, D), rn(T, B, H, D), rn(T, B, H, D), rn(T, B, H),
                rn(H, D, D) * 0.5, rn(H, D, D) * 0.5, rn(H, D, D) * 0.5, rn(H, D) * 0.5)
        state = (rn(B, H, D, D) * 0.5, rn(B, H, D))
    elif op == "delta_rnn":
        args = (fm(rn(T, B, H, D)), fm(rn(T, B, H, D)), rn(T, B, H, D), sig(rn(T, B, H)),
                fm(rn(T, B, H, D)), rn(T, B, H, D), sig(rn(T, B, H)))
        state = (rn(B, H, D, D) * 0.5, rn(B, H, D, D) * 0.5, rn(B, H, D))
    else:
        raise ValueError(op)
    reset = torch.rand(T, B, generator=g) < reset_p
    args = tuple(a.to(dtype=dtype, device=device) for a in args)
    state = tuple(s.to(device=device) for s in state) if random_state else None
    return args, state, reset.to(device)


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)
