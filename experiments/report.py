"""The outputs of a comparison, rebuilt from the run directories under DIR (experiments/compare.py):

- DIR/results.csv      one row per run found (complete or not)
- DIR/summary.md       per env, each core's mean score over seeds with a 95% bootstrap CI, its
                       difference to the LSTM (bootstrap and Welch t CIs) and ratio to it; for
                       Atari also human-normalised scores and, across games, median and IQM
- DIR/curves_<env>.png return against frames, one line per core with its 95% CI band
- DIR/aggregate.png    (Atari, two cores or more) IQM of the human-normalised scores per core and
                       the probability of improvement over the LSTM, each with its 95% CI

The score of a run is its final return: the mean of its last 100 training episodes (raw game score
of whole games), as `train` reports it. Only complete runs (at the run's frame budget) enter the
statistics.

Everything here is rebuilt from a run's small files alone: config.yaml, episodes.csv, eval.json and
result.json (its frames, wall time and last 100 returns, written from the checkpoint when a run
finishes or is summarised). So a study can keep those few kilobytes per run (in git, say) and drop
the checkpoints; where a checkpoint is there, it is the authority and result.json is refreshed from
it. Confidence intervals are rliable's: a percentile bootstrap over runs,
stratified by game (Agarwal et al. 2021); the resampling is seeded, so a rebuild gives identical files.
"""
import csv
import json
import math
from pathlib import Path

import numpy as np
import yaml

from configs.errors import Error
from configs.files import atomic_write
from fwp_core import CORES
from learner import checkpoint
from runtime.driver import RETURN_WINDOW, env_dirname

from .atari_scores import human_normalized, scored_game
from .values import dotted, format_value

REPS = 10_000           # bootstrap resamples for the tables
IMPROVEMENT_REPS = 2_000   # for P(X > Y): rliable's estimator runs scipy's Mann-Whitney U per game (~1 ms)
CURVE_REPS = 2_000      # per point of a curve
CURVE_POINTS = 60
WINDOW = RETURN_WINDOW  # episodes in a final return / a point of a curve: train's own
COLUMNS = ["env", "core", "seed", "frames", "total_frames", "complete", "final_return", "eval_return",
           "eval_episodes", "wall_time_s", "frames_per_s", "run_dir"]


class ReportError(Error):
    """Nothing to report on; the message says what was looked for."""


# -- collecting runs ----------------------------------------------------------------------------

RESULT = "result.json"


def find_runs(outdir):
    """Run directories under outdir (DIR/<env>/<core>/seed<k> holding config.yaml and a checkpoint.pt
    or a result.json)."""
    found = {p.parent for name in ("checkpoint.pt", RESULT) for p in Path(outdir).glob(f"*/*/seed*/{name}")}
    return sorted(d for d in found if (d / "config.yaml").is_file())


def run_result(run_dir):
    """{frames, wall_time_s, recent_returns} of a run: from its checkpoint where there is one, else
    from its result.json; None where neither is there."""
    run_dir = Path(run_dir)
    if (run_dir / "checkpoint.pt").is_file():
        payload = checkpoint.read(run_dir / "checkpoint.pt")
        extra = payload["extra"]
        return {"frames": int(payload["counters"]["frames"]),
                "wall_time_s": float(extra.get("wall_time_s", 0.0)),
                "recent_returns": [float(x) for x in extra.get("recent_returns", [])]}
    if (run_dir / RESULT).is_file():
        saved = json.loads((run_dir / RESULT).read_text())
        return {k: saved[k] for k in ("frames", "wall_time_s", "recent_returns")}
    return None


def record(run_dir):
    """Write run_dir/result.json from the run's checkpoint once it reached the run's frame budget
    (and differs from what is there), so the run can be reported after its checkpoint is gone.
    Returns whether it wrote."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoint.pt").is_file():
        return False
    result = run_result(run_dir)
    total = int(yaml.safe_load((run_dir / "config.yaml").read_text())["run"]["total_frames"])
    if result["frames"] < total:
        return False
    path = run_dir / RESULT
    if path.is_file() and json.loads(path.read_text()) == result:
        return False
    atomic_write(path, json.dumps(result, indent=1) + "\n")
    return True


def read_run(run_dir, outdir):
    """One results.csv row (a dict) from a run directory's config.yaml, result (run_result) and
    eval.json."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    result = run_result(run_dir)
    frames, recent, wall = result["frames"], result["recent_returns"], result["wall_time_s"]
    row = {"env": cfg["env"]["id"], "core": cfg["model"]["core"], "seed": int(cfg["run"]["seed"]),
           "frames": frames, "total_frames": int(cfg["run"]["total_frames"]),
           "complete": frames >= int(cfg["run"]["total_frames"]),
           "final_return": float(np.mean(recent)) if recent else None,
           "eval_return": None, "eval_episodes": 0, "wall_time_s": round(wall, 1),
           "frames_per_s": round(frames / wall, 1) if wall > 0 else None,
           "run_dir": str(run_dir.relative_to(outdir))}
    eval_json = run_dir / "eval.json"
    if eval_json.is_file():
        result = json.loads(eval_json.read_text())
        if result.get("frames") == frames:   # an evaluation of an earlier checkpoint does not count
            row["eval_return"], row["eval_episodes"] = result["mean"], result["episodes"]
    return row


