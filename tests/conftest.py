"""Session setup shared by every test module.

Without a GPU, the fused Triton kernels run under Triton's interpreter. Triton decides between the
compiler and the interpreter when a kernel is decorated (@triton.jit, at the kernel module's
import), reading TRITON_INTERPRET then; conftest is imported before any test module, so setting it
here reaches every kernel (tests/test_kernels.py checks that it did).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray session for one test module, with CPUs for a CartPole run of 3 actors (4)."""
    import ray

    from configs import load_config
    from runtime import cluster
    cluster.start_ray(load_config("cartpole", ["run.num_actors=3"]))
    yield
    ray.shutdown()
