"""``reid-train``: train and evaluate mask-guided re-ID models on reid-masks caches."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from reid_masks.cli import Group
from reid_masks.fileio import atomic_path

_SET_HELP = "Override a config key, e.g. --set solver.epochs=120 --set data.root=/data/market1501 (repeatable)."


class _StderrHandler(logging.StreamHandler):
    """Writes to the *current* sys.stderr (click's test runner swaps it per invocation)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging(log_file: Path | None = None) -> None:
    """Progress and info lines go to stderr (and ``log_file``); stdout keeps the final results."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
    if not any(getattr(h, "_reid_train", False) for h in root.handlers):
        handler = _StderrHandler(sys.stderr)
        handler.setFormatter(fmt)
        handler._reid_train = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    if log_file is not None and int(os.environ.get("RANK", "0")) == 0:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        fh._reid_train = True  # type: ignore[attr-defined]
        root.addHandler(fh)


def _close_file_logs() -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler) and getattr(h, "_reid_train", False):
            root.removeHandler(h)
            h.close()


def _percent_line(results: dict) -> str:
    return (f"rank-1 {100 * results['rank1']:.2f}%  rank-5 {100 * results['rank5']:.2f}%  "
            f"rank-10 {100 * results['rank10']:.2f}%  mAP {100 * results['mAP']:.2f}%")


@click.group(cls=Group)
@click.version_option(package_name="reid-masks")
def main() -> None:
    """Train, evaluate and export MMGA / MGRAN models."""


@main.command()
@click.option("--config", "config_name", required=True, help="A YAML file or a packaged config name (e.g. mmga_market1501, tiny_synthetic).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--resume", is_flag=True, help="Continue the run in train.output_dir from its checkpoint.pth.")
def fit(config_name: str, overrides: tuple[str, ...], resume: bool) -> None:
    """Train a model; checkpoints, metrics.jsonl and evaluation.json go to train.output_dir."""
    from reid_train.config import load_config
    from reid_train.engine.preemption import Stopped, continue_command
    from reid_train.engine.trainer import Trainer

    cfg = load_config(config_name, overrides)
    _setup_logging(Path(cfg.train.output_dir) / "log.txt")
    try:
        trainer = Trainer(cfg, resume=resume)
        record = trainer.fit()
    except Stopped as stopped:  # SIGTERM / SIGUSR1 / Ctrl-C: checkpoint written; 128 + signal number
        if int(os.environ.get("RANK", "0")) == 0:
            logging.getLogger("reid_train").warning("%s; continue with: %s", stopped, continue_command())
        sys.exit(stopped.exit_status)
    finally:
        _close_file_logs()
    if trainer.rank != 0:
        return
    click.echo(f"trained {cfg.model.name} for {cfg.solver.epochs} epochs; checkpoint: {trainer.ckpt_path}")
    if "rank1" in record:
        click.echo(_percent_line(record))


def _load_for_inference(checkpoint: Path, overrides: tuple[str, ...]):
    """(model on its device, config, dataset, device, amp dtype, channels_last) of a checkpoint."""
    import torch

    from reid_masks.datasets import build_dataset
    from reid_train.config import apply_overrides, config_from_dict
    from reid_train.engine.trainer import load_checkpoint, model_from_checkpoint, resolve_device

    device_hint = "cpu"
    ckpt = load_checkpoint(checkpoint, map_location=device_hint)
    cfg = apply_overrides(config_from_dict(ckpt["config"], f"{checkpoint} config"), overrides)
    device = resolve_device(cfg.train.device)
    model, cfg = model_from_checkpoint(ckpt, cfg)
    cuda = device.type == "cuda"
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp) if cuda else None
    channels_last = cfg.train.channels_last and cuda
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    dataset = build_dataset(cfg.data.dataset, cfg.data.root, **cfg.data.options)
    return model, cfg, dataset, device, amp, channels_last, int(ckpt["epoch"])


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path), help="checkpoint.pth of a fit run.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP + " E.g. test.rerank=true, data.root=...")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Results JSON [default: evaluation.json next to the checkpoint].")
def evaluate(checkpoint: Path, overrides: tuple[str, ...], out: Path | None) -> None:
    """Rank-1/5/10 and mAP of a checkpoint on its dataset's query/gallery (flip-averaged features)."""
    from reid_masks.fileio import write_json_atomic
    from reid_train.engine.evaluator import evaluate_model

    _setup_logging()
    model, cfg, dataset, device, amp, channels_last, epoch = _load_for_inference(checkpoint, overrides)
    from reid_train.engine import distributed as ddp  # under torchrun: every rank extracts a shard

    device = ddp.init_from_env(device)
    results = evaluate_model(model.to(device), dataset, cfg, device, amp, channels_last)
    if ddp.rank() != 0:
        return
    out = out or checkpoint.parent / "evaluation.json"
    write_json_atomic(out, {
        **results, "dataset": dataset.name, "checkpoint": str(checkpoint), "epoch": epoch,
        "metric": cfg.test.metric, "rerank": cfg.test.rerank, "flip": cfg.test.flip,
    })
    click.echo(f"{dataset.name} ({results['num_query']} query, {results['num_gallery']} gallery): {_percent_line(results)}")
    click.echo(f"results: {out}")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path), help="checkpoint.pth of a fit run.")
@click.option("--split", required=True, type=click.Choice(["query", "gallery", "train"]))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .npz: features, pids, camids, paths.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
def extract(checkpoint: Path, split: str, out: Path, overrides: tuple[str, ...]) -> None:
    """Write the L2-normalised (flip-averaged) features of one split to an .npz file."""
    import numpy as np

    from reid_train.engine.evaluator import build_test_loader, extract_features

    _setup_logging()
    model, cfg, dataset, device, amp, channels_last, _ = _load_for_inference(checkpoint, overrides)
    loader = build_test_loader(dataset, split, cfg, pin_memory=device.type == "cuda", region_masks=getattr(model, "region_masks", None))
    feats, pids, camids = extract_features(model, loader, device, cfg.test.flip, amp, channels_last)
    paths = np.asarray([r.path for r in loader.dataset.records], dtype=str)  # train: unusable cache rows left out
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, features=feats.numpy(), pids=pids, camids=camids, paths=paths)
    click.echo(f"wrote {feats.shape[0]} {split} features of dim {feats.shape[1]} to {out}")


def _register_inference_commands() -> None:
    """export / visualize / curves live in their own modules (torch is imported only when they run)."""
    from reid_train.curves import curves_command
    from reid_train.export import export_command
    from reid_train.visualize import visualize_command

    for command in (export_command, visualize_command, curves_command):
        main.add_command(command)


_register_inference_commands()

if __name__ == "__main__":
    main()