def _core_order(core):
    names = list(CORES)
    return (names.index(core) if core in names else len(names), core)


def collect(outdir):
    rows = [read_run(d, Path(outdir)) for d in find_runs(outdir)]
    if not rows:
        raise ReportError(f"no runs under {outdir} (looked for {outdir}/<env>/<core>/seed<k>/ with config.yaml "
                          "and checkpoint.pt or result.json)")
    return sorted(rows, key=lambda r: (r["env"], _core_order(r["core"]), r["seed"]))


def write_results_csv(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row[k] is None else row[k] for k in COLUMNS})


# -- statistics ---------------------------------------------------------------------------------
# rliable's estimators (Agarwal et al. 2021): a percentile bootstrap over runs, stratified by game
# (each game's runs resampled on their own), of the mean, the median of per-game means and the IQM.
# The aggregates come from rliable.metrics; the resampling from scipy.stats.bootstrap, because
# rliable.library's bootstrap (on arch) works with neither arch 8 (it passes arch's removed
# `random_state` argument) nor arch 7 under pandas 3 (arch 7 fails to import).

def _bootstrap(samples, statistic, reps):
    """(point, low, high) of statistic(*samples) with a 95% percentile bootstrap, each sample (1-D,
    one value per run) resampled independently; seeded, so a rebuild gives the same numbers."""
    from scipy.stats import bootstrap
    samples = [np.asarray(x, np.float64) for x in samples]
    point = float(statistic(*samples))
    # A one-run sample resamples to itself, and scipy refuses it (e.g. a core run with one seed
    # beside the lstm's three): hold it fixed and resample only the others.
    free = [i for i, x in enumerate(samples) if len(x) >= 2]
    if not free or all(np.ptp(x) == 0 for x in samples):
        return point, point, point    # nothing to resample: the interval is the point

    def partial(*drawn):
        full = list(samples)
        for i, x in zip(free, drawn):
            full[i] = x
        return statistic(*full)
    ci = bootstrap([samples[i] for i in free], partial, n_resamples=reps, vectorized=False,
                   method="percentile", confidence_level=0.95,
                   rng=np.random.default_rng(0)).confidence_interval
    return point, float(ci.low), float(ci.high)


def mean_ci(scores, reps=REPS):
    """(mean, low, high): the mean of `scores` (one per run) and its 95% bootstrap CI."""
    return _bootstrap([scores], np.mean, reps)


def difference_ci(scores, baseline, reps=REPS):
    """(mean(scores) - mean(baseline), low, high), the two sets of runs resampled independently."""
    return _bootstrap([scores, baseline], lambda a, b: np.mean(a) - np.mean(b), reps)


def welch_ci(scores, baseline):
    """(mean(scores) - mean(baseline), low, high) with Welch's t interval (unequal variances,
    Welch-Satterthwaite degrees of freedom), or None where a side has fewer than two runs or
    neither side varies. Beside the bootstrap: with 3 seeds a side, a percentile bootstrap sees at
    most 10 distinct means per side and its interval comes out narrower than the seeds' spread
    warrants; the t interval widens for few runs as it should (for normal scores)."""
    from scipy.stats import ttest_ind
    a, b = np.asarray(scores, np.float64), np.asarray(baseline, np.float64)
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return None
    ci = ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return float(a.mean() - b.mean()), float(ci.low), float(ci.high)


