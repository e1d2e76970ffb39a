"""The one typed configuration of a run, and the YAML presets beside this file.

    cfg = load_config("configs/atari_cpu.yaml", overrides=["learner.lr=3e-4", "env.id=ALE/Breakout-v5"])

A preset is a YAML mapping of sections to fields (`env: {id: ALE/Pong-v5}`); anything left out keeps
its default below, which are the paper's Atari settings (DESIGN.md). Unknown sections or keys and
values of the wrong type are refused with a message that lists the valid choices.
"""
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agents.torsos import TORSOS
from fwp_core import CORES, CoreConfig
from fwp_core.cores import config_field as _f

from .errors import Error

PRESETS_DIR = Path(__file__).resolve().parent


LOSS_REDUCTIONS = ("sum", "mean")


@dataclass
class EnvConfig:
    id: str = _f("ALE/Pong-v5", "ALE/<Game>-v5, or any gymnasium id with a Discrete action space "
                 "(popgym-*, CartPole-v1, ...)")
    num_envs: int = _f(32, "environments per actor")
    env_batches: int = _f(2, "groups of envs an actor keeps in flight: one steps while it acts on another")
    num_threads: int = _f(0, "ALE C++ threads per actor; 0: the actor's CPUs")
    frame_skip: int = _f(4, "Atari: emulator frames per agent step (max-pooled over the last two)")
    frame_stack: int = _f(4, "Atari: frames stacked into one observation")
    img_size: int = _f(84, "Atari: frames resized to img_size x img_size grey")
    noop_max: int = _f(30, "Atari: up to this many no-op steps at the start of a game")
    episodic_life: bool = _f(True, "Atari: a life loss ends the episode for the learner (the core resets); "
                             "the logged return is still the whole game's")
    fire_reset: bool = _f(True, "Atari: press FIRE when a game starts, in games that need it")
    fire_on_life_loss: bool = _f(False, "Atari with episodic_life: after every life loss the env plays FIRE, "
                                 "then action 2, for the agent (the paper's FireResetEnv); those forced steps "
                                 "stay out of the policy loss")
    sticky_actions: float = _f(0.0, "Atari: probability of repeating the previous action (0.25: Machado et al.)")
    max_episode_frames: int = _f(108_000, "Atari: a game is cut after this many emulator frames; 0: no cap")
    full_action_space: bool = _f(False, "Atari: all 18 actions instead of the game's minimal set")


@dataclass
class ModelConfig:
    core: str = _f("rdn", "the recurrent core", CORES)
    torso: str = _f("auto", "observation encoder; auto: impala_resnet for images, mlp for vectors", TORSOS)
    hidden_size: int = _f(256, "width of the Linear after the torso (and of the mlp torso)")
    use_last_action: bool = _f(False, "feed the last action (one-hot) to the core")
    init: str = _f("torch", "initial weights: torch (PyTorch's defaults, uniform, biases too) or orthogonal "
                   "(gain sqrt(2) in the torso, 0.01 on the policy head, 1 on the baseline head, zero biases: "
                   "the PPO/APPO peers' Atari init); the core keeps its own", ("torch", "orthogonal"))
    obs_norm: bool = _f(False, "normalise each observation element by its running mean and std "
                        "(updated by the learner, published with the weights)")


