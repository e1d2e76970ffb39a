"""The TensorBoard logger: scalars at x = frames, the config as YAML text, hparams, read back."""
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from configs import config_to_dict
from runtime.tensorboard import TensorBoardLogger

from .learner_cases import tiny_config


def test_scalars_config_and_hparams_land_in_one_run(tmp_path):
    cfg = tiny_config("rdn", "learner.lr=3e-4")
    with TensorBoardLogger(tmp_path, cfg) as logger:
        logger.scalars({"loss/total": 1.5, "learner/lr": 3e-4}, frames=800)
        logger.scalars({"loss/total": 0.5, "episode/return": 21}, frames=1600)
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0}).Reload()
    total = events.Scalars("loss/total")
    assert [(e.step, e.value) for e in total] == [(800, 1.5), (1600, 0.5)]
    assert [e.step for e in events.Scalars("episode/return")] == [1600]
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("```yaml\n") and text.endswith("```")
    assert yaml.safe_load(text[len("```yaml\n"):-3]) == config_to_dict(cfg)
    hparams = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in hparams and "_hparams_/session_start_info" in hparams
    assert b"learner.lr" in hparams["_hparams_/session_start_info"]
    assert list(tmp_path.iterdir()) == [next(tmp_path.glob("events.out.tfevents.*"))]  # no sub-run
