"""The driver of one run: it owns the run directory and drives the Ray service that trains.

    summary = Training(cfg).run()                        # until run.total_frames or a stop signal
    summary = Training(cfg, resume=True).run()           # continue from the directory's checkpoint

A run directory (`RunDir`, cfg.run.logdir) holds:

- `config.yaml`: the resolved config (written atomically when the run starts);
- `checkpoint.pt`: everything needed to continue (written atomically every
  run.checkpoint_interval_s, at the end, and on SIGINT/SIGTERM);
- `checkpoint_<M>.pt`: a kept copy at each frame count M of run.save_at_frames (the first update
  at or past M; `eval --checkpoint` takes it);
- `episodes.csv`: every finished game (frames, return, length), appended as they come;
- TensorBoard events: the tags the README lists (losses, returns, the learner's health), x =
  environment frames.

The first SIGINT or SIGTERM stops the run after its next report, with a checkpoint; a second one
gives up on the clean exit. The config arrives checked (configs/); Training checks it once more
(configs.check_config: values set after loading too) before Ray starts.
"""
import csv
import signal
import sys
import threading
import time
from collections import deque
from datetime import datetime
from pathlib import Path

from configs import check_config, config_yaml
from configs.errors import Error
from configs.files import atomic_write

from . import cluster

# A run's score: the mean return of its last RETURN_WINDOW games, in the progress bar, the summary,
# checkpoints ("recent_returns"), tune's metric and compare's tables and curves.
RETURN_WINDOW = 100


def env_dirname(env_id):
    """An env id as one path component: 'ALE/Pong-v5' -> 'ALE_Pong-v5'."""
    return env_id.replace("/", "_")


def default_logdir(cfg):
    """runs/<env>-<core>-<date-time>, the directory of a run started without --logdir."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{env_dirname(cfg.env.id)}-{cfg.model.core}-{stamp}")


def _row_frames(line):
    """A row's frames; infinity (dropped) for a torn line, as a kill mid-write leaves."""
    fields = line.split(",")
    if not line.endswith("\n") or len(fields) != 3:
        return float("inf")
    try:
        return int(fields[0])
    except ValueError:
        return float("inf")


class RunDirError(Error):
    """A run directory that cannot be used as asked (another run is there, or none to resume)."""


class RunDir:
    """The files of one run directory."""

    def __init__(self, path):
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.checkpoint = self.path / "checkpoint.pt"
        self.episodes = self.path / "episodes.csv"

    def check_new(self):
        """RunDirError if the directory already holds a run: a new run would mix with it."""
        if self.config.exists():
            raise RunDirError(f"--logdir {self.path} already holds a run (config.yaml); pass --resume to "
                              "continue it, or choose another --logdir")

    def check_resumable(self):
        """RunDirError unless the directory holds a run with a checkpoint to continue from."""
        if not self.config.is_file():
            raise RunDirError(f"--resume: {self.path} holds no run (no config.yaml); "
                              "start it without --resume first")
        if not self.checkpoint.is_file():
            raise RunDirError(f"--resume: {self.path} holds no checkpoint.pt to continue from")

    def write_config(self, cfg):
        atomic_write(self.config, config_yaml(cfg))

    def truncate_episodes(self, frames):
        """Keep only the episodes.csv rows logged at or before `frames` (a checkpoint's): rows a
        crash left beyond it would be logged again, with earlier frame counts, by the continued run."""
        if not self.episodes.is_file():
            return
        lines = self.episodes.read_text().splitlines(keepends=True)
        kept = lines[:1] + [ln for ln in lines[1:] if ln.strip() and _row_frames(ln) <= frames]
        if len(kept) != len(lines):
            atomic_write(self.episodes, "".join(kept))

    def open_episodes(self):
        """episodes.csv for appending (with its header if new): (file, csv writer)."""
        f = open(self.episodes, "a", newline="")
        writer = csv.writer(f)
        if f.tell() == 0:
            writer.writerow(["frames", "return", "length"])
        return f, writer


