"""The one typed configuration of a run, and the YAML presets beside this file.

    cfg = load_config("configs/atari_cpu.yaml", overrides=["learner.lr=3e-4", "env.id=ALE/Breakout-v5"])

A preset is a YAML mapping of sections to fields (`env: {id: ALE/Pong-v5}`); anything left out keeps
its default below, which are the paper's Atari settings. Each section is a pydantic
dataclass (`cfg.learner.lr`): its annotations give the types, `Literal` the choices, `Field` the
ranges and the one-line meaning; a validator per section holds the rules between its fields, and
Config's the rules between sections. So a Config is checked whole when it is built (loaded or in
code), an assignment (cfg.run.logdir = ...) checks its value and its section's rules, check_config
checks the whole again, and a run that cannot train is refused before Ray starts. A bad key or value
raises ConfigError: one line naming the key and what is valid.
"""
import re
import typing
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass

from agents.options import TORSOS
from fwp_core.options import CORES, CoreConfig

from .envs import ATARI_PREFIX, check_env_id
from .errors import Error

PRESETS_DIR = Path(__file__).resolve().parent
LOSS_REDUCTIONS = ("sum", "mean")
# Strict types (no bool for a number, no number for a string), unknown keys refused, and an
# assignment (cfg.run.logdir = ...) checked like a value given at construction.
SECTION = ConfigDict(strict=True, extra="forbid", validate_assignment=True)


