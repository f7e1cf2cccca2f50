"""Miniature reproduction of the MMGA ablation on a synthetic Market-1501 copy (CPU, minutes).

It runs the user-facing commands end to end, exactly as a user would on the real set:

1. ``reid-masks synth --layout market1501 --ids N``      synthetic set in the real layout;
2. ``reid-masks generate --parsing-dir``                  the HDF5 mask cache;
3. for each model (default ``baseline``, ``wmga``, ``mmga``), with the same seed, epochs
   and solver: ``reid-train fit --config tiny_synthetic --set model.name=... --set ...``
   (resnet18 from random init, small images), then ``reid-train evaluate --checkpoint``;
4. a table of rank-1 / rank-5 / mAP per model, next to the chance level of this
   query/gallery split (random distances, averaged over many draws).

**This checks the wiring, not accuracy**: synthetic pedestrians, random init, a few
epochs. The figures only show that every variant trains (losses fall, scores well above
chance) and that a checkpoint evaluated by ``reid-train evaluate`` scores exactly what
``fit`` scored at its last epoch. The paper's ranking of the ablations is not expected to
show at this scale.

Settings beyond ``tiny_synthetic`` (recorded in the output): P=8 x K=4 (32-image batches,
the triplet loss needs several images per identity), 20 epochs, lr step at epoch 15,
``num_workers=0`` (a tiny epoch is 2 batches: spawning workers every epoch costs more than
it saves) and ``OMP_NUM_THREADS=1``: on a 2-core machine that other jobs share, one torch
thread ran ~2x faster than two (threads spin waiting for each other on busy cores); pass
``--threads 2`` on an idle machine.

Usage:  python benchmarks/miniature.py [--work runs/miniature] [--epochs 20] [--models baseline,wmga,mmga]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MARKER = ".reid_miniature"


def tool(name: str, module: str) -> list[str]:
    """The console script next to this interpreter (the installed command), else ``python -m module``."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.is_file() else [sys.executable, "-m", module]


def run(cmd: list[str], env: dict[str, str], log: Path | None = None) -> tuple[float, str]:
    """Run ``cmd``, echoing it; returns (seconds, stdout). stderr (progress logs) goes to ``log``."""
    shown = " ".join(shlex.quote(c) for c in cmd)
    print(f"$ {shown}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") if log else open(os.devnull, "w") as err:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    seconds = time.perf_counter() - t0
    if proc.stdout.strip():
        print("  " + proc.stdout.strip().replace("\n", "\n  "), flush=True)
    if proc.returncode != 0:
        where = f"; see {log}" if log else ""
        tail = log.read_text().strip().splitlines()[-5:] if log and log.is_file() else []
        raise SystemExit(f"command failed with exit code {proc.returncode}{where}\n" + "\n".join(tail))
    return seconds, proc.stdout


