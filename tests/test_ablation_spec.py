"""The Breakout ablation's spec: every row resolves to a config `launch.py train` accepts, so a row
with a misspelt key or an out-of-range value fails here, not 25 minutes into an ablation."""
import importlib.util
from pathlib import Path

import pytest

from configs import check_config, load_config

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "bench" / "ablation_breakout.yaml"


def _ablation():
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "bench" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROWS = _ablation().load_spec(SPEC)


@pytest.mark.parametrize("row", ROWS["rows"], ids=[r["name"] for r in ROWS["rows"]])
def test_every_row_is_a_valid_config(row):
    items = [*(ROWS.get("base") or []), *(row.get("set") or [])]
    cfg = load_config(ROWS["config"], overrides=[f"env.id={ROWS['env']}", *items])
    check_config(cfg)
    for item in row.get("set") or []:      # the row's own values win over the pinned base
        section, name = item.split("=", 1)[0].split(".")
        alone = load_config(ROWS["config"], overrides=[item])
        assert getattr(getattr(cfg, section), name) == getattr(getattr(alone, section), name), item
