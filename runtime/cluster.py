"""The Ray session and the resources of a run: how many CPUs it needs, where its learner goes.

    started = start_ray(cfg, address)      # join `address`, or start Ray here with room for the run
    check_cluster_fits(cfg)                 # on a cluster: ClusterError unless the run fits
"""
import os
from pathlib import Path

from configs.errors import Error

ROOT = Path(__file__).resolve().parents[1]   # the project's root: Ray workers import from here


class ClusterError(Error):
    """The Ray cluster cannot hold what the run asks for; the message says what to change."""


def cpus_needed(cfg):
    """CPUs a run reserves: every actor's run.actor_cpus, one for the learner, and the central
    inference server's."""
    central = cfg.run.inference_cpus if cfg.run.inference == "central" else 0
    return cfg.run.num_actors * cfg.run.actor_cpus + 1 + central


def start_ray(cfg, address=None, extra_cpus=0):
    """Join the cluster at `address`, or start Ray here with room for every actor (and `extra_cpus`
    more). Returns whether this call started (so should stop) the Ray session; False if one was
    already up."""
    import ray
    if ray.is_initialized():
        return False
    # Workers import the project from its root, installed or not.
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}}
    if address:
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        except ConnectionError as e:
            raise ClusterError(
                f"could not join the Ray cluster at {address} ({e}). Either nothing listens there, or the "
                "cluster uses token authentication and refused this driver's token: run with "
                "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN set to the head's token (`ray get-auth-token` on "
                "the head prints it), or copy the head's ~/.ray/auth_token to this machine") from None
    else:
        # Logical CPUs: at least one per actor plus the learner, even on a 2-core laptop
        # (the actors then share cores; the OS schedules them).
        # address="local": a new local instance, even when Ray's ray_current_cluster file names
        # another (a `ray start` on this machine), which ray.init() would otherwise try to join.
        need = int(cpus_needed(cfg) + extra_cpus + 0.999)
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need), include_dashboard=False,
                 runtime_env=runtime_env, log_to_driver=True)
    return True


def learner_resources(cfg):
    """Ray resources of the learner's actor: a GPU when the cluster has one (or learner.device asks)."""
    import ray
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.learner.device == "cuda" and gpus < 1:
        raise ClusterError("learner.device=cuda but the Ray cluster has no GPU; use learner.device=auto or cpu")
    want_gpu = cfg.learner.device == "cuda" or (cfg.learner.device == "auto" and gpus >= 1)
    # A central inference server asking for part of a GPU shares the learner's when the cluster has no
    # other: on one GPU, run.inference_gpus=0.5 gives each half of it (Ray packs fractions on one
    # device). A whole GPU for the server beside the learner's needs two; Ray would wait for ever.
    share = cfg.run.inference_gpus if cfg.run.inference == "central" else 0.0
    num_gpus = 1 if want_gpu else 0
    if want_gpu and share > 0 and gpus < 1 + share:
        if share >= 1:
            raise ClusterError(f"the learner's GPU and run.inference_gpus={share:g} need {1 + share:g} GPUs, the "
                               f"Ray cluster has {gpus:g}: give the inference server a fraction (e.g. 0.5) to share "
                               "the learner's")
        num_gpus = 1 - share
    # "DEFAULT": the cluster's own scheduling even inside a Ray Tune trial, whose placement group
    # would otherwise capture it (a trial's actors follow the ordinary resource rules).
    return {"num_gpus": num_gpus, "num_cpus": 1, "scheduling_strategy": "DEFAULT"}


def check_cluster_fits(cfg):
    """ClusterError unless the joined cluster has the CPUs the run reserves."""
    import ray
    cpus = ray.cluster_resources().get("CPU", 0)
    need = cpus_needed(cfg)
    if need > cpus:
        central = " + the inference server's" if cfg.run.inference == "central" else ""
        raise ClusterError(f"the Ray cluster has {cpus:g} CPUs but {cfg.run.num_actors} actors x "
                           f"{cfg.run.actor_cpus:g} CPUs + 1 for the learner{central} need {need:g}; lower "
                           "--num-actors or run.actor_cpus, or add nodes")
