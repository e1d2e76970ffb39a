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

from fwp_core import CORES, CoreConfig

PRESETS_DIR = Path(__file__).resolve().parent


def _choice(default, choices):
    return field(default=default, metadata={"choices": tuple(choices)})


@dataclass
class EnvConfig:
    id: str = "ALE/Pong-v5"            # ALE/<Game>-v5, or any gymnasium id (popgym-*, CartPole-v1, ...)
    num_envs: int = 32                 # environments per actor
    env_batches: int = 2               # groups of envs stepped while the actor acts on another
    num_threads: int = 0               # ALE C++ threads per actor; 0: the actor's CPUs
    # Atari preprocessing (the paper's protocol)
    frame_skip: int = 4
    frame_stack: int = 4
    img_size: int = 84
    noop_max: int = 30
    episodic_life: bool = True
    fire_reset: bool = True
    sticky_actions: float = 0.0        # 0.25 for the Machado et al. protocol
    max_episode_frames: int = 108_000
    full_action_space: bool = False


@dataclass
class ModelConfig:
    core: str = _choice("rdn", CORES)
    torso: str = _choice("auto", ("auto", "nature", "impala_resnet", "mlp"))  # auto: by observation
    hidden_size: int = 256             # torso output and MLP width
    use_last_action: bool = False      # feed the last action (one-hot) to the core
    # torch: PyTorch's default init (uniform, biases too); orthogonal: orthogonal weights with gain
    # sqrt(2) in the torso, 0.01 on the policy head and 1 on the baseline head, zero biases (the
    # PPO/APPO peers' Atari init)
    init: str = _choice("torch", ("torch", "orthogonal"))
    # normalise each observation element by its running mean and std (updated by the learner)
    obs_norm: bool = False


@dataclass
class LearnerConfig:
    batch_size: int = 32               # unrolls per update
    unroll_length: int = 50            # T
    # Passes over each batch, each in `minibatches` gradient steps on batch_size / minibatches whole
    # unrolls (1 and 1: one step per batch, as IMPALA; PPO-style reuse is corrected by V-trace and,
    # with loss=appo, bounded by the clip)
    epochs: int = 1
    minibatches: int = 1
    discount: float = 0.99
    lr: float = 6e-4
    # over run.total_frames: linear to zero, constant, or cosine to zero
    lr_schedule: str = _choice("linear", ("linear", "constant", "cosine"))
    optimizer: str = _choice("rmsprop", ("rmsprop", "adam"))
    rmsprop_alpha: float = 0.99
    rmsprop_eps: float = 0.01
    rmsprop_momentum: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float = 40.0            # global gradient norm; 0 turns clipping off
    # impala: the policy gradient of IMPALA; appo: PPO's clipped surrogate on the V-trace
    # advantages with the ratio pi/mu to the behaviour policy (RLlib's and Sample Factory's APPO)
    loss: str = _choice("impala", ("impala", "appo"))
    ppo_clip: float = 0.2              # appo: the ratio is clipped to [1 - ppo_clip, 1 + ppo_clip]
    advantage_norm: bool = False       # policy-gradient advantages to zero mean, unit std per batch
    popart: bool = False               # PopArt: the baseline head predicts normalised values
    popart_beta: float = 3e-4          # PopArt: step size of the value statistics' moving averages
    entropy_cost: float = 0.01
    baseline_cost: float = 0.5
    reward_clip: float = 1.0           # |r| clipped to this in the loss; 0 turns clipping off
    loss_reduction: str = _choice("sum", ("sum", "mean"))   # over T x B
    clip_rho: float = 1.0
    clip_pg_rho: float = 1.0
    vtrace_lambda: float = 1.0
    bf16: bool = False                 # autocast the forward pass to bfloat16 on CUDA
    device: str = _choice("auto", ("auto", "cpu", "cuda"))


@dataclass
class RunConfig:
    total_frames: int = 200_000_000    # environment frames (agent steps x frame skip)
    num_actors: int = 48
    actor_cpus: float = 1.0           # CPUs Ray reserves per actor (its env threads use them)
    actor_bf16: bool = False           # actors run a conv torso in bfloat16 (fast on CPUs with
                                       # AVX512-BF16 or AMX, slow elsewhere); the core stays float32
    seed: int = 0
    logdir: str = ""                   # "" -> runs/<env>-<core>-<date-time>
    max_rollouts_in_flight: int = 2    # per actor: back-pressure keeps memory flat
    checkpoint_interval_s: float = 600.0
    log_interval_s: float = 10.0


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    core: CoreConfig = field(default_factory=CoreConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    run: RunConfig = field(default_factory=RunConfig)


class ConfigError(ValueError):
    """A config file, key or value that cannot be used; the message says why and what is valid."""


def _sections(cfg):
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _coerce(key, value, f):
    """Check (and gently convert) `value` for dataclass field `f`; `key` names it in messages."""
    typ = f.type
    if isinstance(typ, str):  # a postponed annotation
        typ = eval(typ, {"int": int, "float": float, "bool": bool, "str": str})  # noqa: S307
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
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
    return dataclasses.asdict(cfg)


def config_from_dict(mapping, source="config"):
    return update_config(Config(), mapping, source)


def save_config(cfg, path):
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