def aggregate_ci(matrix, reps=REPS):
    """Median and IQM of a runs x games matrix of human-normalised scores, each (point, low, high):
    rliable.metrics.aggregate_median (median over games of the per-game mean) and aggregate_iqm
    (25%-trimmed mean over all runs and games)."""
    from rliable import metrics
    games = list(np.asarray(matrix, np.float64).T)
    stack = lambda *g: np.stack(g, axis=1)   # noqa: E731  back to runs x games
    return {"median": _bootstrap(games, lambda *g: metrics.aggregate_median(stack(*g)), reps),
            "iqm": _bootstrap(games, lambda *g: metrics.aggregate_iqm(stack(*g)), reps)}


def improvement_ci(x, y, reps=IMPROVEMENT_REPS):
    """P(X > Y) of two runs x games matrices, with its 95% CI: rliable.metrics.probability_of_improvement
    (per game, the chance that a run of X scores above a run of Y, ties counting half; averaged over
    games), each game's runs of each side resampled on their own."""
    from rliable import metrics
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x.shape[1]
    return _bootstrap([*x.T, *y.T], lambda *g: metrics.probability_of_improvement(
        np.stack(g[:n], axis=1), np.stack(g[n:], axis=1)), reps)


def atari_aggregates(atari, reps=REPS):
    """Across games, per core: {core: {"games", "seeds", "median", "iqm"}} and, for each core other
    than the lstm, "improvement": P(core > lstm). `atari`: {core: {env: [human-normalised score per
    seed]}}. Only the games where every core has complete runs count, each cut to the core's fewest
    seeds among them (rliable's estimators take runs x games); {} when no game is shared."""
    def matrix(core, games):
        seeds = min(len(atari[core][g]) for g in games)
        return np.array([atari[core][g][:seeds] for g in games]).T

    out = {}
    # The games every core has: an aggregate over different games compares the games, not the cores.
    games = sorted(set.intersection(*(set(g) for g in atari.values()))) if atari else []
    if not games:
        return out
    for core in sorted(atari, key=_core_order):
        m = matrix(core, games)
        out[core] = {"games": len(games), "seeds": m.shape[0], **aggregate_ci(m, reps)}
        if core != "lstm" and "lstm" in atari:
            out[core]["improvement"] = (len(games), *improvement_ci(m, matrix("lstm", games), reps))
    return out


def curve(run_dir, grid):
    """At each frame count of `grid`, the mean return of the last WINDOW episodes finished by then
    (NaN before the first); read from the run's episodes.csv."""
    frames, returns = [], []
    path = Path(run_dir) / "episodes.csv"
    if path.is_file():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                frames.append(int(row["frames"]))
                returns.append(float(row["return"]))
    frames, returns = np.asarray(frames), np.asarray(returns, np.float64)
    out = np.full(len(grid), np.nan)
    cum = np.concatenate([[0.0], np.cumsum(returns)])
    for i, x in enumerate(grid):
        n = int(np.searchsorted(frames, x, side="right"))   # episodes finished by frame x
        if n:
            k = min(n, WINDOW)
            out[i] = (cum[n] - cum[n - k]) / k
    return out


def curve_band(curves, reps=CURVE_REPS):
    """Mean over runs and its 95% bootstrap CI at each point; curves: runs x points without NaN."""
    from scipy.stats import bootstrap
    c = np.asarray(curves, np.float64)
    mean = c.mean(axis=0)
    if len(c) < 2:
        return mean, mean, mean
    ci = bootstrap((c,), np.mean, axis=0, n_resamples=reps, method="percentile", confidence_level=0.95,
                   rng=np.random.default_rng(0)).confidence_interval
    # A point where every run agrees has no spread (scipy gives NaN there).
    return mean, np.where(np.isnan(ci.low), mean, ci.low), np.where(np.isnan(ci.high), mean, ci.high)


# -- outputs ------------------------------------------------------------------------------------

