"""``reid-masks merge``: shard caches from ``generate --shard i/n`` -> one cache.

Only the small columns (row positions, provenance) are compared in memory; the rows are
streamed shard by shard into the new file (:mod:`reid_masks.assemble`), so memory does not
grow with the dataset.

Like ``generate``: one run per output (a lock beside it), the output checked for writing
before any work, a symlink ``--out`` written through to its target, every shard's rows
checked against their digests (:func:`reid_masks.cache.check_cache_rows`) first, and
Ctrl-C / SIGTERM end in one line (exit 130 / 143) with no temporary file left; the shards
are only read.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import numpy as np

from reid_masks.assemble import SHARDS_TO_CACHE, assemble, cache_estimate
from reid_masks.cache import SCHEMA_VERSION, MaskCache, check_cache_rows
from reid_masks.errors import UserError
from reid_masks.fileio import OutputLock, check_writable, remove_dead_temps, write_target
from reid_masks.workers import Interrupted, sigterm_as_interrupt

VOLATILE = ("command", "created")


def merge_shards(shards: list[Path], out: Path, command: str = "") -> Path:
    """Combine shards; refuses different provenance or dataset, overlapping or missing rows."""
    if not shards:
        raise UserError("merge: no shard files given")
    out = check_writable(write_target(out))
    try:
        with sigterm_as_interrupt():
            return _merge(shards, out, command)
    except KeyboardInterrupt as exc:
        signum = signal.SIGTERM if str(exc) == "SIGTERM" else signal.SIGINT
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}: {out} not written (no temporary file left); the shard "
                          f"files are untouched; rerun the same command", signum) from None


def _merge(shards: list[Path], out: Path, command: str) -> Path:
    caches = []
    try:
        for p in shards:
            caches.append(MaskCache(p))
        for c in caches:
            if c.parsing_lost():
                raise UserError(f"{c.path}: a schema-{c.schema_version} shard made with a parser keeps no parsing labels, which a "
                                f"merged cache of schema {SCHEMA_VERSION} holds; rerun its generate command (or merge with the reid-masks that made it)")
            note = check_cache_rows(c)
            if note:
                sys.stderr.write(f"warning: {note}\n")
        ref = caches[0]
        ref_attrs = ref.attrs
        for c in caches[1:]:
            a = c.attrs
            if a.get("dataset") != ref_attrs.get("dataset"):
                raise UserError(f"{c.path}: shard of dataset {a.get('dataset')!r}, but {ref.path} is of {ref_attrs.get('dataset')!r}; merge shards of one generate run")
            if a.get("dataset_signature") != ref_attrs.get("dataset_signature"):
                raise UserError(f"{c.path} and {ref.path}: shards of {a.get('dataset')!r} made from different image sets (dataset signature {a.get('dataset_signature')} vs {ref_attrs.get('dataset_signature')}); rerun the shards over the same dataset copy")
            pa = {k: v for k, v in a.get("provenance", {}).items() if k not in VOLATILE}
            pr = {k: v for k, v in ref_attrs.get("provenance", {}).items() if k not in VOLATILE}
            if pa != pr:
                keys = sorted(k for k in set(pa) | set(pr) if pa.get(k) != pr.get(k))
                raise UserError(f"{c.path}: made with other options than {ref.path} (provenance differs in {', '.join(keys)})")
        layout = {}
        for split in ref.splits:
            n = ref.num_rows(split)
            index = [c.row_index(split) for c in caches if split in c.splits]
            counts = np.bincount(np.concatenate(index) if index else np.zeros(0, np.int64), minlength=n)
            if (counts > 1).any():
                dup = int(np.argmax(counts > 1))
                owners = [str(c.path) for c in caches if split in c.splits and dup in set(c.row_index(split).tolist())]
                raise UserError(f"merge: {split} row {dup} is in several shards ({', '.join(owners)}); give each shard once")
            if (counts == 0).any():
                missing = int((counts == 0).sum())
                raise UserError(f"merge: {missing} {split} row(s) are in no shard (first: row {int(np.argmax(counts == 0))}); is a shard missing or unfinished? (shards given: {len(caches)} of {ref_attrs.get('shard', '?/?').split('/')[-1]})")
            layout[split] = (n, None)
        attrs = {k: v for k, v in ref_attrs.items() if k not in ("schema_version", "status_names", "region_names", "cut_names", "shard")}
        attrs["shard"] = "0/1"
        attrs["merged_from"] = [str(p) for p in shards]
        person_hw = ref.person_hw
    finally:
        for c in caches:
            c.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(out, command):
        remove_dead_temps(out.parent, out.name)
        size = sum(Path(p).stat().st_size for p in shards)
        assemble(out, layout, attrs, person_hw, [{"kind": "cache", "path": str(p)} for p in shards],
                 estimate_bytes=cache_estimate(size, SHARDS_TO_CACHE), kept_note="the shard files are untouched")
    return out
