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

# One intra-op thread in the test processes: pyproject's addopts run two pytest workers on the 2-core
# box and the tests' tensors are tiny, so a second OpenMP thread buys nothing and each op waits at
# its barrier for a thread that the other worker (or a Ray actor) has descheduled: ten updates of the
# tiny rdn learner took 10.5 s with 2 threads and 0.26 s with 1 on the loaded box. The processes
# a test starts (launch.py, Ray's actors) set their own threads, as they do for a user.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """The GPU-size kernel cases (test_gpu_check_sizes_match_reference) belong to bench/gpu_check.sh,
    which sets FWP_GPU_CHECK=1 (its dry run runs their CPU stand-ins through the suite's own
    test_gpu_check.py). Elsewhere they are deselected, as `-m` would, not collected as skips."""
    if os.environ.get("FWP_GPU_CHECK") == "1":
        return
    gpu_sized = [item for item in items if item.originalname == "test_gpu_check_sizes_match_reference"]
    if gpu_sized:
        items[:] = [item for item in items if item.originalname != "test_gpu_check_sizes_match_reference"]
        config.hook.pytest_deselected(items=gpu_sized)


@pytest.fixture(scope="module")
def ray_session():
    """The local Ray session the tests of one pytest worker share (pyproject's addopts run two, each
    with whole modules): started by the first module that needs it and kept to the end of the worker
    (each start and shutdown costs seconds), with 6 logical CPUs: room for two CartPole
    runs (2 actors + a learner each) side by side. A test that needs Ray to itself shuts it down
    (test_drills.py); the next module that asks starts it again."""
    import ray

    from configs import load_config
    from runtime import cluster
    if not ray.is_initialized():
        cluster.start_ray(load_config("cartpole", ["run.num_actors=5"]))
    yield


@pytest.fixture(scope="session", autouse=True)
def _shut_ray_down_at_the_end():
    yield
    import ray
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def restart_args_errors():
    """A function returning the lines of the running Ray session's logs (each process's stderr and
    core-worker log), written since this test started, in which Ray says a restartable actor was
    created with an actor handle among its arguments (ray-project/ray#53727): the service passes
    names instead (actors.resolve_actor)."""
    from pathlib import Path

    import ray

    def logs():
        return {p: p.stat().st_size for p in Path(ray._private.worker.global_worker.node.get_logs_dir_path()).rglob("*")
                if p.is_file()}
    before = logs()     # the session is shared: earlier tests' lines are not this test's

    def read():
        lines = []
        for path in logs():
            with open(path, "rb") as f:
                f.seek(before.get(path, 0))
                lines += f.read().decode(errors="replace").splitlines()
        return [line for line in lines if "has constructor arguments in the object store" in line]
    return read