def _fmt(x, digits=3):
    """`digits` decimals; from 1000 on, whole numbers with thousands separators (Atari scores run to
    the tens of thousands: 1,001 and 12,346, not 1e+03 and 1.23e+04)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}f}"


def _ci(point, low, high):
    return f"{_fmt(point)} [{_fmt(low)}, {_fmt(high)}]"


def plot_curves(env, rows, outdir, path):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    last = min(r["frames"] for r in rows)   # every run reached it (the last batch may overshoot the budget)
    grid = np.linspace(last / CURVE_POINTS, last, CURVE_POINTS)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for core in sorted({r["core"] for r in rows}, key=_core_order):
        curves = np.stack([curve(Path(outdir) / r["run_dir"], grid) for r in rows if r["core"] == core])
        ok = ~np.isnan(curves).any(axis=0)                  # points where every seed has episodes
        if not ok.any():
            continue
        mean, low, high = curve_band(curves[:, ok])
        line, = ax.plot(grid[ok], mean, label=f"{core} ({len(curves)} seeds)",
                        marker="o" if ok.sum() < 4 else None)       # a point or two stay visible
        ax.fill_between(grid[ok], low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_title(env)
    ax.set_xlabel("environment frames")
    ax.set_ylabel(f"return (mean of the last {WINDOW} episodes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_aggregate(agg, path):
    """Two panels from atari_aggregates: each core's IQM of human-normalised scores, and each core's
    probability of improvement over the lstm, with their 95% CIs."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    cores = list(agg)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 0.6 + 0.5 * len(cores)), dpi=100)
    for ax, key, title in ((left, "iqm", "IQM of human-normalised score"),
                           (right, "improvement", "P(core > lstm)")):
        shown = [c for c in cores if key in agg[c]]
        points = np.array([agg[c][key][-3:] for c in shown]).reshape(-1, 3)   # point, low, high
        y = np.arange(len(shown))
        ax.errorbar(points[:, 0], y, xerr=[points[:, 0] - points[:, 1], points[:, 2] - points[:, 0]],
                    fmt="o", capsize=4)
        ax.set_yticks(y, [f"{c} ({agg[c]['games']} games x {agg[c]['seeds']})" for c in shown])
        ax.set_ylim(-0.7, len(cores) - 0.3)
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3, axis="x")
    right.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    right.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def atari_scores(rows):
    """{core: {env: [human-normalised final return per seed]}} of the complete runs of scored games."""
    out = {}
    for r in rows:
        if r["complete"] and r["final_return"] is not None and scored_game(r["env"]) is not None:
            out.setdefault(r["core"], {}).setdefault(r["env"], []).append(human_normalized(r["env"], r["final_return"]))
    return out