def _frames(value):
    """A frame count may be written 2e6 (a float in YAML): whole floats become ints."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Frames = Annotated[int, BeforeValidator(_frames)]
FrameList = Annotated[tuple[Annotated[Frames, Field(ge=1)], ...],
                      BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)]


@dataclass(config=SECTION)
class EnvConfig:
    id: str = Field("ALE/Pong-v5", description="ALE/<Game>-v5, or any gymnasium id with a Discrete action space "
                    "(popgym-*, CartPole-v1, ...)")
    num_envs: int = Field(32, ge=1, description="environments per actor")
    env_batches: int = Field(2, ge=1, description="groups of envs an actor keeps in flight: one steps while it "
                             "acts on another")
    num_threads: int = Field(0, ge=0, description="ALE C++ threads per actor; 0: the actor's CPUs")
    frame_skip: int = Field(4, ge=1, description="Atari: emulator frames per agent step (max-pooled over the last two)")
    frame_stack: int = Field(4, ge=1, description="Atari: frames stacked into one observation")
    img_size: int = Field(84, ge=1, description="Atari: frames resized to img_size x img_size grey")
    noop_max: int = Field(30, ge=0, description="Atari: up to this many no-op steps at the start of a game")
    episodic_life: bool = Field(True, description="Atari: a life loss ends the episode for the learner (the core "
                                "resets); the logged return is still the whole game's")
    fire_reset: bool = Field(True, description="Atari: press FIRE when a game starts, in games that need it")
    fire_on_life_loss: bool = Field(False, description="Atari with episodic_life: after every life loss the env plays "
                                    "FIRE, then action 2, for the agent (the paper's FireResetEnv); those forced steps "
                                    "stay out of the policy loss")
    sticky_actions: float = Field(0.0, ge=0, le=1, description="Atari: probability of repeating the previous action "
                                  "(0.25: Machado et al.)")
    max_episode_frames: int = Field(108_000, ge=0, description="Atari: a game is cut after this many emulator frames; "
                                    "0: no cap")
    full_action_space: bool = Field(False, description="Atari: all 18 actions instead of the game's minimal set")

    @field_validator("id")
    @classmethod
    def _usable(cls, env_id):
        check_env_id(env_id)   # registry and ROM lookups; a non-Atari id is made once to see its spaces
        return env_id

    @model_validator(mode="after")
    def _layout(self):
        if self.num_envs % self.env_batches:
            raise ValueError(f"env.num_envs ({self.num_envs}) must be a multiple of env.env_batches "
                             f"({self.env_batches}): the envs step in equal groups")
        return self


@dataclass(config=SECTION)
class ModelConfig:
    core: Literal[tuple(CORES)] = Field("rdn", description="the recurrent core")
    torso: Literal[TORSOS] = Field("auto", description="observation encoder; auto: impala_resnet for images, mlp "
                                   "for vectors")
    hidden_size: int = Field(256, ge=1, description="width of the Linear after the torso (and of the mlp torso)")
    use_last_action: bool = Field(False, description="feed the last action (one-hot) to the core")
    init: Literal["torch", "orthogonal"] = Field(
        "torch", description="initial weights: torch (PyTorch's defaults, uniform, biases too) or orthogonal (gain "
        "sqrt(2) in the torso, 0.01 on the policy head, 1 on the baseline head, zero biases: the PPO/APPO peers' "
        "Atari init); the core keeps its own")
    obs_norm: bool = Field(False, description="normalise each observation element by its running mean and std "
                           "(updated by the learner, published with the weights)")


@dataclass(config=SECTION)
class LearnerConfig:
    batch_size: int = Field(32, ge=1, description="unrolls per batch (B)")
    unroll_length: int = Field(50, ge=1, description="steps per unroll (T)")
    epochs: int = Field(1, ge=1, description="passes over each batch (1: IMPALA; more reuse it, corrected by V-trace)")
    minibatches: int = Field(1, ge=1, description="gradient steps per pass, each on batch_size / minibatches whole "
                             "unrolls")
    discount: float = Field(0.99, ge=0, le=1, description="gamma")
    lr: float = Field(6e-4, gt=0, description="learning rate at the start of lr_schedule")
    lr_schedule: Literal["linear", "constant", "cosine"] = Field(
        "linear", description="over run.total_frames: linear to zero, constant, or cosine to zero")
    lr_decay_start: float = Field(0.0, ge=0, lt=1, description="linear/cosine: the fraction of run.total_frames the "
                                  "lr is held for before it decays to zero over the rest (0: decays from the start)")
    optimizer: Literal["rmsprop", "adam"] = Field("rmsprop", description="torch.optim.RMSprop (the paper's) or Adam")
    rmsprop_alpha: float = Field(0.99, ge=0, le=1, description="RMSprop: smoothing of the squared-gradient average")
    rmsprop_eps: float = Field(0.01, ge=0, description="RMSprop: added to the root of the squared-gradient average")
    rmsprop_momentum: float = Field(0.0, ge=0, description="RMSprop: momentum")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="Adam: first-moment decay")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="Adam: second-moment decay")
    adam_eps: float = Field(1e-8, ge=0, description="Adam: added to the root of the second moment")
    grad_clip: float = Field(40.0, ge=0, description="global gradient-norm clip; 0: none")
    loss: Literal["impala", "appo"] = Field(
        "impala", description="impala: IMPALA's policy gradient; appo: PPO's clipped surrogate on the V-trace "
        "advantages, ratio pi/mu to the behaviour policy (RLlib's and Sample Factory's APPO)")
    ppo_clip: float = Field(0.2, gt=0, description="appo: the ratio is clipped to [1 - ppo_clip, 1 + ppo_clip]")
    advantage_norm: bool = Field(False, description="policy-gradient advantages to zero mean and unit std per batch")
    popart: bool = Field(False, description="PopArt: the baseline head predicts normalised values (Hessel et al. 2019)")
    popart_beta: float = Field(3e-4, gt=0, le=1, description="PopArt: step size of the value statistics' moving "
                               "averages, in (0, 1]")
    entropy_cost: float = Field(0.01, ge=0, description="weight of the entropy bonus")
    baseline_cost: float = Field(0.5, ge=0, description="weight of the baseline (value) loss")
    reward_clip: float = Field(1.0, ge=0, description="rewards clipped to [-reward_clip, reward_clip] in the loss and "
                               "the core's input; 0: no clip")
    loss_reduction: Literal[LOSS_REDUCTIONS] = Field("sum", description="losses summed (the paper) or averaged "
                                                     "over T x B")
    clip_rho: float = Field(1.0, gt=0, description="V-trace: rho-bar, the clip of the importance weights in the "
                            "targets")
    clip_pg_rho: float = Field(1.0, gt=0, description="V-trace: the clip of the importance weights in the policy "
                               "gradient")
    vtrace_lambda: float = Field(1.0, ge=0, le=1, description="V-trace: lambda (1: the paper; < 1 trades bias for "
                                 "variance)")
    bf16: bool = Field(False, description="autocast the learner's forward pass to bfloat16 (CUDA only)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="the learner's device; auto: CUDA when there "
                                                   "is one")

    @model_validator(mode="after")
    def _minibatches(self):
        if self.batch_size % self.minibatches:
            raise ValueError(f"learner.batch_size ({self.batch_size}) must be a multiple of learner.minibatches "
                             f"({self.minibatches}): a minibatch holds whole unrolls")
        return self


@dataclass(config=SECTION)
class RunConfig:
    total_frames: Frames = Field(200_000_000, ge=1, description="environment frames to train for (agent steps x "
                                 "frame skip)")
    num_actors: int = Field(48, ge=1, description="Ray rollout actors")
    actor_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves per actor (its env threads use them)")
    actor_bf16: bool = Field(False, description="actors run a conv torso in bfloat16 (fast on CPUs with AVX512-BF16 "
                             "or AMX, slow elsewhere); the core stays float32")
    seed: int = Field(0, ge=0, description="seed of the initial weights, the envs and the sampled actions")
    logdir: str = Field("", description="run directory; empty: runs/<env>-<core>-<date-time>")
    max_rollouts_in_flight: int = Field(2, ge=1, description="rollout calls pending per actor, at most; calls go out "
                                        "only while the sequences not yet trained on stay within a rollout per actor "
                                        "plus the rest of a batch plus the batch being prepared")
    learner_queue_size: int = Field(0, ge=0, description="rollouts the learner fetches ahead of training on them; 0: "
                                    "enough for two batches")
    max_policy_lag: int = Field(0, ge=0, description="drop (and count) sequences acted with weights more than this "
                                "many updates old; 0: keep all")
    publish_interval: int = Field(1, ge=1, description="updates between two publications of the weights to the actors")
    max_learner_restarts: int = Field(3, ge=0, description="times the driver restarts a dead learner from the last "
                                      "checkpoint")
    learner_threads: int = Field(0, ge=0, description="torch threads of the learner's process (its update and the "
                                 "loader's batch preparation); 0: the CPUs Ray reserves for it, 1")
    inference: Literal["actor", "central"] = Field(
        "actor", description="where the policy acts: in each rollout actor, or central (one server batches the "
        "requests of all actors' envs; the actors only step envs)")
    inference_batch: int = Field(512, ge=1, description="central: the most envs one inference batch holds")
    inference_timeout_ms: float = Field(2.0, ge=0, description="central: how long a batch waits for more requests "
                                        "once it has one")
    inference_weights_poll_ms: float = Field(5.0, gt=0, description="central: how often the server asks for newer "
                                             "weights (off the serving path; a batch's weights are at most this much "
                                             "older than the newest published)")
    inference_cpus: float = Field(1.0, ge=0, description="central: CPUs Ray reserves for the inference server")
    inference_gpus: float = Field(0.0, ge=0, description="central: GPUs for the inference server (0: it runs on "
                                  "CPUs; a GPU of its own, or a fraction the cluster has spare)")
    checkpoint_interval_s: float = Field(600.0, gt=0, description="seconds between checkpoints (also at the end and "
                                         "on a signal)")
    save_at_frames: FrameList = Field((), description="frame counts at which a copy of the checkpoint is kept as "
                                      "checkpoint_<frames>.pt (e.g. [200e6] for the paper's 50M-step results)")
    log_interval_s: float = Field(10.0, gt=0, description="seconds between TensorBoard points and progress lines")


@dataclass(config=SECTION)
class Config:
    env: EnvConfig = Field(default_factory=EnvConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    core: CoreConfig = Field(default_factory=CoreConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _fits(self):
        envs, batch, ahead = self.env.num_envs, self.learner.batch_size, self.run.learner_queue_size
        if ahead and ahead * envs < batch:
            raise ValueError(f"run.learner_queue_size={ahead} rollouts of env.num_envs={envs} envs hold fewer than a "
                             f"batch of learner.batch_size={batch} sequences: raise it to at least "
                             f"{-(-batch // envs)}, or 0 for the default (two batches)")
        images = self.env.id.startswith(ATARI_PREFIX)   # Atari: stacked frames; anything else: a flat vector
        if self.model.torso in (("mlp",) if images else ("nature", "impala_resnet")):
            raise ValueError(f"model.torso={self.model.torso!r} does not take the observations of {self.env.id} "
                             f"({'images' if images else 'flat vectors'}); choose auto or "
                             f"{'nature, impala_resnet' if images else 'mlp'}")
        return self


SECTIONS = {name: f.annotation for name, f in Config.__pydantic_fields__.items()}


class ConfigError(Error):
    """A config file, key or value that cannot be used; the message says why and what is valid."""


def _limits(metadata):
    """{'ge': 1, ...}: the range constraints among a field's metadata."""
    return {k: getattr(m, k) for m in metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}