class Training:
    def __init__(self, cfg, resume=False, address=None):
        """cfg: the resolved Config (cfg.run.logdir set); resume: continue from the directory's
        checkpoint; address: a Ray cluster to join (default: start Ray here)."""
        check_config(cfg)
        self.cfg, self.resume, self.address = cfg, resume, address
        self.dir = RunDir(cfg.run.logdir)
        self.stop = None            # what stopped the run: a signal number or "on_report"

    def _on_signal(self, signum, frame):
        if self.stop is not None:   # a second Ctrl-C: give up on the clean exit
            raise KeyboardInterrupt
        self.stop = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint and stopping "
              "(press Ctrl-C again to quit at once)", file=sys.stderr, flush=True)

    def run(self, progress=True, on_report=None):
        """Train until run.total_frames or a stop signal; returns a summary dict (frames,
        start_frames, stopped_by, final_return, episodes, logdir, wall_time_s, learner_restarts).
        `on_report(report, service)` is called after each interval (tests, benchmarks and tune's trials
        use it to watch or interfere with a live run; report["mean_return"] is the mean of the last RETURN_WINDOW
        episodes, or None); returning True stops the run as a signal would.

        If the learner's Ray actor dies (OOM, a GPU error, its node lost), a new one continues
        from the last checkpoint, up to run.max_learner_restarts times (learner/restarts)."""
        import ray

        from learner import checkpoint

        self.dir.path.mkdir(parents=True, exist_ok=True)
        payload = checkpoint.read(self.dir.checkpoint) if self.resume else None
        started_ray = cluster.start_ray(self.cfg, self.address)
        previous, restarts, start_frames = {}, 0, None
        try:
            if self.address:
                cluster.check_cluster_fits(self.cfg)
            if threading.current_thread() is threading.main_thread():   # not in a Ray Tune trial
                for sig in (signal.SIGINT, signal.SIGTERM):
                    previous[sig] = signal.signal(sig, self._on_signal)
            while True:
                service = self._start_service(payload)
                try:
                    state = ray.get(service.state.remote())
                    if state["error"]:
                        raise checkpoint.CheckpointError(state["error"])
                    start_frames = state["frames"] if start_frames is None else start_frames
                    summary = self._loop(service, state, progress, on_report, restarts,
                                         resumed=payload is not None or restarts > 0)
                    return {**summary, "start_frames": start_frames, "learner_restarts": restarts}
                except ray.exceptions.RayActorError as e:
                    if restarts >= self.cfg.run.max_learner_restarts:
                        raise RuntimeError(f"the learner died {restarts + 1} times (run.max_learner_restarts="
                                           f"{self.cfg.run.max_learner_restarts}); last: {e}") from e
                    restarts += 1
                    print(f"[driver] the learner died ({type(e).__name__}); restart {restarts} of "
                          f"{self.cfg.run.max_learner_restarts} from the last checkpoint", file=sys.stderr, flush=True)
                    payload = checkpoint.read(self.dir.checkpoint) if self.dir.checkpoint.is_file() else None
                finally:
                    self._close_service(service)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if started_ray:
                ray.shutdown()

    def _start_service(self, payload):
        import ray

        from .service import LearnerService
        return ray.remote(LearnerService).options(**cluster.learner_resources(self.cfg)).remote(
            self.cfg, payload, str(self.dir.checkpoint))

    @staticmethod
    def _close_service(service):
        import ray
        try:
            ray.get(service.close.remote(), timeout=30)
        except Exception:  # noqa: BLE001  shutting down (or already dead): nothing left to save here
            pass
        ray.kill(service)

    def _loop(self, service, state, progress, on_report, learner_restarts, resumed):
        import ray
        from tqdm import tqdm

        from learner import checkpoint

        from .tensorboard import TensorBoardLogger

        cfg = self.cfg
        frames, extra = state["frames"], state["extra"]
        recent = deque(extra.get("recent_returns", []), maxlen=RETURN_WINDOW)
        wall = extra.get("wall_time_s", 0.0)
        self.dir.write_config(cfg)          # the values in force (a resume may change the budget)
        # From a checkpoint, the run directory goes back to it: TensorBoard's purge_step hides the
        # events written beyond it and episodes.csv drops its rows beyond it.
        if resumed:
            self.dir.truncate_episodes(frames)
        logger = TensorBoardLogger(self.dir.path, None if resumed else cfg,
                                   purge_step=frames if resumed else None)
        episodes_file, episodes = self.dir.open_episodes()
        t0 = last_save = time.monotonic()

        def save(*paths):
            extra = {"recent_returns": list(recent), "wall_time_s": wall + time.monotonic() - t0}
            payload = ray.get(service.checkpoint_payload.remote(extra))
            for path in paths or (self.dir.checkpoint,):
                checkpoint.save_atomic(payload, path)

        # Milestones still ahead (run.save_at_frames): the service stops at each, so the copy kept
        # there holds exactly the first update at or past it.
        milestones = sorted(m for m in set(cfg.run.save_at_frames) if frames < m <= cfg.run.total_frames)
        bar = tqdm(total=cfg.run.total_frames, initial=frames, unit="frame", unit_scale=True,
                   dynamic_ncols=True, disable=not progress, desc=self.dir.path.name)
        try:
            while frames < cfg.run.total_frames and self.stop is None:
                report = ray.get(service.run.remote(min(cfg.run.log_interval_s, 5.0) if progress
                                                    else cfg.run.log_interval_s,
                                                    milestones[0] if milestones else None))
                bar.update(report["frames"] - frames)
                frames, stats = report["frames"], report["stats"]
                stats["learner/restarts"] = float(learner_restarts)
                if report["episodes"]:
                    returns = [r for r, _ in report["episodes"]]
                    recent.extend(returns)
                    stats["episode/return"] = float(sum(returns) / len(returns))
                    stats["episode/length"] = float(sum(n for _, n in report["episodes"]) / len(returns))
                    episodes.writerows((frames, r, n) for r, n in report["episodes"])
                    episodes_file.flush()
                logger.scalars(stats, frames)
                self._show(bar, progress, frames, stats, recent)
                report["mean_return"] = sum(recent) / len(recent) if recent else None
                if on_report is not None and on_report(report, service):
                    self.stop = "on_report"
                if milestones and frames >= milestones[0]:
                    save(self.dir.checkpoint, self.dir.path / f"checkpoint_{milestones.pop(0)}.pt")
                    last_save = time.monotonic()
                elif time.monotonic() - last_save >= cfg.run.checkpoint_interval_s:
                    save()
                    last_save = time.monotonic()
            save()
        except ray.exceptions.RayActorError:
            raise                             # the learner is gone: run() restarts it from the checkpoint
        except BaseException:
            try:                              # anything else: keep what was learned, then fail
                save()
            except Exception:  # noqa: BLE001  the failure itself may prevent it; report the first
                pass
            raise
        finally:
            bar.close()
            logger.close()
            episodes_file.close()
        stopped_by = self.stop and (signal.Signals(self.stop).name if isinstance(self.stop, int) else self.stop)
        return {"frames": frames, "stopped_by": stopped_by,
                "final_return": sum(recent) / len(recent) if recent else None,
                "episodes": len(recent), "logdir": str(self.dir.path),
                "wall_time_s": wall + time.monotonic() - t0}

    @staticmethod
    def _show(bar, progress, frames, stats, recent):
        mean_return = sum(recent) / len(recent) if recent else float("nan")
        # The learner's health at a glance: how often the gradient clip acts, the advantages' spread.
        health = (f"clip {stats['learner/clip_fraction']:.2f}, adv std {stats['learner/adv_std']:.3g}"
                  if "learner/clip_fraction" in stats else "")
        bar.set_postfix_str(f"{stats['perf/env_frames_per_s']:,.0f} frames/s, "
                            f"return {mean_return:.2f} (last {len(recent)}), {health}", refresh=False)
        if not progress:
            print(f"frames {frames:,}  {stats['perf/env_frames_per_s']:,.0f} frames/s  "
                  f"return {mean_return:.2f}  {health}", flush=True)
