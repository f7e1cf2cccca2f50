"""``reid-train``: train and evaluate mask-guided re-ID models on reid-masks caches."""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
from pathlib import Path

import click

from reid_masks.cli import HELP_SETTINGS, Group, add_command
from reid_masks.errors import UserError
from reid_masks.fileio import atomic_path
from reid_masks.progress import plural

_SET_HELP = "Override a config key, e.g. --set solver.epochs=120 --set data.root=/data/market1501 (repeatable)."
#: For the commands that use a trained model: only test/data keys change what they compute.
_SET_HELP_INFERENCE = ("Override a key of the run's config, e.g. --set test.rerank=true --set test.flip=false "
                       "--set data.root=/data/market1501 (repeatable).")


class _StderrHandler(logging.StreamHandler):
    """Writes to the *current* sys.stderr (click's test runner swaps it per invocation)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _main_process() -> bool:
    """True outside torchrun and on its rank 0, the one process that writes results."""
    return int(os.environ.get("RANK", "0")) == 0


def _setup_logging(log_file: Path | None = None) -> None:
    """Progress and info lines go to stderr (and ``log_file``); stdout keeps the final results."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO if _main_process() else logging.WARNING)
    if not any(getattr(h, "_reid_train", False) for h in root.handlers):
        handler = _StderrHandler(sys.stderr)
        handler.setFormatter(fmt)
        handler._reid_train = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    if log_file is not None and _main_process():
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        fh._reid_train = True  # type: ignore[attr-defined]
        root.addHandler(fh)


def _log_to_file(message: str) -> None:
    """``message`` into the run's log.txt only (the CLI prints it on stderr itself)."""
    record = logging.LogRecord("reid_train", logging.ERROR, __file__, 0, message, None, None)
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler) and getattr(h, "_reid_train", False):
            h.handle(record)


def _close_file_logs() -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler) and getattr(h, "_reid_train", False):
            root.removeHandler(h)
            h.close()


def _percent_line(results: dict) -> str:
    return (f"rank-1 {100 * results['rank1']:.2f}%  rank-5 {100 * results['rank5']:.2f}%  "
            f"rank-10 {100 * results['rank10']:.2f}%  mAP {100 * results['mAP']:.2f}%")


@click.group(cls=Group, context_settings=HELP_SETTINGS)
@click.version_option(package_name="reid-masks")
def main() -> None:
    """Train, evaluate and export MMGA / MGRAN / FSA models."""


@main.command()
@click.option("--config", "config_name", default=None, help="A YAML file or a packaged config name (e.g. mmga_market1501, tiny_synthetic; 'reid-train configs' lists them).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--resume", default=None, is_flag=False, flag_value="", metavar="[RUN_DIR]",
              help="Continue a run from its checkpoint.pth: 'fit --resume RUN_DIR' alone (its config.yaml, then any --set), "
                   "or 'fit --config NAME ... --resume' for train.output_dir of that config.")
def fit(config_name: str | None, overrides: tuple[str, ...], resume: str | None) -> None:
    """Train a model; checkpoints, metrics.jsonl and evaluation.json go to train.output_dir."""
    from reid_masks.fileio import check_writable
    from reid_train.config import load_config
    from reid_train.engine.preemption import Stopped, continue_command, exit_status
    from reid_train.engine.trainer import CHECKPOINT_NAME, Trainer
    from reid_train.runs import absolute_paths, first_missing, load_run_config, remove_unstarted_run, run_lock

    if resume:
        if config_name:
            raise UserError(f"--resume {resume} reads {resume}/config.yaml: drop --config (change keys with --set)")
        cfg = load_run_config(resume, overrides)
    elif config_name:
        cfg = load_config(config_name, overrides)
    else:
        raise UserError("fit: pass --config NAME (a new run) or --resume RUN_DIR (continue a run)")
    cfg = absolute_paths(cfg)
    out_dir = Path(cfg.train.output_dir)
    main_rank = _main_process()
    created = first_missing(out_dir) if main_rank else None
    if main_rank:
        check_writable(out_dir, "train.output_dir", folder=True)
    with run_lock(out_dir) if main_rank else contextlib.nullcontext() as lock:  # one run per folder; rank 0 holds it
        new_log = main_rank and not (out_dir / "log.txt").exists()
        _setup_logging(out_dir / "log.txt")
        log = logging.getLogger("reid_train")
        trainer = None
        try:
            try:
                trainer = Trainer(cfg, resume=resume is not None)
                record = trainer.fit()
            except UserError as exc:  # refused before the first checkpoint: leave no run folder behind
                if trainer is not None and trainer.saved is not None:  # a full disk, a failed evaluation
                    exc = UserError(f"{exc}; continue with: {continue_command()}")
                    _log_to_file(f"error: {exc}")
                    _close_file_logs()
                    raise exc from None
                _close_file_logs()
                if main_rank:
                    remove_unstarted_run(created, out_dir, out_dir / "log.txt" if new_log else None, lock)
                raise
        except Stopped as stopped:  # SIGTERM / SIGUSR1 / Ctrl-C: checkpoint written; 128 + signal number
            if main_rank:
                log.warning("%s; continue with: %s", stopped, continue_command())
            sys.exit(stopped.exit_status)
        except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, the last checkpoint as it was
            if main_rank:
                ckpt = out_dir / CHECKPOINT_NAME
                saved = trainer.saved if trainer is not None else None
                if saved is not None or (trainer is None and ckpt.is_file()):
                    where = ("" if saved is None else f" up to iteration {saved[1]} of epoch {saved[0] + 1}" if saved[1]
                             else f" up to epoch {saved[0]}")
                    log.warning("interrupted by a second Ctrl-C before the stop was done: %s keeps the run%s; "
                                "continue with: %s", ckpt, where, continue_command())
                else:
                    _close_file_logs()
                    remove_unstarted_run(created, out_dir, out_dir / "log.txt" if new_log else None, lock)
                    log.warning("interrupted by Ctrl-C before the first checkpoint: nothing was kept; start again with: %s",
                                shlex.join(["reid-train", *sys.argv[1:]]))
            sys.exit(exit_status(signal.SIGINT))
        finally:
            _close_file_logs()
    if trainer.rank != 0:
        return
    click.echo(f"trained {cfg.model.name} for {plural(cfg.solver.epochs, 'epoch')}; checkpoint: {trainer.ckpt_path}")
    if "rank1" in record:
        click.echo(_percent_line(record))


