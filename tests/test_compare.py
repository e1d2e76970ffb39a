"""launch.py compare and eval end to end on CartPole (one Ray session for the module), and the
statistics of the summary against independent computations."""
import csv
import itertools
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import ray
import torch

import launch
from configs import load_config
from experiments import compare, report
from experiments.atari_scores import SCORES, human_normalized
from experiments.evaluate import EVAL_SEED, evaluate, load_agent
from learner import checkpoint
from runtime.driver import RunDir, Training

GRID = ["compare", "--config", "cartpole", "--envs", "CartPole-v1", "--eval-episodes", "3",
        "--no-progress", "--set", "run.log_interval_s=0.5"]
OUTPUTS = ("results.csv", "summary.md", "curves_CartPole-v1.png")


@pytest.fixture(scope="module", autouse=True)
def ray_session(ray_session):
    """Every test here runs in the shared session (tests/conftest.py): its 6 logical CPUs hold two
    CartPole runs (2 actors + a learner each) side by side."""
    yield


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A 1-run comparison (lstm, seed 0, 1600 frames), then the full grid (lstm and
    linear_transformer, seeds 0 and 1, 3200 frames) in the same directory: the first run must be
    resumed, the three others trained."""
    outdir = tmp_path_factory.mktemp("cmp")
    calls = []

    class Spy(Training):
        def __init__(self, cfg, resume=False, **kwargs):
            calls.append((Path(cfg.run.logdir).relative_to(outdir).as_posix(), resume))
            super().__init__(cfg, resume=resume, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(compare, "Training", Spy)
    assert launch.main([*GRID, "--cores", "lstm", "--seeds", "1", "--total-frames", "1600",
                        "--outdir", str(outdir)]) == 0
    first = checkpoint.read(outdir / "CartPole-v1/lstm/seed0/checkpoint.pt")["counters"]["frames"]
    assert calls == [("CartPole-v1/lstm/seed0", False)]
    calls.clear()
    assert launch.main([*GRID, "--cores", "lstm", "linear_transformer", "--seeds", "2",
                        "--total-frames", "3200", "--outdir", str(outdir)]) == 0
    mp.undo()
    return {"dir": outdir, "calls": list(calls), "first_frames": first}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_grid_trains_missing_runs_and_resumes_the_partial_one(grid):
    d = grid["dir"]
    assert sorted(grid["calls"]) == sorted([
        ("CartPole-v1/lstm/seed0", True), ("CartPole-v1/lstm/seed1", False),
        ("CartPole-v1/linear_transformer/seed0", False), ("CartPole-v1/linear_transformer/seed1", False)])
    # The resumed run continued its own episode log past the first budget.
    frames = [int(r["frames"]) for r in _rows(d / "CartPole-v1/lstm/seed0/episodes.csv")]
    assert min(frames) <= grid["first_frames"] < max(frames)
    assert 1600 <= grid["first_frames"] < 3200


def test_results_csv_has_one_right_row_per_run(grid):
    d = grid["dir"]
    rows = _rows(d / "results.csv")
    assert [(r["env"], r["core"], r["seed"]) for r in rows] == [
        ("CartPole-v1", core, str(seed)) for core in ("lstm", "linear_transformer") for seed in (0, 1)]
    for r in rows:
        run = d / r["run_dir"]
        payload = checkpoint.read(run / "checkpoint.pt")
        assert int(r["frames"]) == payload["counters"]["frames"] >= 3200 and r["complete"] == "True"
        # final return: the last 100 games of the run's own episode log (written apart from the checkpoint)
        returns = [float(e["return"]) for e in _rows(run / "episodes.csv")][-100:]
        assert float(r["final_return"]) == pytest.approx(np.mean(returns))
        ev = json.loads((run / "eval.json").read_text())
        assert float(r["eval_return"]) == pytest.approx(ev["mean"]) and int(r["eval_episodes"]) == 3
        wall = payload["extra"]["wall_time_s"]
        assert float(r["frames_per_s"]) == pytest.approx(int(r["frames"]) / wall, rel=1e-2)


def test_summary_table_and_plot(grid):
    d = grid["dir"]
    text = (d / "summary.md").read_text()
    rows = _rows(d / "results.csv")
    assert "## CartPole-v1" in text and "![curves](curves_CartPole-v1.png)" in text
    for core in ("lstm", "linear_transformer"):
        line = next(line for line in text.splitlines() if line.startswith(f"| {core} |"))
        mean = np.mean([float(r["final_return"]) for r in rows if r["core"] == core])
        assert f"| {core} | 2 | " in line and f"{mean:.3f} [" in line, line
    lt = np.mean([float(r["final_return"]) for r in rows if r["core"] == "linear_transformer"])
    lstm = np.mean([float(r["final_return"]) for r in rows if r["core"] == "lstm"])
    assert f"{lt - lstm:.3f} [" in text and f"{lt / lstm:.2f}x" in text
    # The Welch t column, by the textbook formula: (difference) +- t(0.975, df) x standard error.
    from scipy.stats import t as student_t
    a = np.array([float(r["final_return"]) for r in rows if r["core"] == "linear_transformer"])
    b = np.array([float(r["final_return"]) for r in rows if r["core"] == "lstm"])
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb > 0:
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
        half = student_t.ppf(0.975, df) * (va + vb) ** 0.5
        cell = f"[{report._fmt(lt - lstm - half)}, {report._fmt(lt - lstm + half)}]"
    else:
        cell = "n/a"
    assert "Δ Welch t 95% CI" in text
    assert f"| {cell} |" in next(line for line in text.splitlines() if line.startswith("| linear_transformer |"))
    png = (d / "curves_CartPole-v1.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_rerun_skips_finished_runs_and_summarize_rebuilds_the_same_outputs(grid, monkeypatch):
    d = grid["dir"]
    watched = sorted(d.glob("*/*/seed*/*"))
    before = {p: p.stat().st_mtime_ns for p in watched}
    outputs = {name: (d / name).read_bytes() for name in OUTPUTS}
    calls = []
    monkeypatch.setattr(compare, "Training", lambda *a, **k: calls.append(a))
    assert launch.main([*GRID, "--cores", "lstm", "linear_transformer", "--seeds", "2",
                        "--total-frames", "3200", "--outdir", str(d)]) == 0
    assert calls == []                                                  # nothing trained
    assert {p: p.stat().st_mtime_ns for p in watched} == before         # nor evaluated again
    assert sorted(d.glob("*/*/seed*/*")) == watched
    for name in OUTPUTS:
        (d / name).unlink()
    assert launch.main(["compare", "--summarize", str(d)]) == 0
    for name in OUTPUTS[:2]:
        assert (d / name).read_bytes() == outputs[name], name
    assert (d / OUTPUTS[2]).is_file()


def test_the_small_files_alone_rebuild_the_summary_and_count_as_done(grid, tmp_path, monkeypatch, capsys):
    """A study keeps only config.yaml, episodes.csv, eval.json and result.json of each run (no
    checkpoint, no events): --summarize rebuilds the same results.csv and summary.md from them, and
    re-running the grid there trains, deletes and evaluates nothing."""
    kept = tmp_path / grid["dir"].name          # the summary's title names the directory
    for path in grid["dir"].glob("*/*/seed*/*"):
        if path.name in ("config.yaml", "episodes.csv", "eval.json", "result.json"):
            (kept / path.relative_to(grid["dir"])).parent.mkdir(parents=True, exist_ok=True)
            (kept / path.relative_to(grid["dir"])).write_bytes(path.read_bytes())
    assert len(list(kept.glob("*/*/seed*/result.json"))) == 4 and not list(kept.rglob("*.pt"))
    # result.json holds what the checkpoint says (written when the run finished), not a copy of itself
    for result in kept.glob("*/*/seed*/result.json"):
        payload = checkpoint.read(grid["dir"] / result.relative_to(kept).parent / "checkpoint.pt")
        saved = json.loads(result.read_text())
        assert saved["frames"] == payload["counters"]["frames"]
        assert saved["recent_returns"] == pytest.approx(payload["extra"]["recent_returns"])
    assert launch.main(["compare", "--summarize", str(kept)]) == 0
    for name in OUTPUTS[:2]:
        assert (kept / name).read_bytes() == (grid["dir"] / name).read_bytes(), name
    files = sorted(kept.glob("*/*/seed*/*"))
    calls = []
    monkeypatch.setattr(compare, "Training", lambda *a, **k: calls.append(a))
    assert launch.main([*GRID, "--cores", "lstm", "linear_transformer", "--seeds", "2",
                        "--total-frames", "3200", "--outdir", str(kept)]) == 0
    assert calls == [] and sorted(kept.glob("*/*/seed*/*")) == files
    assert "4 runs: 4 done, 0 to resume, 0 to start" in capsys.readouterr().out


def test_a_run_with_another_config_is_refused(grid, capsys):
    assert launch.main([*GRID, "--cores", "lstm", "--seeds", "1", "--total-frames", "3200",
                        "--outdir", str(grid["dir"]), "--set", "learner.lr=0.5"]) == 2
    err = capsys.readouterr().err
    lr = load_config("cartpole").learner.lr
    assert f"was trained with another config (learner.lr: {lr:g} on disk, 0.5 asked for)" in err


def test_side_by_side_drivers_on_a_ray_cluster_and_a_stale_run_restarts(tmp_path, capsys):
    def argv(seeds, parallel, *more):
        return [*GRID, "--cores", "lstm", "--seeds", str(seeds), "--total-frames", "1600",
                "--outdir", str(tmp_path), "--parallel", str(parallel), *more]
    address = ray.get_runtime_context().gcs_address
    assert launch.main(argv(2, 2)) == 2
    assert "--parallel > 1 runs several drivers on one Ray cluster" in capsys.readouterr().err
    # Three CartPole runs at once would need 3 x (2 actors + 1 learner) CPUs; the cluster has 6.
    assert launch.main(argv(3, 3, "--address", address)) == 2
    assert f"the Ray cluster at {address} has 6 CPUs; 3 runs side by side need 9" in capsys.readouterr().err
    assert not (tmp_path / "CartPole-v1").exists()
    # seed1 was started once but killed before its first checkpoint: only its config.yaml is there.
    stale = compare.plan(tmp_path, ["CartPole-v1"], ["lstm"], 2, 1600, "cartpole",
                         ["run.log_interval_s=0.5"])[1]
    stale.dir.mkdir(parents=True)
    preset = Path(launch.__file__).parent / "configs/cartpole.yaml"
    (stale.dir / "config.yaml").write_text(preset.read_text())
    assert launch.main(argv(2, 2, "--address", address)) == 2          # not the config asked for
    assert "was trained with another config" in capsys.readouterr().err
    RunDir(stale.dir).write_config(stale.cfg)
    assert launch.main(argv(2, 2, "--address", address)) == 0
    out = capsys.readouterr().out
    assert "has no checkpoint (stopped before its first save): starting it afresh" in out
    rows = _rows(tmp_path / "results.csv")
    assert [(r["core"], r["seed"], r["complete"]) for r in rows] == [("lstm", "0", "True"),
                                                                      ("lstm", "1", "True")]
    for seed in (0, 1):
        log = (tmp_path / f"CartPole-v1/lstm/seed{seed}/train.log").read_text()
        assert "Connected to Ray cluster" in log and "finished at" in log


def test_an_interrupted_comparison_stops_without_evaluating(tmp_path, monkeypatch):
    stops = []

    class Interrupted:
        def __init__(self, cfg, resume=False, **kwargs):
            stops.append(cfg.run.logdir)

        def run(self, **kwargs):
            return {"frames": 0, "stopped_by": "SIGINT"}
    monkeypatch.setattr(compare, "Training", Interrupted)
    assert launch.main([*GRID, "--cores", "lstm", "--seeds", "2", "--total-frames", "1600",
                        "--outdir", str(tmp_path)]) == 130
    assert len(stops) == 1                                     # the second run never started
    assert not list(tmp_path.rglob("eval.json")) and not (tmp_path / "results.csv").exists()


def test_summarize_an_empty_directory_is_an_error(tmp_path, capsys):
    assert launch.main(["compare", "--summarize", str(tmp_path)]) == 2
    assert "no runs under" in capsys.readouterr().err


# -- eval ---------------------------------------------------------------------------------------

def test_eval_plays_the_asked_episodes_with_the_checkpoints_agent(grid, capsys):
    run = grid["dir"] / "CartPole-v1/linear_transformer/seed1"
    assert launch.main(["eval", "--checkpoint", str(run), "--episodes", "7", "--greedy"]) == 0
    out = capsys.readouterr().out
    result = json.loads((run / "eval.json").read_text())
    assert result["episodes"] == len(result["returns"]) == 7 and result["greedy"]
    r = np.array(result["returns"])
    assert (result["mean"], result["std"], result["min"], result["max"]) == pytest.approx(
        (r.mean(), r.std(), r.min(), r.max()))
    assert f"mean {r.mean():.3f}" in out
    # Independent replay on 5 envs (so that envs owe different numbers of games): env k, CartPole
    # seeded EVAL_SEED + k, plays its quota of the 7 games, [2, 2, 1, 1, 1], in a row, stepped by
    # hand with the checkpoint's agent acting greedily; at a game's first step the core resets and
    # sees the previous game's last reward, as in training.
    agent, cfg, _ = load_agent(run / "checkpoint.pt")
    result = evaluate(run, 7, greedy=True, num_envs=5)
    expected = []
    for k, quota in enumerate([2, 2, 1, 1, 1]):
        env = gym.wrappers.FlattenObservation(gym.make("CartPole-v1"))
        obs, _ = env.reset(seed=EVAL_SEED + k)
        state, reward, first = agent.initial_state(1), 0.0, True
        for _ in range(quota):
            total, done = 0.0, False
            while not done:
                action, _, state = agent.act(torch.tensor(obs[None], dtype=torch.float32),
                                             torch.tensor([reward], dtype=torch.float32),
                                             torch.tensor([first]), state,
                                             torch.zeros(1, dtype=torch.int64), greedy=True)
                obs, reward, terminated, truncated, _ = env.step(int(action[0]))
                total, first, done = total + reward, False, terminated or truncated
            expected.append(total)
            obs, _ = env.reset()          # SyncVectorEnv's autoreset: no new seed
            first = True
    assert result["returns"] == expected
    assert result["lengths"] == [int(x) for x in expected]       # CartPole: reward 1 per step


def test_eval_refuses_missing_and_corrupt_checkpoints(grid, tmp_path, capsys):
    assert launch.main(["eval", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "no checkpoint file at" in capsys.readouterr().err
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage/checkpoint.pt").write_bytes(b"not a checkpoint" * 100)
    assert launch.main(["eval", "--checkpoint", str(tmp_path / "garbage")]) == 2
    assert "is unreadable (truncated or corrupt)" in capsys.readouterr().err
    whole = (grid["dir"] / "CartPole-v1/lstm/seed1/checkpoint.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    assert launch.main(["eval", "--checkpoint", str(tmp_path / "cut.pt")]) == 2
    assert "is unreadable (truncated or corrupt)" in capsys.readouterr().err
    assert launch.main(["eval", "--checkpoint", str(grid["dir"] / "CartPole-v1/lstm/seed1"), "--video"]) == 2
    assert "--video films image observations (Atari); CartPole-v1 observes" in capsys.readouterr().err


def test_eval_video_films_the_games_colour_screen(tmp_path):
    """eval --video films env 0's first game on the game's own colour screen, while the agent acts
    on its grey stacks: against a raw colour AtariVectorEnv stepped by hand with the agent's actions
    (greedy, made to always press action 2), the TensorBoard copy (a GIF: Pong's few colours survive
    it) equals the screens exactly and the MP4 (lossy H.264, upscaled 2x) is close to them."""
    import imageio.v3 as iio
    from ale_py.vector_env import AtariVectorEnv
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from actors.envs import make_env
    from learner import Learner
    from runtime.tensorboard import TensorBoardLogger
    cfg = load_config(overrides=[
        "env.id=ALE/Pong-v5", "env.num_envs=1", "env.env_batches=1", "env.max_episode_frames=400",
        "model.torso=nature", "model.core=lstm", "core.hidden_size=32", "model.hidden_size=32",
        f"run.logdir={tmp_path}"])
    env = make_env(cfg.env, 0)
    learner = Learner(cfg, env.observation_space, env.num_actions, 4)
    env.close()
    with torch.no_grad():
        learner.agent.policy.bias[2] += 50.0          # greedy: always action 2 (RIGHT, Pong's up)
    learner.save(tmp_path / "checkpoint.pt")
    TensorBoardLogger(tmp_path).close()   # the run "has TensorBoard events"
    result = evaluate(tmp_path, 2, video=True, greedy=True)
    assert result["lengths"] == [100, 100]          # the 400-frame cap = 100 agent steps

    ref = AtariVectorEnv("pong", 1, num_threads=1, autoreset_mode="SameStep", reward_clipping=False,
                         grayscale=False, img_height=210, img_width=160, stack_num=1, max_num_frames_per_episode=400)
    obs, _ = ref.reset(seed=EVAL_SEED)                # env 0 of the evaluation
    screens = [obs[0, -1]]
    for _ in range(99):
        obs, *_ = ref.step(np.array([2]))
        screens.append(obs[0, -1])
    ref.close()
    screens = np.stack(screens)                       # [100, 210, 160, 3]
    assert screens.std(axis=(0, 1, 2)).min() > 10 and np.ptp(screens.mean(axis=(1, 2)), axis=1).max() > 50

    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    gif = acc.Images("eval/video")[0].encoded_image_string
    changed = [0] + [i for i in range(1, 100) if (screens[i] != screens[i - 1]).any()]   # GIFs merge repeats
    assert len(changed) > 80
    np.testing.assert_array_equal(iio.imread(gif, index=None)[..., :3], screens[changed])
    video = iio.imread(tmp_path / "eval.mp4", index=None)
    assert video.shape == (100, 420, 320, 3)          # env 0's first game, upscaled 2x
    assert np.abs(video[:, ::2, ::2].astype(float) - screens).mean() < 3


# -- statistics ---------------------------------------------------------------------------------

def test_mean_ci_matches_the_exact_bootstrap_distribution():
    """For 5 runs all 5^5 resamples can be enumerated: the exact 2.5% and 97.5% quantiles of the
    resampled means, against the Monte-Carlo estimate the summary uses."""
    x = np.array([0.1, 0.4, 0.5, 0.9, 2.0])
    means = np.array([np.mean(x[list(i)]) for i in itertools.product(range(5), repeat=5)])
    lo, hi = np.quantile(means, [0.025, 0.975])
    point, low, high = report.mean_ci(x, reps=20_000)
    assert point == pytest.approx(x.mean())
    assert low == pytest.approx(lo, abs=0.03) and high == pytest.approx(hi, abs=0.03)
    assert report.mean_ci([3.0, 3.0]) == (3.0, 3.0, 3.0)


def test_difference_ci_matches_the_exact_bootstrap_distribution():
    """Both sides resampled independently: all 4^4 x 3^3 resamples enumerated, the exact 2.5% and
    97.5% quantiles of the differences of their means against the summary's Monte-Carlo estimate."""
    a, b = np.array([1.0, 2.0, 3.5, 6.0]), np.array([0.0, 0.5, 2.0])
    means_a = np.array([np.mean(a[list(i)]) for i in itertools.product(range(4), repeat=4)])
    means_b = np.array([np.mean(b[list(i)]) for i in itertools.product(range(3), repeat=3)])
    lo, hi = np.quantile((means_a[:, None] - means_b[None, :]).ravel(), [0.025, 0.975])
    point, low, high = report.difference_ci(a, b, reps=20_000)
    assert point == pytest.approx(a.mean() - b.mean())
    assert low == pytest.approx(lo, abs=0.08) and high == pytest.approx(hi, abs=0.08)


