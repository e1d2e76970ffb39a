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


@pytest.fixture
def restart_args_errors():
    """A function returning the lines of the running Ray session's logs (each process's stderr and
    core-worker log) in which Ray says a restartable actor was created with an actor handle among its
    arguments (ray-project/ray#53727): the service passes names instead (actors.resolve_actor)."""
    from pathlib import Path

    import ray

    def read():
        logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
        text = "".join(p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file())
        return [line for line in text.splitlines() if "has constructor arguments in the object store" in line]
    return read