def _load_for_inference(checkpoint: Path, overrides: tuple[str, ...]):
    """(model on its device, config, dataset, device, amp dtype, channels_last, epoch) of a checkpoint."""
    from reid_train.inference import load_model

    loaded = load_model(checkpoint, overrides=overrides)
    return (loaded.model, loaded.config, loaded.build_dataset(), loaded.device, loaded.amp_dtype,
            loaded.channels_last, loaded.epoch)


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path), help="checkpoint.pth of a fit run.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP_INFERENCE)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Results JSON [default: evaluation.json next to the checkpoint].")
def evaluate(checkpoint: Path, overrides: tuple[str, ...], out: Path | None) -> None:
    """Rank-1/5/10 and mAP of a checkpoint on its dataset's query/gallery, or on each of data.test_sets (flip-averaged features)."""
    from reid_masks.fileio import check_writable
    from reid_train.runs import lock_if_run_folder

    out = out or checkpoint.parent / "evaluation.json"
    if _main_process():
        check_writable(out)
    with lock_if_run_folder(out) if _main_process() else contextlib.nullcontext():  # not beside a running fit
        _evaluate(checkpoint, overrides, out)


def _evaluate(checkpoint: Path, overrides: tuple[str, ...], out: Path) -> None:
    from reid_masks.fileio import write_json_atomic
    from reid_train.engine.evaluator import result_line
    from reid_train.engine.test_sets import build_test_sets, evaluate_test_sets

    _setup_logging()
    from reid_train.inference import load_model

    loaded = load_model(checkpoint, overrides=overrides)
    model, cfg, device, amp, channels_last, epoch = loaded.model, loaded.config, loaded.device, loaded.amp_dtype, loaded.channels_last, loaded.epoch
    # with data.test_sets, the training set's root need not exist on this machine
    dataset = None if cfg.data.test_sets else loaded.build_dataset()
    from reid_train.engine import distributed as ddp  # under torchrun: every rank extracts a shard

    device = ddp.init_from_env(device)
    results = evaluate_test_sets(model.to(device), build_test_sets(cfg, dataset), device, amp, channels_last, log_result=False, progress=True)
    if ddp.rank() != 0:
        return
    write_json_atomic(out, {
        **results, "checkpoint": str(checkpoint), "epoch": epoch,
        "metric": cfg.test.metric, "rerank": cfg.test.rerank, "flip": cfg.test.flip,
    })
    for r in results["test_sets"]:  # each test set it is given (data.test_sets), else the training dataset
        click.echo(result_line(r, r["dataset"], cfg))
    click.echo(f"results: {out}")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path), help="checkpoint.pth of a fit run.")
@click.option("--split", type=click.Choice(["query", "gallery", "train"]), help="A split of the run's dataset (data.dataset at data.root).")
@click.option("--images", type=click.Path(path_type=Path),
              help="Instead of --split: any folder of crops (read recursively) or a list file of paths relative to its folder.")
@click.option("--mask-cache", type=click.Path(dir_okay=False, path_type=Path),
              help="With --images, for models that need masks (MGRAN): a cache holding them (reid-masks generate --dataset images).")
@click.option("--parsing-dir", type=click.Path(file_okay=False, path_type=Path),
              help="With --images, for MGRAN: make the masks on the spot from LIP parsing PNGs at the images' relative paths (.png).")