@dataclass
class LearnerConfig:
    batch_size: int = _f(32, "unrolls per batch (B)")
    unroll_length: int = _f(50, "steps per unroll (T)")
    epochs: int = _f(1, "passes over each batch (1: IMPALA; more reuse it, corrected by V-trace)")
    minibatches: int = _f(1, "gradient steps per pass, each on batch_size / minibatches whole unrolls")
    discount: float = _f(0.99, "gamma")
    lr: float = _f(6e-4, "learning rate at the start of lr_schedule")
    lr_schedule: str = _f("linear", "over run.total_frames: linear to zero, constant, or cosine to zero",
                          ("linear", "constant", "cosine"))
    lr_decay_start: float = _f(0.0, "linear/cosine: the fraction of run.total_frames the lr is held for "
                               "before it decays to zero over the rest (0: decays from the start)")
    optimizer: str = _f("rmsprop", "torch.optim.RMSprop (the paper's) or Adam", ("rmsprop", "adam"))
    rmsprop_alpha: float = _f(0.99, "RMSprop: smoothing of the squared-gradient average")
    rmsprop_eps: float = _f(0.01, "RMSprop: added to the root of the squared-gradient average")
    rmsprop_momentum: float = _f(0.0, "RMSprop: momentum")
    adam_beta1: float = _f(0.9, "Adam: first-moment decay")
    adam_beta2: float = _f(0.999, "Adam: second-moment decay")
    adam_eps: float = _f(1e-8, "Adam: added to the root of the second moment")
    grad_clip: float = _f(40.0, "global gradient-norm clip; 0: none")
    loss: str = _f("impala", "impala: IMPALA's policy gradient; appo: PPO's clipped surrogate on the V-trace "
                   "advantages, ratio pi/mu to the behaviour policy (RLlib's and Sample Factory's APPO)",
                   ("impala", "appo"))
    ppo_clip: float = _f(0.2, "appo: the ratio is clipped to [1 - ppo_clip, 1 + ppo_clip]")
    advantage_norm: bool = _f(False, "policy-gradient advantages to zero mean and unit std per batch")
    popart: bool = _f(False, "PopArt: the baseline head predicts normalised values (Hessel et al. 2019)")
    popart_beta: float = _f(3e-4, "PopArt: step size of the value statistics' moving averages, in (0, 1]")
    entropy_cost: float = _f(0.01, "weight of the entropy bonus")
    baseline_cost: float = _f(0.5, "weight of the baseline (value) loss")
    reward_clip: float = _f(1.0, "rewards clipped to [-reward_clip, reward_clip] in the loss and the core's "
                            "input; 0: no clip")
    loss_reduction: str = _f("sum", "losses summed (the paper) or averaged over T x B", LOSS_REDUCTIONS)
    clip_rho: float = _f(1.0, "V-trace: rho-bar, the clip of the importance weights in the targets")
    clip_pg_rho: float = _f(1.0, "V-trace: the clip of the importance weights in the policy gradient")
    vtrace_lambda: float = _f(1.0, "V-trace: lambda (1: the paper; < 1 trades bias for variance)")
    bf16: bool = _f(False, "autocast the learner's forward pass to bfloat16 (CUDA only)")
    device: str = _f("auto", "the learner's device; auto: CUDA when there is one", ("auto", "cpu", "cuda"))


@dataclass
class RunConfig:
    total_frames: int = _f(200_000_000, "environment frames to train for (agent steps x frame skip)")
    num_actors: int = _f(48, "Ray rollout actors")
    actor_cpus: float = _f(1.0, "CPUs Ray reserves per actor (its env threads use them)")
    actor_bf16: bool = _f(False, "actors run a conv torso in bfloat16 (fast on CPUs with AVX512-BF16 or AMX, "
                          "slow elsewhere); the core stays float32")
    seed: int = _f(0, "seed of the initial weights, the envs and the sampled actions")
    logdir: str = _f("", "run directory; empty: runs/<env>-<core>-<date-time>")
    max_rollouts_in_flight: int = _f(2, "rollout calls pending per actor, at most; calls go out only while the "
                                     "sequences not yet trained on stay within a rollout per actor plus the rest of a "
                                     "batch")
    learner_queue_size: int = _f(0, "rollouts the learner fetches ahead of training on them; 0: enough "
                                 "for two batches")
    max_policy_lag: int = _f(0, "drop (and count) sequences acted with weights more than this many "
                             "updates old; 0: keep all")
    publish_interval: int = _f(1, "updates between two publications of the weights to the actors")
    max_learner_restarts: int = _f(3, "times the driver restarts a dead learner from the last checkpoint")
    inference: str = _f("actor", "where the policy acts: in each rollout actor, or central (one server batches "
                        "the requests of all actors' envs; the actors only step envs)", ("actor", "central"))
    inference_batch: int = _f(512, "central: the most envs one inference batch holds")
    inference_timeout_ms: float = _f(2.0, "central: how long a batch waits for more requests once it has one")
    inference_weights_poll_ms: float = _f(5.0, "central: how often the server asks for newer weights (off the "
                                          "serving path; a batch's weights are at most this much older than "
                                          "the newest published)")
    inference_cpus: float = _f(1.0, "central: CPUs Ray reserves for the inference server")
    inference_gpus: float = _f(0.0, "central: GPUs for the inference server (0: it runs on CPUs; a GPU of its own, "
                               "or a fraction the cluster has spare)")
    checkpoint_interval_s: float = _f(600.0, "seconds between checkpoints (also at the end and on a signal)")
    save_at_frames: list[int] = _f((), "frame counts at which a copy of the checkpoint is kept as "
                                   "checkpoint_<frames>.pt (e.g. [200e6] for the paper's 50M-step results)")
    log_interval_s: float = _f(10.0, "seconds between TensorBoard points and progress lines")


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    core: CoreConfig = field(default_factory=CoreConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    run: RunConfig = field(default_factory=RunConfig)


class ConfigError(Error):
    """A config file, key or value that cannot be used; the message says why and what is valid."""


def _sections(cfg):
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _coerce(key, value, f):
    """Check (and gently convert) `value` for dataclass field `f`; `key` names it in messages."""
    typ = f.type
    if isinstance(typ, str):  # a postponed annotation
        typ = eval(typ, {"int": int, "float": float, "bool": bool, "str": str, "list": list})  # noqa: S307
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    if typing.get_origin(typ) is list:   # a list of one scalar type, each element checked
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list (e.g. [1, 2]), got {value!r}")
        item = dataclasses.field()
        item.type = typing.get_args(typ)[0]
        return tuple(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
    elif typ is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str):
            try:
                value = int(float(value)) if float(value).is_integer() else value
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
    elif typ is float:
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        value = float(value)
    elif typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key}={value!r} is not a valid choice; choose one of {', '.join(choices)}")
    return value


