"""Replacing a file whole: the project's one way to write a file a kill must not tear (checkpoints,
config.yaml, eval.json, a search's tables). A leaf module beside errors.py, so that every room
(learner, runtime, experiments, launch.py) can import it without importing another room."""
import os
import tempfile
from pathlib import Path


def atomic_write(path, data):
    """Write `data` (bytes or str) to `path` so that a kill at any moment leaves the old file or the
    new one, never a torn one: a temp file in the same directory, flushed and fsynced, os.replace'd
    over `path`, then the directory fsynced (the rename itself durable). The temp file is removed
    if anything fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