def _bounds(c):
    """'be >= 1', 'lie in [0, 1)', ...: the range that limits `c` ({'ge': 0, 'lt': 1}) allow."""
    low = ("[", c["ge"]) if "ge" in c else ("(", c["gt"]) if "gt" in c else None
    high = (c["le"], "]") if "le" in c else (c["lt"], ")") if "lt" in c else None
    if low and high:
        return f"lie in {low[0]}{low[1]:g}, {high[0]:g}{high[1]}"
    if low:
        return f"be {'>=' if low[0] == '[' else '>'} {low[1]:g}"
    return f"be {'<=' if high[1] == ']' else '<'} {high[0]:g}"


_TYPES = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
          "tuple": "a list (e.g. [1, 2])", "list": "a list (e.g. [1, 2])"}


def _explain(section, cls, error):
    """One line for the first error of a pydantic ValidationError raised by section class `cls`."""
    e = error.errors(include_url=False)[0]
    kind, loc, value = e["type"], e["loc"], e.get("input")
    if not loc:                                   # a section's validator: its message names the keys
        return str(e["ctx"]["error"]) if "error" in e.get("ctx", {}) else e["msg"]
    key = f"{section}.{loc[0]}" + "".join(f"[{i}]" for i in loc[1:])
    field = cls.__pydantic_fields__[loc[0]]
    if kind == "literal_error":
        choices = ", ".join(map(str, typing.get_args(field.annotation)))
        return f"{key}={value!r} is not a valid choice; choose one of {choices}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{key} must {_bounds(_limits(field.metadata) if len(loc) == 1 else e['ctx'])}, got {value!r}"
    if kind == "value_error":
        return f"{key}: {e['ctx']['error']}"
    what = _TYPES.get(kind.split("_")[0])
    return f"{key} must be {what}, got {value!r}" if what else f"{key}: {e['msg']} (got {value!r})"