def _set(cfg, dotted, value):
    parts = dotted.split(".")
    sections = _sections(cfg)
    if len(parts) != 2 or parts[0] not in sections:
        raise ConfigError(f"unknown config key {dotted!r}: keys are <section>.<field> with section one of "
                          f"{', '.join(sections)}")
    section = sections[parts[0]]
    fields = {f.name: f for f in dataclasses.fields(section)}
    if parts[1] not in fields:
        raise ConfigError(f"unknown config key {dotted!r}; valid keys in {parts[0]}: {', '.join(fields)}")
    setattr(section, parts[1], _coerce(dotted, value, fields[parts[1]]))


def update_config(cfg, mapping, source="config"):
    """Apply a nested mapping {section: {field: value}} onto cfg, checking every key and type."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: expected a mapping of sections ({', '.join(_sections(cfg))}), "
                          f"got {type(mapping).__name__}")
    for section, values in mapping.items():
        if section not in _sections(cfg):
            raise ConfigError(f"{source}: unknown section {section!r}; valid sections: "
                              f"{', '.join(_sections(cfg))}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping of fields")
        for key, value in values.items():
            _set(cfg, f"{section}.{key}", value)
    return cfg


def parse_override(text):
    """'learner.lr=3e-4' -> ('learner.lr', 3e-4), the value read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value (e.g. learner.lr=3e-4), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path=None, overrides=()):
    """Defaults, then the YAML preset at `path`, then `overrides` ('section.key=value' strings or
    (key, value) pairs), each checked."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file() and not path.parent.name:  # a bare preset name: atari_cpu(.yaml)
            for preset in (PRESETS_DIR / path.name, PRESETS_DIR / f"{path.name}.yaml"):
                if preset.is_file():
                    path = preset
                    break
        if not path.is_file():
            presets = ", ".join(sorted(p.name for p in PRESETS_DIR.glob("*.yaml")))
            raise ConfigError(f"config file {str(path)!r} not found; presets in {PRESETS_DIR}: {presets}")
        try:
            mapping = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        update_config(cfg, mapping, source=str(path))
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        _set(cfg, key, value)
    return cfg


def config_to_dict(cfg):
    """Plain dicts, lists and scalars (tuples become lists), as YAML and TensorBoard hold them."""
    return _plain(dataclasses.asdict(cfg))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_from_dict(mapping, source="config"):
    return update_config(Config(), mapping, source)


def config_yaml(cfg):
    """The resolved config as the YAML text of a run's config.yaml (load_config reads it back)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def describe(cfg):
    """Every key of `cfg` as text, one line each: key = value, the default where it differs, the
    valid choices and the meaning (what `launch.py config --show PRESET` prints)."""
    lines = []
    for section, values in _sections(cfg).items():
        lines.append(f"{section}:")
        defaults = type(values)()
        for f in dataclasses.fields(values):
            value, default = getattr(values, f.name), getattr(defaults, f.name)
            text = f"  {section}.{f.name} = {value!r}"
            if value != default:
                text += f"  (default {default!r})"
            text = text.ljust(48) + "  " + f.metadata.get("help", "")
            if "choices" in f.metadata:
                text += f" [{' | '.join(map(str, f.metadata['choices']))}]"
            lines.append(text)
    return "\n".join(lines)
