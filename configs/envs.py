"""Which env ids a run can use: the config's check of `env.id`, before Ray starts.

    check_env_id("ALE/Pong-v5")      # ValueError naming the id and the valid forms, unless usable
    atari_game("ALE/Pong-v5")        # 'pong': ale-py's ROM name (actors/envs.py builds from it)

`ALE/<Game>-v5` ids are checked against gymnasium's registry and ale-py's installed ROMs: nothing is
built, and their action sets are Discrete. Any other id (classic control, `popgym-*`) must be
registered and is made once (a fraction of a second; the result is cached per process) to see that
its action space is Discrete (the policy outputs one categorical distribution) and that its
observation space can be flattened.
"""
import difflib
from functools import lru_cache

ATARI_PREFIX = "ALE/"


def register_env_ids():
    """gymnasium, with the ids of ale-py (ALE/*) and popgym (popgym-*) registered: importing those
    packages registers them (both imports are cheap, neither loads torch)."""
    import ale_py  # noqa: F401
    import gymnasium as gym
    import popgym  # noqa: F401
    return gym


def _atari_games():
    from ale_py import roms
    return set(roms.get_all_rom_ids())


def _unknown_id_message(env_id):
    gym = register_env_ids()
    ale_ids = [k for k in gym.registry if k.startswith(ATARI_PREFIX) and k.endswith("-v5")]
    popgym_ids = [k for k in gym.registry if k.startswith("popgym-")]
    usable = [k for k, spec in gym.registry.items()
              if k.startswith(ATARI_PREFIX) or not str(spec.entry_point).startswith("ale_py")]
    close = difflib.get_close_matches(env_id, usable, n=3)
    return (f"unknown env id {env_id!r}. Valid ids: ALE/<Game>-v5 for Atari ({len(ale_ids)} games, e.g. "
            "ALE/Pong-v5, ALE/Breakout-v5, ALE/SpaceInvaders-v5, ALE/MsPacman-v5), popgym-<Task><Easy|Medium|"
            f"Hard>-v0 ({len(popgym_ids)} ids, e.g. popgym-RepeatPreviousEasy-v0, popgym-CountRecallMedium-v0, "
            "popgym-AutoencodeEasy-v0), or any registered gymnasium id with a Discrete action space (e.g. "
            "CartPole-v1, Acrobot-v1)." + (f" Close matches: {', '.join(close)}." if close else ""))


def atari_game(env_id):
    """ale-py's ROM name for an `ALE/<Game>-v5` id (e.g. 'space_invaders'), or a ValueError."""
    gym = register_env_ids()
    spec = gym.registry.get(env_id)
    if spec is None or spec.version != 5:
        raise ValueError(_unknown_id_message(env_id))
    game = spec.kwargs.get("game")
    if game not in _atari_games():
        raise ValueError(f"{env_id!r}: ale-py has no ROM {game!r}; installed games: "
                         f"{', '.join(sorted(_atari_games())[:8])}, ...")
    return game


@lru_cache(maxsize=None)
def check_env_id(env_id: str) -> None:
    """Raise ValueError (naming the id and the valid forms) unless actors.envs.make_env can build
    `env_id`: a known Atari game, or a registered gymnasium id with a Discrete action space and a
    flattenable observation space."""
    if env_id.startswith(ATARI_PREFIX):
        atari_game(env_id)
        return
    gym = register_env_ids()
    spec = gym.registry.get(env_id)
    if spec is None:
        raise ValueError(_unknown_id_message(env_id))
    if str(spec.entry_point).startswith("ale_py"):
        game = "".join(part.capitalize() for part in spec.kwargs.get("game", "pong").split("_"))
        raise ValueError(f"{env_id!r} is a legacy single-env Atari id; use the vectorised form "
                         f"ALE/{game}-v5 (frame skip, sticky actions etc. come from the env config)")
    try:
        env = gym.make(env_id, disable_env_checker=True)   # the checker warns spuriously on popgym
    except Exception as e:  # noqa: BLE001  a missing extra (mujoco, box2d), a broken entry point
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{env_id!r} cannot be made here ({type(e).__name__}: {first})") from None
    try:
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ValueError(f"{env_id!r} has action space {env.action_space}; only Discrete action spaces are "
                             "supported (the policy outputs one categorical distribution): choose an id with a "
                             "Discrete action space, e.g. CartPole-v1, ALE/Pong-v5, popgym-RepeatPreviousEasy-v0")
        try:
            gym.spaces.flatten_space(env.observation_space)
        except NotImplementedError:
            raise ValueError(f"{env_id!r}: observation space {env.observation_space} cannot be flattened") from None
    finally:
        env.close()
