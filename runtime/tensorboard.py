"""TensorBoard: scalar dicts against environment frames, the resolved config, its hyperparameters.

    logger = TensorBoardLogger(cfg.run.logdir, cfg)     # writes the config text and hparams once
    logger.scalars(learner.step(batch), frames=learner.frames)
    logger.close()
"""
import yaml
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from configs import config_to_dict


class TensorBoardLogger:
    def __init__(self, logdir, cfg=None, metrics=("episode/return",), purge_step=None):
        """`metrics`: scalar tags the hparams tab shows beside each run's hyperparameters.
        `purge_step`: on resume, the checkpoint's frames; TensorBoard hides events a crashed run
        wrote beyond it, so the continued curves do not overlap."""
        self.writer = SummaryWriter(log_dir=str(logdir), purge_step=purge_step)
        if cfg is not None:
            self.log_config(cfg, metrics)

    def scalars(self, stats, frames):
        """Write {tag: number} at x = `frames` (environment frames: agent steps x frame skip)."""
        for tag, value in stats.items():
            self.writer.add_scalar(tag, float(value), global_step=int(frames))

    def log_config(self, cfg, metrics=("episode/return",)):
        config = config_to_dict(cfg)
        self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)
        # hparams take scalars only: lists (run.save_at_frames) as their text.
        flat = {f"{section}.{key}": value if isinstance(value, (int, float, str, bool)) else str(list(value))
                for section, fields in config.items() for key, value in fields.items()}
        # Into this run's own event file (SummaryWriter.add_hparams would open a sub-run for them).
        for summary in hparams(flat, {tag: 0.0 for tag in metrics}):
            self.writer.file_writer.add_summary(summary)

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