def summary_markdown(rows, outdir, agg=None):
    """The summary's text; `agg`: atari_aggregates of the rows, where already computed."""
    lines = [f"# Comparison of cores: {Path(outdir).name}", "",
             f"Score: final return, the mean of the last {WINDOW} training episodes of a run (raw game "
             "score). Mean over seeds with its 95% CI: percentile bootstrap over seeds ("
             f"{REPS:,} resamples). Δ vs lstm: difference of means, seeds of both cores resampled "
             "independently; Welch t: the same difference's 95% CI from Welch's t test (unequal "
             "variances), wider than the bootstrap's where there are few seeds. Ratio: mean / lstm mean "
             "(n/a unless the lstm mean is positive). Eval: "
             "mean over seeds of each run's evaluation return (eval.json). Only complete runs count.", ""]
    complete = [r for r in rows if r["complete"] and r["final_return"] is not None]
    if agg is None:
        agg = atari_aggregates(atari_scores(rows))
    for env in sorted({r["env"] for r in rows}):
        env_rows = [r for r in complete if r["env"] == env]
        lines += [f"## {env}", ""]
        if not env_rows:
            lines += ["No complete runs yet.", ""]
            continue
        hns = scored_game(env) is not None
        head = ["core", "seeds", "frames", "final return [95% CI]", "Δ vs lstm [95% CI]", "Δ Welch t 95% CI",
                "ratio to lstm"]
        head += ["human-normalised [95% CI]"] if hns else []
        head += ["eval return", "frames/s"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        by_core = {}
        for r in env_rows:
            by_core.setdefault(r["core"], []).append(r)
        lstm = [r["final_return"] for r in by_core.get("lstm", [])]
        lstm_mean = float(np.mean(lstm)) if lstm else None
        for core in sorted(by_core, key=_core_order):
            runs = by_core[core]
            scores = [r["final_return"] for r in runs]
            m = mean_ci(scores)
            cells = [core, str(len(runs)), f"{min(r['frames'] for r in runs):,}", _ci(*m)]
            if lstm and core != "lstm":
                cells.append(_ci(*difference_ci(scores, lstm)))
                welch = welch_ci(scores, lstm)
                cells.append(f"[{_fmt(welch[1])}, {_fmt(welch[2])}]" if welch else "n/a")
                cells.append(_fmt(m[0] / lstm_mean, 2) + "x" if lstm_mean > 0 else "n/a")
            else:
                cells += ["—", "—", "1.00x" if core == "lstm" and lstm_mean > 0 else "—"]
            if hns:
                normalised = [human_normalized(env, s) for s in scores]
                cells.append(_ci(*mean_ci(normalised)))
            evals = [r["eval_return"] for r in runs if r["eval_return"] is not None]
            cells.append(f"{_fmt(float(np.mean(evals)))} ({len(evals)} runs)" if evals else "n/a")
            rates = [r["frames_per_s"] for r in runs if r["frames_per_s"]]
            cells.append(f"{np.mean(rates):,.0f}" if rates else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"![curves](curves_{env_dirname(env)}.png)", ""]
    if agg:
        lines += ["## Atari: human-normalised, across games", "",
                  "Median and IQM (rliable's aggregate_median / aggregate_iqm) of runs x games, over the "
                  "games where every core has complete runs, each cut to the core's fewest seeds among them. "
                  "P(> lstm): rliable's probability_of_improvement over the games both cores have (the "
                  "chance that a run of the core beats a run of the lstm on a game, averaged over games; "
                  "0.5 = no difference). CIs: percentile bootstrap stratified by game.", "",
                  "| core | games | seeds | median [95% CI] | IQM [95% CI] | P(> lstm) [95% CI] |",
                  "|---|---|---|---|---|---|"]
        for core, a in agg.items():
            better = f"{_ci(*a['improvement'][1:])} ({a['improvement'][0]} games)" if "improvement" in a else "—"
            lines.append(f"| {core} | {a['games']} | {a['seeds']} | {_ci(*a['median'])} | {_ci(*a['iqm'])} "
                         f"| {better} |")
        lines += ["", "![aggregate](aggregate.png)", ""] if len(agg) > 1 else [""]
    lines += settings_markdown(rows, outdir)
    partial = [r for r in rows if not r["complete"]]
    if partial:
        lines += ["Incomplete runs (left out above): " + ", ".join(
            f"{r['run_dir']} ({r['frames']:,}/{r['total_frames']:,} frames)" for r in partial), ""]
    return "\n".join(lines)


# Keys that differ between runs of one comparison by design, not as settings.
PER_RUN_KEYS = {"model.core", "run.seed", "run.logdir", "env.id"}


def settings_markdown(rows, outdir):
    """The config values that differ between the cores of an env, and those a `compare --tuned`
    tuned (DIR/tuned.yaml), per core, from the runs' config.yaml; nothing when all cores share them."""
    tuned = Path(outdir) / "tuned.yaml"
    always = set((yaml.safe_load(tuned.read_text()) or {}).get("keys", [])) if tuned.is_file() else set()
    lines = []
    for env in sorted({r["env"] for r in rows}):
        by_core = {}
        for r in rows:
            saved = Path(outdir) / r["run_dir"] / "config.yaml"
            if r["env"] == env and r["core"] not in by_core and saved.is_file():
                cfg = yaml.safe_load(saved.read_text())
                by_core[r["core"]] = dotted(cfg)
        if not by_core:
            continue
        keys = sorted(k for k in set().union(*by_core.values()) - PER_RUN_KEYS
                      if k in always or len({repr(c.get(k)) for c in by_core.values()}) > 1)
        if not keys:
            continue
        title = "Each core's tuned and differing settings" if always else "Settings that differ between the cores"
        lines += [f"## {title}: {env}", "",
                  "| core | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for core in sorted(by_core, key=_core_order):
            values = [by_core[core].get(k) for k in keys]
            lines.append(f"| {core} | " + " | ".join(format_value(v)
                                                    for v in values) + " |")
        lines.append("")
    return lines


def write_outputs(outdir):
    """Write results.csv, summary.md, curves_<env>.png and aggregate.png under outdir (and each run's
    result.json where its checkpoint is newer); returns the paths of the outputs."""
    outdir = Path(outdir)
    for run_dir in find_runs(outdir):
        record(run_dir)
    rows = collect(outdir)
    agg = atari_aggregates(atari_scores(rows))
    written = [outdir / "results.csv", outdir / "summary.md"]
    write_results_csv(rows, written[0])
    written[1].write_text(summary_markdown(rows, outdir, agg))
    if len(agg) > 1:
        written.append(outdir / "aggregate.png")
        plot_aggregate(agg, written[-1])
    for env in sorted({r["env"] for r in rows}):
        env_rows = [r for r in rows if r["env"] == env and r["complete"]]
        if env_rows:
            path = outdir / f"curves_{env_dirname(env)}.png"
            plot_curves(env, env_rows, outdir, path)
            written.append(path)
    return written
