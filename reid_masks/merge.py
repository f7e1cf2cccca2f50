"""``reid-masks merge``: shard caches from ``generate --shard i/n`` -> one cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from reid_masks.cache import MaskCache, Rows, write_cache
from reid_masks.errors import UserError

VOLATILE = ("command", "created")


def merge_shards(shards: list[Path], out: Path) -> Path:
    """Combine shards; refuses different provenance or dataset, overlapping or missing rows."""
    if not shards:
        raise UserError("merge: no shard files given")
    caches = [MaskCache(p) for p in shards]
    try:
        ref = caches[0]
        ref_attrs = ref.attrs
        for c in caches[1:]:
            a = c.attrs
            if a.get("dataset") != ref_attrs.get("dataset") or a.get("dataset_signature") != ref_attrs.get("dataset_signature"):
                raise UserError(f"{c.path}: shard of dataset {a.get('dataset')!r} ({a.get('dataset_signature')}), but {ref.path} is of {ref_attrs.get('dataset')!r} ({ref_attrs.get('dataset_signature')})")
            pa = {k: v for k, v in a.get("provenance", {}).items() if k not in VOLATILE}
            pr = {k: v for k, v in ref_attrs.get("provenance", {}).items() if k not in VOLATILE}
            if pa != pr:
                keys = sorted(k for k in set(pa) | set(pr) if pa.get(k) != pr.get(k))
                raise UserError(f"{c.path}: made with other options than {ref.path} (provenance differs in {', '.join(keys)})")
        splits = {}
        for split in ("train", "query", "gallery"):
            n = ref.num_rows(split)
            parts = [c.all_rows(split) for c in caches if split in c.splits]
            rows = Rows.concat(parts)
            counts = np.bincount(rows.index, minlength=n)
            if (counts > 1).any():
                dup = int(np.argmax(counts > 1))
                owners = [str(c.path) for c in caches if dup in set(c.row_index(split).tolist())]
                raise UserError(f"merge: {split} row {dup} is in several shards ({', '.join(owners)}); give each shard once")
            if (counts == 0).any():
                missing = int((counts == 0).sum())
                raise UserError(f"merge: {missing} {split} row(s) are in no shard (first: row {int(np.argmax(counts == 0))}); is a shard missing or unfinished? (shards given: {len(caches)} of {ref_attrs.get('shard', '?/?').split('/')[-1]})")
            splits[split] = (n, rows)
        attrs = {k: v for k, v in ref_attrs.items() if k not in ("schema_version", "status_names", "region_names", "cut_names", "shard")}
        attrs["shard"] = "0/1"
        attrs["merged_from"] = [str(p) for p in shards]
    finally:
        for c in caches:
            c.close()
    write_cache(out, splits, attrs)
    return out