def _section(name, cls, values):
    """Section `name` (class `cls`) from a mapping {field: value}; ConfigError names a bad key."""
    fields = cls.__pydantic_fields__
    for key in values:
        if key not in fields:
            raise ConfigError(f"unknown config key '{name}.{key}'; valid keys in {name}: {', '.join(fields)}")
    try:
        return cls(**values)
    except ValidationError as e:
        raise ConfigError(_explain(name, cls, e)) from None


def config_from_dict(mapping, source="config"):
    """The Config of a nested mapping {section: {field: value}} (a preset, a config.yaml, a
    checkpoint's config); anything left out keeps its default. ConfigError names the first bad key."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: expected a mapping of sections ({', '.join(SECTIONS)}), "
                          f"got {type(mapping).__name__}")
    for name, values in mapping.items():
        if name not in SECTIONS:
            raise ConfigError(f"{source}: unknown section {name!r}; valid sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {name!r} must be a mapping of fields, got {values!r}")
    sections = {name: _section(name, cls, mapping.get(name, {})) for name, cls in SECTIONS.items()}
    try:
        return Config(**sections)
    except ValidationError as e:
        raise ConfigError(_explain("config", Config, e)) from None


class _YAML(yaml.SafeLoader):
    """YAML as the config reads it: numbers in exponent form without a dot (1e-3, 2e6) are numbers,
    as in YAML 1.2, not the strings YAML 1.1 makes of them."""


_YAML.add_implicit_resolver("tag:yaml.org,2002:float",
                            re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def parse_override(text):
    """'learner.lr=3e-4' -> ('learner.lr', 0.0003), the value read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value (e.g. learner.lr=3e-4), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.load(raw, Loader=_YAML) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _preset(path):
    """The mapping of a YAML preset, by path or by name (atari_cpu, atari_cpu.yaml)."""
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
        return path, yaml.load(path.read_text(), Loader=_YAML) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None


