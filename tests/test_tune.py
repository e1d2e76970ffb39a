"""launch.py tune and compare --tuned: the search space is checked before Ray starts, ASHA stops
the worse trial of a hand-made metric stream, a tiny real search writes presets, and the tuned
comparison trains on those values with seeds the search never used."""
import csv
import json
import tempfile
import time
from pathlib import Path

import pytest
import ray
import yaml

import launch
from configs import load_config
from experiments import tune
from runtime.driver import Training


@pytest.mark.parametrize("space, named", [
    ({"learner.learning_rate": {"loguniform": [1e-4, 1e-3]}}, "learner.learning_rate"),
    ({"learner.lr": {"loguniform": [-1e-4, 1e-3]}}, "loguniform bounds must be positive"),
    ({"learner.entropy_cost": {"uniform": [-0.5, 0.1]}}, "learner.entropy_cost: the value -0.5 is refused"),
    ({"learner.lr": {"choice": ["fast", "slow"]}}, "learner.lr: the value 'fast' is refused"),
    ({"learner.lr": {"uniform": [1e-3, 1e-4]}}, "learner.lr: uniform needs low < high"),
    ({"learner.lr": {"normal": [0, 1]}}, "learner.lr needs exactly one of loguniform"),
    ({"learner.optimizer": {"grid": ["adam", "sgd"]}}, "learner.optimizer: the value 'sgd' is refused"),
])
def test_a_bad_search_space_is_refused_before_ray_starts(tmp_path, capsys, space, named):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    ray_was_up = ray.is_initialized()
    rc = launch.main(["tune", "--config", "cartpole", "--env", "CartPole-v1", "--core", "lstm", "--budget", "1000",
                      "--space", str(path), "--outdir", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert named in err and str(path) in err, err
    assert ray.is_initialized() == ray_was_up and not (tmp_path / "out").exists()


def test_the_default_space_follows_the_optimiser():
    adam = tune.load_space(None, load_config("atari_cpu"))
    rmsprop = tune.load_space(None, load_config("atari_paper"))
    assert set(adam) == {"learner.lr", "learner.adam_eps", "learner.entropy_cost"}
    assert set(rmsprop) == {"learner.lr", "learner.rmsprop_eps", "learner.entropy_cost"}
    assert all(kind == "loguniform" for kind, _ in adam.values())


def _stream(config):
    """A trial whose score is its `quality` at every one of 8 reports over 8,000 frames."""
    from ray import tune as ray_tune
    for k in range(1, 9):
        ray_tune.report({"score": config["quality"], "frames": 1000 * k})


def test_asha_stops_the_worse_trial_at_its_first_rung(tmp_path, ray_session, capfd):
    # One trial at a time, the good one first: at the rung of 2,000 frames (a quarter of 8,000)
    # the bad one is below the good one's result there and ASHA stops it.
    trials = tune.search("fake", [], {"quality": ("grid", [1.0, 0.0])}, tmp_path, samples=1, budget=8000,
                         trainable=_stream, max_concurrent=1)
    # Tune reads its results back from its own result.json, so a good search warns of nothing.
    assert "Failed to fetch metrics" not in capfd.readouterr().err
    by_quality = {t["params"]["quality"]: t for t in trials}
    assert by_quality[1.0]["status"] == "done" and by_quality[1.0]["frames"] == 8000
    assert by_quality[0.0]["status"] == "stopped" and by_quality[0.0]["frames"] == 2000
    assert tune.best_trial(trials) is by_quality[1.0]


def test_fifo_runs_every_trial_to_the_end(tmp_path, ray_session):
    trials = tune.search("fake", [], {"quality": ("grid", [1.0, 0.0])}, tmp_path, samples=1, budget=8000,
                         scheduler="fifo", trainable=_stream, max_concurrent=1)
    assert sorted((t["status"], t["frames"]) for t in trials) == [("done", 8000), ("done", 8000)]


def test_a_failing_trial_is_reported_not_fatal(tmp_path, ray_session):
    def sometimes(config):
        if config["quality"] < 0.5:
            raise ValueError("this trial breaks")
        _stream(config)
    trials = tune.search("fake", [], {"quality": ("grid", [1.0, 0.0])}, tmp_path, samples=1, budget=8000,
                         trainable=sometimes, max_concurrent=1)
    by_quality = {t["params"]["quality"]: t for t in trials}
    assert by_quality[0.0]["status"] == "error" and "this trial breaks" in by_quality[0.0]["error"]
    assert tune.best_trial(trials) is by_quality[1.0]
    tune.write_trials(tmp_path, {"fake": trials})
    assert "this trial breaks" in (tmp_path / "trials.md").read_text()


def test_a_tiny_search_writes_presets_and_compare_tuned_uses_them(tmp_path, capfd, ray_session):
    """launch.py tune on the shared session (its 6 CPUs run two trials side by side), then
    compare --tuned on what it wrote."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"learner.lr": {"loguniform": [1e-4, 1e-2]},
                                     "learner.entropy_cost": {"uniform": [0.0, 0.02]}}))
    out = tmp_path / "search"
    assert launch.main(["tune", "--config", "cartpole", "--env", "CartPole-v1", "--core", "lstm", "--core", "rdn",
                        "--samples", "2", "--budget", "3200", "--space", str(space), "--outdir", str(out),
                        "--scheduler", "fifo", "--set", "run.log_interval_s=0.5", "--set", "run.num_actors=1"]) == 0
    printed, err = capfd.readouterr()
    assert "tune: lstm: best" in printed and "Failed to fetch metrics" not in printed + err
    search = yaml.safe_load((out / "search.yaml").read_text())
    assert set(search["cores"]) == {"lstm", "rdn"}
    for core in ("lstm", "rdn"):
        trial_dirs = sorted((out / core / "trials").iterdir())
        assert len(trial_dirs) == 2
        seeds = {yaml.safe_load((d / "config.yaml").read_text())["run"]["seed"] for d in trial_dirs}
        assert seeds == {tune.SEARCH_SEED, tune.SEARCH_SEED + 1}
        best = search["cores"][core]["best"]
        # The best trial is the one whose own episodes.csv (last 100 games) scores highest.
        scores = {}
        for d in trial_dirs:
            with open(d / "episodes.csv") as f:
                returns = [float(row["return"]) for row in csv.DictReader(f)][-100:]
            scores[d.name] = sum(returns) / len(returns)
        assert best["trial"] == max(scores, key=scores.get)
        assert best["score"] == pytest.approx(scores[best["trial"]], rel=1e-6)
        cfg = load_config(out / core / "best.yaml")     # a preset the other commands accept
        assert cfg.model.core == core and cfg.env.id == "CartPole-v1" and cfg.run.seed == 0
        assert cfg.learner.lr == pytest.approx(best["values"]["learner.lr"])
        assert cfg.learner.entropy_cost == pytest.approx(best["values"]["learner.entropy_cost"])
        assert 1e-4 <= cfg.learner.lr <= 1e-2 and cfg.run.num_actors == 1
    table = (out / "trials.md").read_text()
    assert table.count("| lstm |") == 2 and table.count("| rdn |") == 2

    cmp_dir = tmp_path / "cmp"
    assert launch.main(["compare", "--tuned", str(out), "--seeds", "1", "--total-frames", "1600",
                        "--outdir", str(cmp_dir), "--eval-episodes", "0", "--no-progress"]) == 0
    for core in ("lstm", "rdn"):
        ran = yaml.safe_load((cmp_dir / "CartPole-v1" / core / "seed0" / "config.yaml").read_text())
        assert ran["learner"]["lr"] == pytest.approx(search["cores"][core]["best"]["values"]["learner.lr"])
        assert ran["run"]["seed"] == 0 and ran["run"]["seed"] not in seeds
    summary = (cmp_dir / "summary.md").read_text()
    assert "tuned and differing settings" in summary and "learner.entropy_cost" in summary


def test_compare_tuned_refuses_seeds_the_search_used(tmp_path, capsys):
    trial = tmp_path / "search" / "lstm" / "trials" / "t_00000"
    trial.mkdir(parents=True)
    (trial / "config.yaml").write_text(yaml.safe_dump({"run": {"seed": 2}}))
    (tmp_path / "search" / "lstm" / "best.yaml").write_text(yaml.safe_dump({"env": {"id": "CartPole-v1"}}))
    assert launch.main(["compare", "--tuned", str(tmp_path / "search"), "--seeds", "3",
                        "--outdir", str(tmp_path / "cmp")]) == 2
    assert "seeds [2] trained trials of the search" in capsys.readouterr().err


def test_the_same_search_again_resumes_instead_of_starting_over(tmp_path, ray_session):
    calls = tmp_path / "calls"
    calls.mkdir()

    def counted(config):
        (calls / f"{config['quality']}_{len(list(calls.iterdir()))}").touch()
        _stream(config)
    args = ("fake", [], {"quality": ("grid", [1.0, 0.0])}, tmp_path / "search")
    first = tune.search(*args, samples=1, budget=8000, trainable=counted, max_concurrent=1)
    again = tune.search(*args, samples=1, budget=8000, trainable=counted, max_concurrent=1)
    assert len(list(calls.iterdir())) == 2           # the finished search trained nothing more
    assert sorted((t["trial"], t["status"], t["frames"]) for t in again) == \
        sorted((t["trial"], t["status"], t["frames"]) for t in first)


def _checkpointed_stream(config, log_dir):
    """A trial of 8 reports over 8,000 frames scoring its `quality`, each with a checkpoint that
    holds its frames and the trial its lineage started in (as run_pbt_trial's do); every report is
    also written to log_dir/<trial id>.jsonl."""
    from ray import tune as ray_tune
    me = ray_tune.get_context().get_trial_id()
    frames, origin = 0, me
    given = ray_tune.get_checkpoint()
    if given is not None:
        with given.as_directory() as d:
            state = json.loads((Path(d) / "state.json").read_text())
        frames, origin = state["frames"], state["origin"]
    while frames < 8000:
        frames += 1000
        time.sleep(0.3)                        # both trials alive at once: a population
        with open(Path(log_dir) / f"{me}.jsonl", "a") as f:
            f.write(json.dumps({"score": config["quality"], "frames": frames, "origin": origin}) + "\n")
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "state.json").write_text(json.dumps({"frames": frames, "origin": origin}))
            ray_tune.report({"score": config["quality"], "frames": frames},
                            checkpoint=ray_tune.Checkpoint.from_directory(d))


def test_pbt_has_the_worse_trial_continue_from_the_better_ones_checkpoint(tmp_path, ray_session):
    from ray import tune as ray_tune
    logs = tmp_path / "logs"
    logs.mkdir()
    trials = tune.search("fake", [], {"quality": ("uniform", [0.0, 1.0])}, tmp_path, samples=2, budget=8000,
                         scheduler="pbt", trainable=ray_tune.with_parameters(_checkpointed_stream, log_dir=str(logs)),
                         max_concurrent=2)
    reports = {p.stem: [json.loads(line) for line in p.read_text().splitlines()] for p in logs.iterdir()}
    assert len(reports) == 2
    better, worse = sorted(reports, key=lambda t: -reports[t][0]["score"])
    # The worse trial went on from the better one's checkpoint (its frames, not from 0) and both
    # ran the whole budget; the better one never took the worse one's.
    took = [r for r in reports[worse] if r["origin"] == better]
    assert took and took[0]["frames"] > 1000 and reports[worse][-1]["frames"] == 8000
    assert not any(r["origin"] == worse for r in reports[better]) and reports[better][-1]["frames"] == 8000
    assert all(t["status"] == "done" for t in trials)


def test_pbt_refuses_a_grid_and_a_population_of_one(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"learner.batch_size": {"grid": [16, 32]}}))
    assert launch.main(["tune", "--config", "cartpole", "--env", "CartPole-v1", "--core", "lstm", "--samples", "4",
                        "--budget", "3200", "--space", str(space), "--outdir", str(tmp_path / "s"),
                        "--scheduler", "pbt"]) == 2
    assert "takes no grid: learner.batch_size" in capsys.readouterr().err
    assert launch.main(["tune", "--config", "cartpole", "--env", "CartPole-v1", "--core", "lstm", "--samples", "1",
                        "--budget", "3200", "--outdir", str(tmp_path / "s"), "--scheduler", "pbt"]) == 2
    assert "--samples 2 or more" in capsys.readouterr().err


def test_a_pbt_trial_adopting_a_better_checkpoint_continues_it_with_its_own_values(tmp_path, ray_session):
    """What a PBT exploit does to a trial's run directory: the donor's checkpoint becomes its own,
    the next segment starts at the donor's frames, and trains with the trial's (new) values."""
    base = ["run.log_interval_s=0.5", "run.num_actors=1", "run.total_frames=3200"]
    donor = load_config("cartpole", [*base, f"run.logdir={tmp_path / 'donor'}", "run.total_frames=1600"])
    Training(donor).run(progress=False)
    donor_frames = torch_load_frames(tmp_path / "donor" / "checkpoint.pt")
    assert donor_frames >= 1600
    mine = tmp_path / "mine"
    tune.adopt_checkpoint(tmp_path / "donor" / "checkpoint.pt", mine, "t_00001")
    cfg = load_config("cartpole", [*base, f"run.logdir={mine}", "learner.lr=0.00123", "learner.adam_eps=0.0004"])
    summary = Training(cfg, resume=True).run(progress=False)
    assert summary["start_frames"] == donor_frames and summary["frames"] >= 3200
    ran = yaml.safe_load((mine / "config.yaml").read_text())["learner"]
    assert ran["lr"] == 0.00123 and ran["adam_eps"] == 0.0004
    with open(mine / "lineage.csv") as f:
        assert list(csv.DictReader(f)) == [{"frames": str(donor_frames), "from_trial": "t_00001"}]


def torch_load_frames(path):
    from learner import checkpoint
    return checkpoint.read(path)["counters"]["frames"]


def test_a_search_cut_short_is_told_apart_from_one_asha_stopped():
    budget = 8000
    assert tune.trial_status(8000, None, budget, True) == "done"
    assert tune.trial_status(8000, None, budget, False) == "done"          # its last report, then cut off
    assert tune.trial_status(2000, None, budget, True) == "stopped"        # ended short: the scheduler
    assert tune.trial_status(6000, None, budget, False) == "interrupted"   # past a rung, but cut off
    assert tune.trial_status(None, None, budget, False) == "interrupted"   # cut off before a report
    assert tune.trial_status(None, ValueError("x"), budget, True) == "error"
    assert tune.expected_trials({"a": ("grid", [1, 2, 3]), "b": ("uniform", [0.0, 1.0])}, 2) == 6
