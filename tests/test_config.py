"""configs/: one validated config. Every bad input to `launch.py train` is refused with exit status 2
and one line naming the key and what is valid, before Ray starts; every preset, and every config.yaml
a run directory holds (those written before the config moved to pydantic too), still loads and
writes back unchanged."""
import dataclasses
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
from pydantic import ValidationError
from ray import cloudpickle

import launch
from agents import TORSOS
from configs import (PRESETS_DIR, Config, ConfigError, EnvConfig, check_config, config_from_dict, config_to_dict,
                     config_yaml, describe, load_config)
from configs.envs import check_env_id
from fwp_core import CORES
from fwp_core.options import FEATURE_MAPS

ROOT = Path(launch.__file__).resolve().parent
OLD_CONFIG = Path(__file__).with_name("config_written_before_pydantic.yaml")

# `launch.py train` arguments (a --logdir is added unless the case is about --resume's) and the texts
# its one line of error must hold: the key, and the valid choices or range.
BAD_INPUTS = [
    # unknown keys, and --set's own form
    (["--set", "learner.lrate=1"], ["unknown config key 'learner.lrate'", "valid keys in learner: batch_size, "]),
    (["--set", "optim.lr=1"], ["unknown config key 'optim.lr'", "section one of env, model, core, learner, run"]),
    (["--set", "learner.lr"], ["--set expects key=value (e.g. learner.lr=3e-4), got 'learner.lr'"]),
    # wrong types
    (["--set", "learner.lr=fast"], ["learner.lr must be a number, got 'fast'"]),
    (["--set", "env.num_envs=2.5"], ["env.num_envs must be an integer, got 2.5"]),
    (["--set", "run.num_actors=true"], ["run.num_actors must be an integer, got True"]),
    (["--set", "learner.bf16=maybe"], ["learner.bf16 must be true or false, got 'maybe'"]),
    (["--set", "run.save_at_frames=2e8"], ["run.save_at_frames must be a list (e.g. [1, 2]), got 200000000.0"]),
    (["--total-frames", "lots"], ["argument --total-frames: expected a whole number, got 'lots'"]),
    # out of range
    (["--set", "learner.batch_size=0"], ["learner.batch_size must be >= 1, got 0"]),
    (["--set", "learner.unroll_length=-5"], ["learner.unroll_length must be >= 1, got -5"]),
    (["--envs-per-actor", "0"], ["env.num_envs must be >= 1, got 0"]),
    (["--num-actors", "0"], ["run.num_actors must be >= 1, got 0"]),
    (["--set", "learner.lr=-3e-4"], ["learner.lr must be > 0, got -0.0003"]),
    (["--set", "learner.vtrace_lambda=1.5"], ["learner.vtrace_lambda must lie in [0, 1], got 1.5"]),
    (["--set", "learner.discount=1.2"], ["learner.discount must lie in [0, 1], got 1.2"]),
    (["--set", "learner.lr_decay_start=1"], ["learner.lr_decay_start must lie in [0, 1), got 1"]),
    (["--set", "learner.popart_beta=2"], ["learner.popart_beta must lie in (0, 1], got 2"]),
    (["--set", "env.sticky_actions=1.5"], ["env.sticky_actions must lie in [0, 1], got 1.5"]),
    (["--set", "run.save_at_frames=[1e6, 0]"], ["run.save_at_frames[1] must be >= 1, got 0"]),
    (["--set", "core.num_heads=0"], ["core.num_heads must be >= 1, got 0"]),
    (["--set", "env.frame_skip=0"], ["env.frame_skip must be >= 1, got 0"]),
    (["--set", "env.env_batches=0"], ["env.env_batches must be >= 1, got 0"]),
    (["--set", "learner.epochs=0"], ["learner.epochs must be >= 1, got 0"]),
    (["--set", "run.inference_timeout_ms=-1"], ["run.inference_timeout_ms must be >= 0, got -1"]),
    (["--set", "run.inference_weights_poll_ms=0"], ["run.inference_weights_poll_ms must be > 0, got 0"]),
    (["--set", "run.inference_batch=0"], ["run.inference_batch must be >= 1, got 0"]),
    (["--set", "run.learner_threads=-2"], ["run.learner_threads must be >= 0, got -2"]),
    # rules between keys: a batch the envs cannot fill, groups, minibatches, torso and observations
    (["--set", "run.learner_queue_size=1", "--set", "learner.batch_size=64"],
     ["run.learner_queue_size=1 rollouts of env.num_envs=32 envs hold fewer than a batch of learner.batch_size=64",
      "raise it to at least 2, or 0"]),
    (["--set", "env.env_batches=3"], ["env.num_envs (32) must be a multiple of env.env_batches (3)"]),
    (["--set", "learner.minibatches=3"], ["learner.batch_size (32) must be a multiple of learner.minibatches (3)"]),
    (["--env", "CartPole-v1", "--set", "model.torso=nature"],
     ["model.torso='nature' does not take the observations of CartPole-v1", "choose auto or mlp"]),
    # env ids
    (["--env", "ALE/Pongg-v5"], ["env.id: unknown env id 'ALE/Pongg-v5'. Valid ids: ALE/<Game>-v5",
                                 "Close matches: ALE/Pong-v5"]),
    (["--env", "NoSuchEnv-v0"], ["env.id: unknown env id 'NoSuchEnv-v0'", "popgym-<Task>", "CartPole-v1"]),
    (["--env", "PongNoFrameskip-v4"], ["env.id: 'PongNoFrameskip-v4' is a legacy single-env Atari id; use the "
                                       "vectorised form ALE/Pong-v5"]),
    (["--env", "Pendulum-v1"], ["env.id: 'Pendulum-v1' has action space Box(", "only Discrete action spaces",
                                "e.g. CartPole-v1"]),
    (["--env", "popgym-MineSweeperEasy-v0"], ["env.id: 'popgym-MineSweeperEasy-v0' has action space MultiDiscrete",
                                              "only Discrete"]),
    # choices
    (["--core", "transformer"], [f"model.core='transformer' is not a valid choice; choose one of {', '.join(CORES)}"]),
    (["--set", "core.feature_map=relu"],
     [f"core.feature_map='relu' is not a valid choice; choose one of {', '.join(FEATURE_MAPS)}"]),
    (["--set", "model.torso=resnet"],
     [f"model.torso='resnet' is not a valid choice; choose one of {', '.join(TORSOS)}"]),
    (["--set", "learner.optimizer=sgd"],
     ["learner.optimizer='sgd' is not a valid choice; choose one of rmsprop, adam"]),
    (["--set", "learner.loss=ppo"], ["learner.loss='ppo' is not a valid choice; choose one of impala, appo"]),
    (["--config", "nope.yaml"], ["config file 'nope.yaml' not found; presets in", "atari_cpu.yaml"]),
    # conflicting flags
    (["--env", "CartPole-v1", "--set", "env.id=Acrobot-v1"], ["--env and --set env.id=... both set env.id"]),
    (["--core", "lstm", "--set", "model.core=rdn"], ["--core and --set model.core=... both set model.core"]),
    (["--resume"], ["--resume needs --logdir"]),
    (["--resume", "--config", "atari_cpu"], ["--resume continues with the run's own config.yaml; drop --config"]),
]
# As real processes: the user's three that Ray used to start on, and one of each other kind.
SUBPROCESS_INPUTS = [case for case in BAD_INPUTS if case[0] in (
    ["--set", "learner.vtrace_lambda=1.5"], ["--set", "learner.discount=1.2"], ["--env", "Pendulum-v1"],
    ["--set", "learner.lrate=1"], ["--core", "transformer"], ["--env", "NoSuchEnv-v0"],
    ["--env", "CartPole-v1", "--set", "env.id=Acrobot-v1"])]