def load_config(path=None, overrides=()):
    """Defaults, then the YAML preset at `path`, then `overrides` ('section.key=value' strings or
    (key, value) pairs); the result is checked as a whole."""
    mapping, source = {}, "config"
    if path is not None:
        path, mapping = _preset(path)
        source = str(path)
        if not isinstance(mapping, dict):
            raise ConfigError(f"{source}: expected a mapping of sections ({', '.join(SECTIONS)}), "
                              f"got {type(mapping).__name__}")
        mapping = {name: dict(values) if isinstance(values, dict) else values for name, values in mapping.items()}
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name or "." in name:
            raise ConfigError(f"unknown config key {key!r}: keys are <section>.<field> with section one of "
                              f"{', '.join(SECTIONS)}")
        if not isinstance(mapping.setdefault(section, {}), dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping of fields")
        mapping[section][name] = value
    return config_from_dict(mapping, source)


def check_config(cfg):
    """ConfigError unless `cfg`, as it is now, is a valid config: every key, and the rules between
    sections too (an assignment such as cfg.env.num_envs = 3 checks only its own section)."""
    config_from_dict(config_to_dict(cfg))


def config_to_dict(cfg):
    """Plain dicts, lists and scalars (tuples become lists), as YAML and TensorBoard hold them."""
    import dataclasses
    return _plain(dataclasses.asdict(cfg))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_yaml(cfg):
    """The resolved config as the YAML text of a run's config.yaml (load_config reads it back)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def describe(cfg):
    """Every key of `cfg` as text, one line each: key = value, the default where it differs, the
    meaning and what is valid (what `launch.py config --show PRESET` prints)."""
    lines = []
    for section, cls in SECTIONS.items():
        lines.append(f"{section}:")
        values, defaults = getattr(cfg, section), cls()
        for name, field in cls.__pydantic_fields__.items():
            value, default = getattr(values, name), getattr(defaults, name)
            text = f"  {section}.{name} = {value!r}"
            if value != default:
                text += f"  (default {default!r})"
            text = text.ljust(48) + "  " + (field.description or "")
            choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is Literal else ()
            if choices:
                text += f" [{' | '.join(map(str, choices))}]"
            elif _limits(field.metadata):     # 'be >= 1' -> ' (>= 1)', 'lie in [0, 1]' -> ' (in [0, 1])'
                text += f" ({_bounds(_limits(field.metadata)).removeprefix('be ').removeprefix('lie ')})"
            lines.append(text)
    return "\n".join(lines)