@click.option("--masks-dir", type=click.Path(file_okay=False, path_type=Path),
              help="With --images, for MGRAN: make the masks on the spot from person-mask PNGs at the images' relative paths.")
@click.option("--backend", type=click.Choice(["torchvision", "detectron2"]),
              help="With --images, for MGRAN: make the masks on the spot with this Mask R-CNN (weights from its usual cache).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .npz: features, pids, camids, paths.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP_INFERENCE)
def extract(checkpoint: Path, split: str | None, images: Path | None, mask_cache: Path | None, parsing_dir: Path | None,
            masks_dir: Path | None, backend: str | None, out: Path, overrides: tuple[str, ...]) -> None:
    """Write the L2-normalised (flip-averaged) features of one split, or of any images, to an .npz file.

    With --images the .npz keeps each image's path relative to the folder (pids -1, cameras 0).
    """
    import numpy as np

    from reid_masks.fileio import check_writable
    from reid_train.any_images import MaskSources, extract_images, images_dataset
    from reid_train.engine.evaluator import build_test_loader, extract_features
    from reid_train.runs import lock_if_run_folder

    sources = MaskSources(mask_cache, parsing_dir, masks_dir, backend)
    if (split is None) == (images is None):
        raise UserError("give --split (a split of the run's dataset) or --images DIR_OR_LIST, one of them")
    if split is not None and sources.given():
        raise UserError(f"{', '.join(sources.given())}: only with --images (a split's masks come from data.cache)")
    check_writable(out)
    with lock_if_run_folder(out):  # not into the folder of a running fit
        _setup_logging()
        if images is not None:
            dataset = images_dataset(images)  # checked before the model is loaded
            from reid_train.inference import load_model

            loaded = load_model(checkpoint, overrides=overrides)
            feats, paths, how = extract_images(loaded.model, loaded.config, dataset, loaded.device, sources, loaded.amp_dtype,
                                               loaded.channels_last)
            pids, camids = np.full(len(paths), -1, dtype=np.int64), np.zeros(len(paths), dtype=np.int64)
            what, flip = f"image features ({images}; {how})", loaded.config.test.flip
        else:
            model, cfg, dataset, device, amp, channels_last, _ = _load_for_inference(checkpoint, overrides)
            loader = build_test_loader(dataset, split, cfg, pin_memory=device.type == "cuda", region_masks=getattr(model, "region_masks", None))
            feats, pids, camids = extract_features(model, loader, device, cfg.test.flip, amp, channels_last, progress=f"{split} features")
            paths = [r.path for r in loader.dataset.records]  # train: unusable cache rows left out
            what, flip = f"{split} features", cfg.test.flip
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, features=feats.numpy(), pids=pids, camids=camids, paths=np.asarray(paths, dtype=str))
        click.echo(f"wrote {feats.shape[0]} {what} of dim {feats.shape[1]}, {'flip-averaged' if flip else 'no flip'}, to {out}")


@main.command("configs")
@click.argument("name", required=False)
def configs(name: str | None) -> None:
    """List the shipped configs, or print NAME with its _base_ chain resolved (every key, as fit uses it)."""
    import yaml

    from reid_train.config import config_header, config_to_dict, load_config, packaged_configs, resolve_config_path

    if name:
        cfg = load_config(name)
        header = config_header(resolve_config_path(name))
        if header:
            click.echo("\n".join(f"# {line}" for line in header))
        click.echo(f"# {resolve_config_path(name)} resolved (_base_ merged, defaults filled in, only the keys this model reads);\n"
                   f"# use it with 'reid-train fit --config {name} --set key=value', or copy it and pass --config FILE")
        click.echo(yaml.safe_dump(config_to_dict(cfg, read_only=True), sort_keys=False).rstrip())
        return
    rows = [("config", "model/backbone", "train set", "input", "batch", "epochs", "what it is (the file's first comment line)")]
    for stem in packaged_configs():
        c = load_config(stem)
        header = config_header(resolve_config_path(stem))
        rows.append((stem, f"{c.model.name}/{c.model.backbone}", c.data.dataset, f"{c.data.height}x{c.data.width}",
                     f"P={c.data.num_ids} K={c.data.num_instances}", plural(c.solver.epochs, "epoch"), header[0] if header else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
    click.echo("show one: reid-train configs NAME; train one: reid-train fit --config NAME --set data.root=... --set data.cache=...")


def _register_inference_commands() -> None:
    """export / visualize / curves / summarize live in their own modules (torch is imported only when they run)."""
    from reid_train.curves import curves_command
    from reid_train.export import export_command
    from reid_train.summarize import summarize_command
    from reid_train.visualize import visualize_command

    for command in (export_command, visualize_command, curves_command, summarize_command):
        add_command(main, command)


_register_inference_commands()

if __name__ == "__main__":
    main()