def test_difference_ci_with_a_one_run_side():
    """A core run with one seed beside the lstm's several (compare --seeds 1 after --seeds 3):
    the single run has no spread, so the interval is the exact bootstrap interval of the other
    side's mean, shifted; enumerated over all 4^4 resamples."""
    a, b = np.array([0.2, 1.0, 1.5, 4.0]), [2.5]
    means = np.array([np.mean(a[list(i)]) for i in itertools.product(range(4), repeat=4)])
    lo, hi = np.quantile(means, [0.025, 0.975])
    point, low, high = report.difference_ci(a, b, reps=20_000)
    assert point == pytest.approx(a.mean() - 2.5)
    assert low == pytest.approx(lo - 2.5, abs=0.05) and high == pytest.approx(hi - 2.5, abs=0.05)
    point, low, high = report.difference_ci(b, a, reps=20_000)     # the lstm side with one run
    assert point == pytest.approx(2.5 - a.mean())
    assert low == pytest.approx(2.5 - hi, abs=0.05) and high == pytest.approx(2.5 - lo, abs=0.05)
    assert report.difference_ci([3.0], [1.0]) == (2.0, 2.0, 2.0)


def test_welch_ci_by_hand():
    """Two sides of 3 runs with variance 1 each: standard error sqrt(1/3 + 1/3), Welch-Satterthwaite
    degrees of freedom (2/3)^2 / ((1/3)^2/2 + (1/3)^2/2) = 4, and the t quantile t(0.975, 4) =
    2.776445 from a printed table: difference 1 +- 2.776445 * sqrt(2/3)."""
    half = 2.776445 * (2 / 3) ** 0.5
    point, low, high = report.welch_ci([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert point == pytest.approx(1.0)
    assert low == pytest.approx(1.0 - half, abs=1e-5) and high == pytest.approx(1.0 + half, abs=1e-5)
    # Unequal spreads and sizes: squared standard errors 4/3 and 0.5/2, df = (4/3 + 1/4)^2 /
    # ((4/3)^2/2 + (1/4)^2/1) = 2.635, between 2 and 3, so the half-width lies between the table's
    # t(0.975, 3) = 3.182 and t(0.975, 2) = 4.303 standard errors (sqrt(4/3 + 1/4) = 1.2583).
    point, low, high = report.welch_ci([0.0, 2.0, 4.0], [1.0, 2.0])
    assert point == pytest.approx(2.0 - 1.5) and high - point == pytest.approx(point - low)
    assert 3.182 * 1.2583 < high - point < 4.303 * 1.2583
    assert report.welch_ci([1.0], [1.0, 2.0]) is None and report.welch_ci([1.0, 1.0], [2.0, 2.0]) is None


def test_iqm_and_median_of_known_numbers_and_their_exact_bootstrap():
    """Points by hand; intervals against the exact stratified bootstrap: each game's 4 runs
    resampled on their own, all 4^4 x 4^4 resamples enumerated, the median of the two game means
    and the IQM (mean of the middle 4 of the 8 values) of each, and their 2.5% and 97.5% quantiles."""
    # runs x games: game 0 runs 1, 2, 3, 4; game 1 runs 5, 6, 7, 9.
    m = np.array([[1, 5], [2, 6], [3, 7], [4, 9]], np.float64)
    agg = report.aggregate_ci(m, reps=20_000)
    assert agg["iqm"][0] == pytest.approx((3 + 4 + 5 + 6) / 4)     # middle half of the 8 values
    assert agg["median"][0] == pytest.approx((2.5 + 6.75) / 2)      # median of the two game means
    draws = np.array(list(itertools.product(range(4), repeat=4)))  # 256 resamples of one game's runs
    g0, g1 = m[draws, 0], m[draws, 1]                              # [256, 4] each
    both = np.concatenate([np.repeat(g0, 256, axis=0), np.tile(g1, (256, 1))], axis=1)   # [65536, 8]
    exact = {"median": (both[:, :4].mean(1) + both[:, 4:].mean(1)) / 2,
             "iqm": np.sort(both, axis=1)[:, 2:6].mean(1)}
    for name, values in exact.items():
        lo, hi = np.quantile(values, [0.025, 0.975])
        point, low, high = agg[name]
        assert low == pytest.approx(lo, abs=0.1) and high == pytest.approx(hi, abs=0.1), (name, low, high, lo, hi)


def test_probability_of_improvement_by_hand_and_its_exact_bootstrap():
    """P(X > Y) counted pair by pair (ties half), averaged over games; the CI against all 4^4
    resamples of two games x two runs per side, enumerated."""
    x = np.array([[1.0, 5.0], [2.0, 6.0]])       # runs x games
    y = np.array([[0.0, 7.0], [3.0, 6.0]])

    def by_hand(x, y):
        per_game = [np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a in x[:, g] for b in y[:, g]])
                    for g in range(x.shape[1])]
        return np.mean(per_game)
    # game 0: 1>0, 1<3, 2>0, 2<3 -> 0.5; game 1: 5<7, 5<6, 6<7, 6=6 -> 0.125
    assert by_hand(x, y) == pytest.approx(0.3125)
    point, low, high = report.improvement_ci(x, y)
    assert point == pytest.approx(0.3125)
    picks = list(itertools.product(range(2), repeat=2))
    exact = [by_hand(np.stack([x[list(i), 0], x[list(j), 1]], 1), np.stack([y[list(k), 0], y[list(m), 1]], 1))
             for i in picks for j in picks for k in picks for m in picks]
    lo, hi = np.quantile(exact, [0.025, 0.975])
    assert low == pytest.approx(lo, abs=0.03) and high == pytest.approx(hi, abs=0.03)


