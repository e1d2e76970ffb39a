"""Plumbing shared by the fused kernels: the device check, block sizes, strides and the reset mask.

The kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter when
TRITON_INTERPRET=1 was set before the kernel modules were imported (that is how the test suite runs
them on a machine without a GPU).
"""
import functools

import torch
import triton
import triton.language as tl

MAX_HEAD_DIM = 64      # the register tiles hold [D, D] blocks; larger heads: backend="reference"
CHECKPOINT_EVERY = 16  # rdn / delta_rnn: the recurrent state is stored every this many steps


@triton.jit
def lanes(offsets, n, live):
    """The mask of the first n lanes, or of none unless `live` (a scalar): the form of a scalar
    condition on a vector mask that the interpreter handles (it mistypes `mask & scalar`)."""
    return offsets < tl.where(live, n, 0)


@triton.jit
def softmax(a, mask):
    """Softmax over a vector's first lanes (`mask`); the masked lanes get 0."""
    a = tl.where(mask, a, float("-inf"))
    e = tl.exp(a - tl.max(a, 0))
    return e / tl.sum(e, 0)


def check_inputs(op, kernel, tensors, head_dims):
    """Raise a clear error for a device the kernel cannot run on or a head dim it does not hold."""
    compiled = isinstance(kernel, triton.runtime.JITFunction)  # not Triton's interpreter
    if compiled and not all(t.is_cuda for t in tensors):
        device = next(t.device for t in tensors if not t.is_cuda)
        raise RuntimeError(
            f"{op}: the Triton backend needs CUDA tensors, got tensors on {device}. Use "
            f"backend='reference' on CPU, or set TRITON_INTERPRET=1 before importing fwp_core to run "
            f"the kernels under Triton's interpreter (for testing).")
    for D in head_dims:
        if D > MAX_HEAD_DIM:
            raise ValueError(f"{op}: the Triton backend supports head dims up to {MAX_HEAD_DIM}, got "
                             f"{D}; use backend='reference' for larger heads")


def acc_type(state):
    """The Triton type of the accumulation (the state's dtype: float32, or float64)."""
    return tl.float64 if state.dtype == torch.float64 else tl.float32


def block(d):
    """The power-of-two block that holds a head dim of d (padded lanes are masked)."""
    return max(triton.next_power_of_2(d), 2)


def seq(x):
    """x [T, B, H, ...] with a unit last stride (split views pass without a copy), and its strides
    over (T, B, H)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    return (x, x.stride(0), x.stride(1), x.stride(2))


def steps(x):
    """Per-step scalars [T, B, H] and their strides."""
    return (x, x.stride(0), x.stride(1), x.stride(2))


def reset_arg(reset, like):
    """The reset mask as bytes (a pointer the kernel can read) and whether there is one."""
    if reset is None:
        return like, False
    return reset.contiguous().view(torch.uint8), True


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(device):
    return torch.cuda.get_device_properties(device).multi_processor_count


def sm_count(device):
    """Streaming multiprocessors of a CUDA device (a nominal 4 under the interpreter)."""
    return _cuda_sm_count(device) if device.type == "cuda" else 4


def column_blocks(B, H, DK, DV, device):
    """Launch shape of the column-split rules (sum, delta): BK, BV, the number of column blocks NV,
    and warps. Column blocks are as wide as 32, narrowed (to 8 at least) until there are about two
    programs per SM, since one program per (sequence, head) leaves most of a big GPU idle at
    B·H = 128 (the paper's RL batch)."""
    BK, BV = block(DK), min(block(DV), 32)
    while BV > 8 and B * H * triton.cdiv(DV, BV) < 2 * sm_count(device):
        BV //= 2
    return BK, BV, triton.cdiv(DV, BV), warps(BK * BV)


def needs_grad(*tensors):
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def warps(tile, tiles_held=2):
    """Warps for a program holding `tiles_held` live [*, *] tiles of `tile` elements each: about
    16 fp32 registers per tile per thread for the column-split rules (W and its gradient), 8 for
    the recurrent ones (W, G and three R's at once) so they stay clear of 255 registers."""
    return max(1, min(8, tile * tiles_held // 1024))
