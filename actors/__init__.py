"""Actors: environment construction (envs.py) and the Ray rollout actor."""


def resolve_actor(handle_or_name):
    """A Ray actor handle, given a handle or a named actor's name (None stays None).

    runtime/service.py hands its restartable actors the names of the actors they call, not handles:
    Ray logs an error for every restartable actor whose constructor arguments hold an actor handle,
    since it does not keep such arguments for a restart (ray-project/ray#53727). A name is looked
    up again by each incarnation. In-process users (tests, benchmarks) may pass handles."""
    if not isinstance(handle_or_name, str):
        return handle_or_name
    import ray
    return ray.get_actor(handle_or_name)
