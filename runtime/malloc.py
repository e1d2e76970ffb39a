"""Keep the learner's freed memory in its process instead of handing it back to the OS.

glibc's malloc serves each allocation above M_MMAP_THRESHOLD (128 KiB, raised as large blocks are
freed, to at most 32 MiB) with a fresh mmap and unmaps it on free, and trims the heap's free top
above M_TRIM_THRESHOLD. The learner allocates the same large tensors every update (the batch's
float frames, 38 MB at atari_cpu's 16 x 21 stacks, the torso's activations and their gradients),
so each update paid the page faults of touching them anew: turning the batch's frames into floats
took 12.8 ms, 2.7 into reused memory, and a whole update (prepare + step) 277 ms instead of 248
(lstm; rdn 289 against 264; bench/learner.py --preset atari_cpu [--default-malloc], one thread,
bench/RESULTS.md). With both thresholds far above any of those sizes, freed blocks stay in the heap
and the next update reuses them. The peak the process holds is the same (610 MB of resident memory
for atari_cpu's learner bench, 603 without); it just keeps it between updates.

Actors are not changed: their tensors (8-16 envs' worth) are small, and measured no faster.
"""
import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3     # glibc's <malloc.h>
KEEP_BYTES = 1 << 30                               # above any one tensor of a CPU learner


def keep_freed_memory():
    """Raise glibc's mmap and trim thresholds for this process (see above). Returns whether it
    applied: False where the C library is not glibc (macOS, musl), which keeps its own policy."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):     # glibc only: musl's mallopt does nothing
        return False
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES) and libc.mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES))
