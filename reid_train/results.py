"""Evaluation records: every score together with everything that decides it, kept, never overwritten.

``fit`` (after each evaluated epoch) and ``evaluate`` append one JSON line per evaluation to
``evaluations.jsonl`` in the run folder (``evaluate --out FILE.jsonl`` appends elsewhere;
``--out FILE.json`` writes one record to a new file and refuses an existing one). A record
holds the scores of the first test set at the top level (``rank1 rank5 rank10 mAP
num_query num_gallery dataset protocol [split_id] multi_query``), every set under
``test_sets`` (with its root, cache and options), and how they were obtained:

* ``settings``: ``metric``, ``flip``, ``rerank`` with ``k1``/``k2``/``lambda_value`` (null
  without re-ranking), ``multi_query``, ``precision`` (float32, bfloat16, float16) and
  ``input_size``;
* ``checkpoint``: ``path``, ``epoch``, ``sha256`` of the file the weights came from;
* ``config``: the run's config as trained (every key its model reads), ``seed``,
  ``command`` (fit / evaluate) and ``time`` (UTC).

Why one appended JSONL file rather than a file per setting: appending cannot replace an
earlier result (the fit's evaluation and a later re-ranked or cross-dataset one sit side
by side, and a resumed fit adds its epochs), a line read on its own says how it was
scored, and a run keeps one file that ``summarize`` reads, the convention of
``metrics.jsonl``; names built from the settings would have to spell out a dozen values
and would still collide (and overwrite) when a setting is left out of the name.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from reid_masks.errors import UserError
from reid_masks.fileio import append_json_line, check_writable, write_json_atomic

if TYPE_CHECKING:
    from reid_train.config import Config

__all__ = [
    "EVALUATIONS_NAME", "RECORD_FORMAT", "evaluation_record", "save_evaluation", "check_result_path",
    "read_evaluations", "fit_evaluation", "comparison_key", "METRICS",
]

logger = logging.getLogger(__name__)

EVALUATIONS_NAME = "evaluations.jsonl"
LEGACY_NAME = "evaluation.json"  # one overwritten file, without settings (reid-train before records)
RECORD_FORMAT = "reid-train-evaluation/1"
METRICS = ("rank1", "rank5", "rank10", "mAP")

# Config keys that do not change the numbers, or that are the dimensions runs are averaged
# over (seed, split); evaluation settings and test sets are compared from the record itself.
_NOT_COMPARED = {
    "train.seed", "data.options.split_id", "train.output_dir", "data.root", "data.cache", "data.num_workers",
    "data.test_sets", "train.device", "train.log_period", "train.eval_period", "train.tensorboard",
    "train.cudnn_benchmark", "train.channels_last",
}


def _precision(amp_dtype: Any) -> str:
    return str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "float32"


def evaluation_record(
    results: Mapping[str, Any],
    cfg: Config,
    train_cfg: Config,
    *,
    command: str,
    epoch: int,
    checkpoint: str | Path | None,
    amp_dtype: Any = None,
) -> dict[str, Any]:
    """The record of one evaluation (module docstring): ``results`` of ``evaluate_test_sets``
    scored with ``cfg`` (``test`` settings) by a model trained with ``train_cfg``."""
    from reid_masks.weights import file_sha256
    from reid_train.config import config_to_dict

    t = cfg.test
    ckpt = Path(checkpoint) if checkpoint else None
    return {
        "format": RECORD_FORMAT,
        **{k: v for k, v in results.items() if k not in ("root", "cache", "options")},  # the headline set
        "settings": {
            "metric": t.metric, "flip": t.flip, "rerank": t.rerank,
            "k1": t.k1 if t.rerank else None, "k2": t.k2 if t.rerank else None,
            "lambda_value": t.lambda_value if t.rerank else None,
            "multi_query": t.multi_query, "precision": _precision(amp_dtype), "input_size": [cfg.data.height, cfg.data.width],
        },
        "epoch": int(epoch),
        "checkpoint": {"path": str(ckpt.resolve()) if ckpt else None, "epoch": int(epoch),
                       "sha256": file_sha256(ckpt) if ckpt and ckpt.is_file() else None},
        "seed": train_cfg.train.seed,
        "config": config_to_dict(train_cfg, read_only=True),
        "command": command,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def check_result_path(out: str | Path) -> Path:
    """Refuse, before any work, an ``--out`` that would replace a result or cannot be written."""
    out = Path(out)
    if out.suffix != ".jsonl" and out.exists():
        raise UserError(f"--out {out}: exists, and results are never overwritten; choose another file name, "
                        f"or a .jsonl file to append to")
    return check_writable(out)


def save_evaluation(out: str | Path, record: Mapping[str, Any]) -> None:
    """Append ``record`` to a ``.jsonl`` file, or write it to a new ``.json`` file (atomically)."""
    out = Path(out)
    if out.suffix == ".jsonl":
        append_json_line(out, record)
    else:
        check_result_path(out)
        write_json_atomic(out, record)


def _lines(path: Path) -> Iterator[tuple[int, Any]]:
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except ValueError:  # a line torn by a crash: the others still count
            logger.warning("%s:%d: not a JSON line (torn by a crash?); skipped", path, n)


def read_evaluations(path: str | Path) -> list[dict[str, Any]]:
    """The records of ``path`` -- a run folder (its evaluations.jsonl), a ``.jsonl`` or a ``.json``
    file -- each with ``source`` (``file:line``) and ``source_file`` added. Files without settings (written before
    records existed) are refused: what they measured cannot be compared."""
    path = Path(path)
    if path.is_dir():
        if not (path / EVALUATIONS_NAME).is_file() and (path / LEGACY_NAME).is_file():
            path = path / LEGACY_NAME
        else:
            path = path / EVALUATIONS_NAME
    if not path.is_file():
        raise UserError(f"{path}: evaluation file not found (run 'reid-train fit' or 'reid-train evaluate' first)")
    try:
        if path.suffix == ".jsonl":
            items = list(_lines(path))
        else:
            items = [(0, json.loads(path.read_text()))]
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: expected an evaluation record of reid-train ({exc})") from None
    records = []
    for n, data in items:
        where = f"{path}:{n}" if n else str(path)
        if not isinstance(data, dict) or any(not isinstance(data.get(k), (int, float)) for k in METRICS):
            raise UserError(f"{where}: not a reid-train evaluation (needs {', '.join(METRICS)})")
        if data.get("format") != RECORD_FORMAT:
            raise UserError(f"{where}: written by an older reid-train, it does not record how it was scored (metric, "
                            f"flip, re-ranking, checkpoint); rerun 'reid-train evaluate --checkpoint CHECKPOINT' for a record")
        records.append({**data, "source": where, "source_file": str(path.resolve())})
    if not records:
        raise UserError(f"{path}: no evaluation in it")
    return records


def fit_evaluation(run_dir: str | Path, epoch: int) -> dict[str, Any] | None:
    """The latest record ``fit`` appended to ``run_dir``'s evaluations.jsonl for ``epoch``, or None
    (no file, no such line; torn lines are skipped): whether a resumed fit must redo that evaluation."""
    path = Path(run_dir) / EVALUATIONS_NAME
    if not path.is_file():
        return None
    found = None
    for _, data in _lines(path):
        if isinstance(data, dict) and data.get("command") == "fit" and data.get("epoch") == epoch:
            found = data
    return found


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and key != "data.test_sets":
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def comparison_key(record: Mapping[str, Any], with_epoch: bool = True) -> dict[str, Any]:
    """Everything of ``record`` that decides its numbers except the seed and the split, flat
    (``model.name``, ``settings.rerank``, ``test set 1``, ``epoch``...): records with equal
    keys are the same experiment repeated, and only those are averaged."""
    key = {k: v for k, v in _flat(record.get("config", {})).items() if k not in _NOT_COMPARED and not k.startswith("test.")}
    key.update({f"settings.{k}": v for k, v in record.get("settings", {}).items()})
    for i, s in enumerate(record.get("test_sets") or [record]):
        options = {k: v for k, v in (s.get("options") or {}).items() if k != "split_id"}
        key[f"test set {i + 1}"] = s.get("dataset", "?") + (f" {json.dumps(options, sort_keys=True)}" if options else "")
        key[f"test set {i + 1} protocol"] = s.get("protocol", "standard")
    if with_epoch:
        key["epoch"] = record.get("epoch")
    return key