def test_aggregate_figure_of_an_atari_study(tmp_path, monkeypatch):
    """write_outputs from small files alone (as the study commits them) on two games: the summary's
    P(> lstm) row and the aggregate figure. (Few resamples: only the points are checked here.)"""
    bootstrap = report._bootstrap
    monkeypatch.setattr(report, "_bootstrap", lambda samples, stat, reps: bootstrap(samples, stat, 100))
    for env, scores in (("ALE/Pong-v5", {"lstm": [-20.0, -19.0], "rdn": [-10.0, -15.0]}),
                        ("ALE/Breakout-v5", {"lstm": [10.0, 12.0], "rdn": [11.0, 9.0]})):
        for core, finals in scores.items():
            for seed, final in enumerate(finals):
                d = tmp_path / env.replace("/", "_") / core / f"seed{seed}"
                d.mkdir(parents=True)
                cfg = load_config("atari_cpu", [f"env.id={env}", f"model.core={core}", f"run.seed={seed}",
                                                "run.total_frames=1000"])
                RunDir(d).write_config(cfg)
                (d / "episodes.csv").write_text("frames,return,length\n" + "".join(
                    f"{100 * (i + 1)},{final},50\n" for i in range(10)))
                (d / "result.json").write_text(json.dumps(
                    {"frames": 1000, "wall_time_s": 2.0, "recent_returns": [final] * 10}))
    written = report.write_outputs(tmp_path)
    assert tmp_path / "aggregate.png" in written
    assert (tmp_path / "aggregate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "summary.md").read_text()
    rdn = next(line for line in text.splitlines() if line.startswith("| rdn | 2 | 2 |"))
    # Pong: rdn's two runs beat both lstm runs (1.0); Breakout: 11 beats 10 only, 9 neither (0.25)
    assert "| 0.625 [" in rdn and "(2 games) |" in rdn, rdn
    rows = _rows(tmp_path / "results.csv")
    assert {r["frames_per_s"] for r in rows} == {"500.0"}


def test_human_normalised_scores():
    assert human_normalized("ALE/Pong-v5", 14.6) == pytest.approx(1.0)
    assert human_normalized("ALE/Pong-v5", -20.7) == pytest.approx(0.0)
    assert human_normalized("ALE/Breakout-v5", 1.7 + (30.5 - 1.7) / 2) == pytest.approx(0.5)
    assert human_normalized("CartPole-v1", 100.0) is None
    assert human_normalized("ALE/Pacman-v5", 100.0) is None      # not one of the 57
    assert len(SCORES) == 57


def test_atari_summary_has_normalised_scores_and_aggregates(tmp_path, monkeypatch):
    bootstrap = report._bootstrap        # few resamples: the points are checked, not the intervals
    monkeypatch.setattr(report, "_bootstrap", lambda samples, stat, reps: bootstrap(samples, stat, 200))
    def row(env, core, seed, score):
        return {"env": env, "core": core, "seed": seed, "frames": 10, "total_frames": 10, "complete": True,
                "final_return": score, "eval_return": None, "eval_episodes": 0, "wall_time_s": 1.0,
                "frames_per_s": 10.0, "run_dir": f"{env}/{core}/seed{seed}"}
    pong = lambda h: -20.7 + h * 35.3          # noqa: E731  human-normalised h -> raw Pong score
    breakout = lambda h: 1.7 + h * 28.8        # noqa: E731
    rows = [row("ALE/Pong-v5", "lstm", s, pong(h)) for s, h in enumerate([0.1, 0.2, 0.3])]
    rows += [row("ALE/Breakout-v5", "lstm", s, breakout(h)) for s, h in enumerate([1.0, 2.0, 3.0])]
    rows += [row("ALE/Pong-v5", "rdn", s, pong(h)) for s, h in enumerate([0.5, 0.5, 0.5])]
    rows += [row("ALE/Breakout-v5", "rdn", s, breakout(h)) for s, h in enumerate([0.5, 0.5, 0.5])]
    # A game only one core has stays out of the aggregates (they would compare games, not cores).
    rows += [row("ALE/Boxing-v5", "lstm", s, 100.0) for s in range(3)]
    text = report.summary_markdown(rows, tmp_path)
    assert "human-normalised [95% CI]" in text and "## Atari: human-normalised, across games" in text
    lstm = next(line for line in text.splitlines() if line.startswith("| lstm | 2 | 3 |"))
    # median of game means (0.2, 2.0) = 1.1; IQM of {0.1, 0.2, 0.3, 1, 2, 3}: trim 1.5 off each end
    # (scipy trim_mean cuts int(0.25 * 6) = 1 value per side) -> mean(0.2, 0.3, 1, 2) = 0.875
    assert "| 1.100 [" in lstm and "| 0.875 [" in lstm, lstm
    rdn = next(line for line in text.splitlines() if line.startswith("| rdn | 2 | 3 |"))
    assert "| 0.500 [0.500, 0.500] | 0.500 [0.500, 0.500] |" in rdn


def test_scores_from_a_thousand_on_are_whole_numbers_with_separators():
    """Qbert's 1000.75 was written 1e+03 in the study's summary."""
    from experiments.report import _ci, _fmt
    assert [_fmt(1000.75), _fmt(-12345.6), _fmt(999.5), _fmt(148.7), _fmt(1.364, 2)] == \
        ["1,001", "-12,346", "999.500", "148.700", "1.36"]
    assert _ci(1000.75, 539.6, 1462.0) == "1,001 [539.600, 1,462]"
    assert _fmt(float("nan")) == "n/a" and _fmt(None) == "n/a"