def chance_level(data: Path, draws: int, seed: int = 0) -> dict[str, float]:
    """Mean rank-1 / rank-5 / mAP of random rankings of this split (same protocol as the evaluator)."""
    from reid_masks.datasets import build_dataset
    from reid_train.evaluation import evaluate_rank

    ds = build_dataset("market1501", data)
    q_pids = np.asarray([r.pid for r in ds.query])
    q_cams = np.asarray([r.camid for r in ds.query])
    g_pids = np.asarray([r.pid for r in ds.gallery])
    g_cams = np.asarray([r.camid for r in ds.gallery])
    rng = np.random.default_rng(seed)
    max_rank = max(1, min(50, len(g_pids)))
    r1, r5, m = [], [], []
    for _ in range(draws):
        dist = rng.random((len(q_pids), len(g_pids)), dtype=np.float32)
        cmc, m_ap = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank)
        r1.append(cmc[0])
        r5.append(cmc[min(5, len(cmc)) - 1])
        m.append(m_ap)
    return {"rank1": float(np.mean(r1)), "rank5": float(np.mean(r5)), "mAP": float(np.mean(m))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=REPO / "runs" / "miniature",
                   help="output folder (data, cache, runs); replaced if it holds an earlier miniature run")
    p.add_argument("--ids", type=int, default=16, help="identities per split of the synthetic set")
    p.add_argument("--models", default="baseline,wmga,mmga")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="train.seed, the same for every model")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--num-ids", type=int, default=8, help="P identities per batch")
    p.add_argument("--num-instances", type=int, default=4, help="K images per identity")
    p.add_argument("--backbone-lr", default="0.0025")
    p.add_argument("--lr", default="0.005")
    p.add_argument("--step-size", type=int, default=15)
    p.add_argument("--workers", type=int, default=0, help="data.num_workers")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training processes")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="extra reid-train --set override for every model (repeatable)")
    p.add_argument("--chance-draws", type=int, default=200)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()

    work: Path = args.work
    if work.exists() and any(work.iterdir()):
        if not (work / MARKER).is_file():
            p.error(f"{work} exists and is not a miniature run folder; pick another --work")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("written by benchmarks/miniature.py\n")
    data, cache = work / "market1501", work / "market1501.h5"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    masks_cli, train_cli = tool("reid-masks", "reid_masks.cli"), tool("reid-train", "reid_train.cli")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    start = time.perf_counter()

    print("== 1. synthetic Market-1501 copy", flush=True)
    run(masks_cli + ["synth", "--layout", "market1501", "--out", str(data), "--ids", str(args.ids),
                     "--seed", str(args.seed), "--overwrite"], env)
    print("== 2. mask cache from the parsing PNGs", flush=True)
    run(masks_cli + ["generate", "--dataset", "market1501", "--root", str(data), "--parsing-dir",
                     str(data / "parsing"), "--out", str(cache), "--workers", "2"], env, work / "generate.log")

    common = [
        f"data.root={data}", f"data.cache={cache}",
        f"data.height={args.height}", f"data.width={args.width}",
        f"data.num_ids={args.num_ids}", f"data.num_instances={args.num_instances}",
        f"data.num_workers={args.workers}",
        f"solver.epochs={args.epochs}", f"solver.backbone_lr={args.backbone_lr}", f"solver.lr={args.lr}",
        f"solver.step_size={args.step_size}",
        f"train.seed={args.seed}", "train.tensorboard=false", "train.log_period=50",
    ] + list(args.extra)

    rows: list[dict[str, Any]] = []
    for i, name in enumerate(models):
        print(f"== {3 + i}. {name}: train (tiny_synthetic) and evaluate", flush=True)
        out = work / f"run_{name}"
        sets = [f"model.name={name}", f"train.output_dir={out}"] + common
        fit_cmd = train_cli + ["fit", "--config", "tiny_synthetic"] + [a for s in sets for a in ("--set", s)]
        fit_s, _ = run(fit_cmd, env, work / f"fit_{name}.log")
        fit_eval = json.loads((out / "evaluations.jsonl").read_text().splitlines()[-1])
        metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        eval_json = out / "evaluate.jsonl"  # appended to: a rerun of the benchmark keeps both lines
        eval_s, _ = run(train_cli + ["evaluate", "--checkpoint", str(out / "checkpoint.pth"), "--out", str(eval_json)],
                        env, work / f"evaluate_{name}.log")
        ev = json.loads(eval_json.read_text().splitlines()[-1])
        same = all(abs(ev[k] - fit_eval[k]) < 1e-9 for k in ("rank1", "rank5", "rank10", "mAP"))
        rows.append({
            "model": name, "rank1": ev["rank1"], "rank5": ev["rank5"], "rank10": ev["rank10"], "mAP": ev["mAP"],
            "num_query": ev["num_query"], "num_gallery": ev["num_gallery"],
            "loss_first": metrics[0]["total"], "loss_last": metrics[-1]["total"],
            "fit_equals_evaluate": same, "fit_s": fit_s, "evaluate_s": eval_s,
        })

    print("== chance level of this split", flush=True)
    chance = chance_level(data, args.chance_draws, args.seed)
    total = time.perf_counter() - start

    q, g = rows[0]["num_query"], rows[0]["num_gallery"]
    print(f"\nminiature reproduction: synthetic market1501 ({args.ids} ids; {q} query, {g} gallery), "
          f"resnet18 random init, {args.height}x{args.width}, {args.epochs} epochs, seed {args.seed}, "
          f"P={args.num_ids} K={args.num_instances}, lr {args.backbone_lr}/{args.lr} step {args.step_size}, "
          f"OMP_NUM_THREADS={args.threads}")
    print("| model | rank-1 % | rank-5 % | mAP % | loss epoch 1 -> last | fit == evaluate | fit s | evaluate s |")
    print("|---|---:|---:|---:|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {100 * r['rank1']:.1f} | {100 * r['rank5']:.1f} | {100 * r['mAP']:.1f} | "
              f"{r['loss_first']:.2f} -> {r['loss_last']:.2f} | {'yes' if r['fit_equals_evaluate'] else 'NO'} | "
              f"{r['fit_s']:.0f} | {r['evaluate_s']:.0f} |")
    print(f"| chance (random ranking, {args.chance_draws} draws) | {100 * chance['rank1']:.1f} | "
          f"{100 * chance['rank5']:.1f} | {100 * chance['mAP']:.1f} | | | | |")
    print(f"total {total:.0f} s. This checks the wiring (every variant trains, checkpoints evaluate "
          f"identically), not accuracy: synthetic data, random init, few epochs.")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                         "chance": chance, "total_s": total}, indent=2))
    bad = [r["model"] for r in rows if not r["fit_equals_evaluate"]]
    if bad:
        raise SystemExit(f"fit's final evaluation and 'reid-train evaluate' differ for: {', '.join(bad)}")


if __name__ == "__main__":
    main()
