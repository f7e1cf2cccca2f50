"""The run folder of ``reid-train fit``: what a run needs to be continued, evaluated or moved on from anywhere.

A run's ``config.yaml`` (and the config inside its checkpoint) holds absolute paths, so
``reid-train fit --resume RUN_DIR`` and ``reid-train evaluate --checkpoint RUN_DIR/checkpoint.pth``
work from any working directory without repeating ``--set``. A ``fit`` refused before its
first epoch removes the folder it created (no empty run folders with a 0-byte log).

One run per folder: ``fit`` holds :func:`run_lock` (``.<folder name>.lock`` beside the run
folder, the POSIX lock ``reid-masks generate`` holds on its ``--out``) for as long as it runs,
and ``evaluate``/``extract`` hold it while they write into a run folder
(:func:`lock_if_run_folder`), so a second writer is refused at once, naming the holder.
"""
from __future__ import annotations

import copy
import shlex
import shutil
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import ContextManager, Iterable

from reid_masks.errors import UserError
from reid_masks.fileio import OutputLock, missing_folders
from reid_train.config import Config, load_config

__all__ = ["absolute_paths", "load_run_config", "first_missing", "remove_unstarted_run", "run_lock", "lock_if_run_folder",
           "RUN_CONFIG_NAME"]

RUN_CONFIG_NAME = "config.yaml"
_NOT_PATHS = {"imagenet", "none", ""}


def _absolute(text: str, base: Path) -> str:
    p = Path(text).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def absolute_paths(cfg: Config, base: str | Path | None = None) -> Config:
    """A copy of ``cfg`` with data.root, data.cache, model.pretrained (a file) and train.output_dir
    made absolute against ``base`` (default: the working directory)."""
    base = Path(base or Path.cwd())
    cfg = copy.deepcopy(cfg)
    cfg.data.root = _absolute(cfg.data.root, base) if cfg.data.root else cfg.data.root
    cfg.data.cache = _absolute(cfg.data.cache, base) if cfg.data.cache else cfg.data.cache
    if cfg.model.pretrained.lower() not in _NOT_PATHS:
        cfg.model.pretrained = _absolute(cfg.model.pretrained, base)
    cfg.train.output_dir = _absolute(cfg.train.output_dir, base)
    return cfg


def load_run_config(run_dir: str | Path, overrides: Iterable[str] = ()) -> Config:
    """The config of the run in ``run_dir`` (its config.yaml, then ``--set`` overrides), writing to ``run_dir``.

    A relative data path in config.yaml (a run made before paths were stored absolute) cannot
    be resolved from here: it is refused, naming the key to set.
    """
    run_dir = Path(run_dir)
    saved = run_dir / RUN_CONFIG_NAME
    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir}: not a folder (expected the train.output_dir of a fit run)")
    if not saved.is_file():
        raise UserError(f"--resume {run_dir}: no {RUN_CONFIG_NAME} there (expected the train.output_dir of a fit run)")
    cfg = load_config(saved, [*overrides, f"train.output_dir={run_dir.resolve()}"])
    for key, value in (("data.root", cfg.data.root), ("data.cache", cfg.data.cache)):
        if value and not Path(value).is_absolute():
            raise UserError(f"{saved}: {key}={value} is a relative path (a run from before absolute paths); "
                            f"pass --set {key}=<absolute path>")
    return cfg


def first_missing(path: str | Path) -> Path | None:
    """The outermost folder of ``path`` (``path`` included) that does not exist yet, or None."""
    missing = missing_folders(path)
    return missing[-1] if missing else None


def remove_unstarted_run(created: Path | None, output_dir: str | Path, new_log: Path | None = None,
                         lock: OutputLock | None = None) -> None:
    """Undo what a refused ``fit`` made when the run in ``output_dir`` never saved a checkpoint:
    ``created`` (the outermost folder this command made, and the file of ``lock``, still held,
    beside it) or else ``new_log`` (a log file it started)."""
    from reid_train.engine.trainer import CHECKPOINT_NAME

    if (Path(output_dir) / CHECKPOINT_NAME).exists():
        return
    if created is not None and created.is_dir():
        shutil.rmtree(created, ignore_errors=True)
        if lock is not None:
            lock.lock_path.unlink(missing_ok=True)
    elif new_log is not None and new_log.is_file():
        new_log.unlink()


def _command() -> str:
    return shlex.join(["reid-train", *sys.argv[1:]])


def run_lock(run_dir: str | Path) -> OutputLock:
    """The lock of the run folder ``run_dir`` (not yet acquired): ``.<name>.lock`` beside it."""
    return OutputLock(Path(run_dir).absolute().resolve(), _command())


def lock_if_run_folder(out: str | Path) -> ContextManager:
    """The run lock of the folder ``out`` is written into when that folder is a run folder (it holds
    a checkpoint or a run config, or a fit has locked it); else a no-op context."""
    from reid_train.engine.trainer import CHECKPOINT_NAME

    folder = Path(out).absolute().resolve().parent
    lock = run_lock(folder)
    if (folder / CHECKPOINT_NAME).exists() or (folder / RUN_CONFIG_NAME).exists() or lock.lock_path.exists():
        return lock
    return nullcontext()
