"""Command line of the framework (train, eval, compare, bench arrive with their issues)."""
import argparse
import sys


def cmd_demo(args):
    """Run every core on random input: a smoke test of the install."""
    import torch

    from fwp_core import CORES, make_core
    torch.manual_seed(0)
    x = torch.randn(args.steps, 4, 64)
    for name in CORES:
        core = make_core(name, 64)
        y, _ = core(x, core.initial_state(4))
        params = sum(p.numel() for p in core.parameters())
        print(f"{name:20s} params {params:>8,d}  output {tuple(y.shape)}  mean |y| {y.abs().mean():.4f}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="launch.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run every core once on random input")
    demo.add_argument("--steps", type=int, default=20)
    demo.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