def _train_argv(argv, tmp_path):
    return ["train", *argv] if argv == ["--resume"] else ["train", "--logdir", str(tmp_path / "run"), *argv]


def _main(argv):
    """launch.main's exit status (argparse's own errors exit from inside it)."""
    try:
        return launch.main(argv)
    except SystemExit as e:
        return e.code


def _case_id(case):
    return " ".join(case[0])[:60]


@pytest.fixture
def no_ray(monkeypatch):
    """Ray refuses to start (and counts as not started, so a session another test left open is not
    used): an input that got past the checks fails the test there."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray must not start on bad input")
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)


def test_the_lists_cover_at_least_20_inputs():
    assert len(BAD_INPUTS) >= 20 and len({_case_id(c) for c in BAD_INPUTS}) == len(BAD_INPUTS)
    assert len(SUBPROCESS_INPUTS) == 7


@pytest.mark.parametrize("argv, texts", BAD_INPUTS, ids=[_case_id(c) for c in BAD_INPUTS])
def test_bad_input_is_refused_in_one_line_before_ray(no_ray, capsys, tmp_path, argv, texts):
    assert _main(_train_argv(argv, tmp_path)) == 2
    out, err = capsys.readouterr()
    assert out == ""                                  # not even "run directory: ..."
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("launch.py train: error: "), err
    for text in texts:
        assert text in lines[0], lines[0]
    assert not (tmp_path / "run").exists()           # nothing written either


def test_a_logdir_holding_another_run_needs_resume(no_ray, capsys, tmp_path):
    (tmp_path / "config.yaml").write_text("run: {seed: 3}\n")
    assert _main(["train", "--logdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "already holds a run (config.yaml); pass --resume" in err, err


@pytest.mark.parametrize("argv, texts", SUBPROCESS_INPUTS, ids=[_case_id(c) for c in SUBPROCESS_INPUTS])
def test_refusal_exits_2_in_one_line_within_5_s_and_starts_no_ray_session(tmp_path, argv, texts):
    """As a user runs it. Ray's session directories go under RAY_TMPDIR (a short path: Ray's socket
    names must fit), where a Ray this command started would leave one; Ray's shared default temp folder would also
    get those of other Ray users on the machine."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONPATH": str(ROOT)}
        start = time.monotonic()
        proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), *_train_argv(argv, tmp_path)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
        took = time.monotonic() - start
        sessions = sorted(p.name for p in ray_tmp.rglob("session_*"))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stdout + proc.stderr
    assert all(text in proc.stderr for text in texts), proc.stderr
    assert sessions == []
    assert took < 5.0, f"{took:.1f} s"


def test_the_refusal_path_imports_neither_torch_nor_ray():
    """What keeps a refusal quick: the config, its checks and the command line load no torch and no
    Ray (they take seconds to import)."""
    code = ("import sys, launch\n"
            "assert launch.main(['train', '--logdir', 'unused', '--set', 'learner.discount=1.2']) == 2\n"
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


# ---------------------------------------------------------------- what loads

@pytest.mark.parametrize("preset", sorted(p.name for p in PRESETS_DIR.glob("*.yaml")))
def test_every_preset_loads_and_its_config_yaml_reads_back_the_same(preset, tmp_path):
    cfg = load_config(preset)
    (tmp_path / "config.yaml").write_text(config_yaml(cfg))
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and config_to_dict(again) == config_to_dict(cfg)
    assert config_yaml(again) == config_yaml(cfg)


def test_a_config_yaml_written_before_pydantic_loads_and_writes_back_unchanged():
    import yaml
    text = OLD_CONFIG.read_text()
    cfg = load_config(OLD_CONFIG)
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    # Keys added since it was written come back at their defaults (what the old run did) ...
    old, defaults = yaml.safe_load(body), config_to_dict(load_config(None))
    added = {k: v for s, fields in config_to_dict(cfg).items() for k, v in fields.items() if k not in old[s]}
    assert added == {k: v for s, fields in defaults.items() for k, v in fields.items() if k in added}
    # ... and everything else is written back as it was, line for line.
    written = "".join(line for line in config_yaml(cfg).splitlines(keepends=True)
                      if line.split(":")[0].strip() not in added)
    assert written == body
    assert (cfg.learner.lr, cfg.learner.adam_eps, cfg.run.save_at_frames) == (3e-4, 1e-5, (1_000_000, 2_000_000))
    assert type(cfg.run.total_frames) is int and type(cfg.env.sticky_actions) is float


RUN_CONFIGS = sorted(ROOT.glob("bench/atari_study/*/*/*/seed*/config.yaml")) + sorted(ROOT.glob("runs/**/config.yaml"))


@pytest.mark.parametrize("path", RUN_CONFIGS or [None], ids=[str(p.relative_to(ROOT)) for p in RUN_CONFIGS] or ["none"])
def test_every_run_directory_config_in_the_checkout_loads_unchanged(path):
    """compare.py checks a run's saved config against the requested one key by key: a saved
    config.yaml must read back to the same keys and values, and a key added since it was written
    to its default (which must be what the run did)."""
    if path is None:
        pytest.skip("no run directories in this checkout")
    import yaml
    saved, loaded = yaml.safe_load(path.read_text()), config_to_dict(load_config(path))
    defaults = config_to_dict(load_config(None))
    assert set(saved) == set(loaded)
    for section, fields in loaded.items():
        for key, value in fields.items():
            assert value == saved[section].get(key, defaults[section][key]), f"{section}.{key}"


def test_numbers_in_exponent_form_are_numbers():
    """YAML 1.1 reads 3e-4 and 2e6 (no dot) as strings; the config reads them as numbers."""
    cfg = load_config(None, ["learner.lr=3e-4", "run.total_frames=2e6", "run.save_at_frames=[2e6, 4.0e+6]",
                             "learner.adam_eps=1E-5"])
    assert cfg.learner.lr == 3e-4 and cfg.learner.adam_eps == 1e-5
    assert cfg.run.total_frames == 2_000_000 and type(cfg.run.total_frames) is int
    assert cfg.run.save_at_frames == (2_000_000, 4_000_000)
    with pytest.raises(ConfigError, match=r"run.total_frames must be an integer, got 2500000.5"):
        load_config(None, ["run.total_frames=2.5000005e6"])


# ---------------------------------------------------------------- the object itself

def test_an_assignment_is_checked_and_check_config_sees_the_rules_between_sections():
    cfg = load_config("cartpole")
    with pytest.raises(ValidationError, match="greater than 0"):
        cfg.learner.lr = -1.0
    with pytest.raises(ValidationError, match="valid integer"):
        cfg.env.num_envs = "many"
    check_config(cfg)
    cfg.run.learner_queue_size = 1                  # valid in its section ...
    cfg.learner.batch_size = 4 * cfg.env.num_envs   # ... but a batch its rollouts cannot hold
    with pytest.raises(ConfigError, match="run.learner_queue_size=1 rollouts of env.num_envs=16 envs hold fewer"):
        check_config(cfg)


def test_the_config_travels_to_the_actors_as_the_checked_object():
    """The driver hands the Config itself to the Ray actors (Ray pickles it); it arrives equal, of
    the same classes, without being parsed again."""
    cfg = load_config("cartpole", ["learner.lr=3e-4", "run.save_at_frames=[1000]"])
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        copy = loads(dumps(cfg))
        assert copy == cfg and type(copy) is Config and type(copy.env) is EnvConfig
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_describe_lists_every_key_with_its_meaning_and_what_is_valid():
    cfg = load_config("cartpole")
    lines = describe(cfg).splitlines()
    keys = [f"{section}.{key}" for section, values in config_to_dict(cfg).items() for key in values]
    assert len([ln for ln in lines if ln.startswith("  ")]) == len(keys)
    line = {ln.split()[0]: ln for ln in lines if ln.startswith("  ")}
    assert set(line) == set(keys)
    assert line["learner.vtrace_lambda"].endswith("(in [0, 1])") and "(default 1.0)" in line["learner.vtrace_lambda"]
    assert line["model.core"].endswith(f"[{' | '.join(CORES)}]")
    assert line["learner.lr"].endswith("(> 0)") and "learning rate" in line["learner.lr"]


# ---------------------------------------------------------------- env ids (configs/envs.py)

def test_unknown_ids_name_the_id_and_the_valid_forms():
    for bad in ["Foo-v0", "ALE/Pongg-v5", "popgym-Nothing-v0"]:
        with pytest.raises(ValueError) as err:
            check_env_id(bad)
        msg = str(err.value)
        assert repr(bad) in msg and "ALE/<Game>-v5" in msg and "popgym-" in msg and "CartPole-v1" in msg
    with pytest.raises(ValueError, match="Close matches: ALE/Pong-v5"):
        check_env_id("ALE/Pongg-v5")
    with pytest.raises(ValueError, match="use the vectorised form ALE/Pong-v5"):
        check_env_id("PongNoFrameskip-v4")
    for good in ["ALE/Pong-v5", "CartPole-v1", "popgym-RepeatFirstMedium-v0"]:
        check_env_id(good)


@pytest.mark.parametrize("env_id, space", [("Pendulum-v1", "Box"), ("popgym-MineSweeperEasy-v0", "MultiDiscrete")])
def test_non_discrete_action_spaces_are_refused(env_id, space):
    with pytest.raises(ValueError, match=f"action space {space}.*only Discrete"):
        EnvConfig(id=env_id)


def test_groups_must_divide_num_envs():
    with pytest.raises(ValueError, match=r"env.num_envs \(4\) must be a multiple of env.env_batches \(3\)"):
        EnvConfig(id="CartPole-v1", num_envs=4, env_batches=3)
    assert dataclasses.replace(EnvConfig(id="CartPole-v1", num_envs=4, env_batches=2), env_batches=4).env_batches == 4
