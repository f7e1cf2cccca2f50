"""``reid-masks``: dataset tools and the offline mask stage."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from reid_masks.cliopts import PERSON_SIDE, SEED, FiniteFloatRange, check_chunk_memory, dataset_flags, dataset_options_from_cli, parse_hw
from reid_masks.errors import UserError


#: ``-h`` as well as ``--help`` on every command (click passes it down to subcommands).
HELP_SETTINGS = {"help_option_names": ["-h", "--help"]}


class Group(click.Group):
    """A click group that prints a UserError, and a subcommand's bad option (click's usage
    error: a value out of range, a missing option), as one line (no traceback) and exits 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(getattr(exc, "exit_code", 2))
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            click.echo(f"error: {exc.format_message().rstrip('.')} (see '{where} --help')", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=Group, context_settings=HELP_SETTINGS)
@click.version_option(package_name="reid-masks")
def main() -> None:
    """Turn a re-ID dataset into an HDF5 cache of body masks, regions and keypoints."""


@main.command()
@click.option("--layout", required=True, type=click.Choice(["market1501", "dukemtmc", "cuhk03", "msmt17", "occluded_duke", "occluded_reid", "partial_reid", "partial_ilids"]), help="Real dataset layout to imitate.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Dataset root to write.")
@click.option("--ids", default=8, show_default=True, type=click.IntRange(2, 1000), help="Identities in train and in test.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256))
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--occlusion-rate", type=FiniteFloatRange(0, 1), help="Share of images with an occluder (pole, bag, obstacle, car, person); default: the layout's rule.")
@click.option("--truth-keypoints", is_flag=True, help="Also write OUT/keypoints_coco.json: the targets' true keypoints as a COCO keypoints file (for generate --keypoints).")
def synth(layout: str, out: Path, ids: int, seed: int, workers: int, overwrite: bool, occlusion_rate: float | None, truth_keypoints: bool) -> None:
    """Write a small synthetic dataset in a real layout, with LIP parsing PNGs under OUT/parsing/."""
    from reid_masks.synth.layouts import TRUTH_KEYPOINTS, synthesize

    manifest = synthesize(layout, out, ids=ids, seed=seed, workers=workers, overwrite=overwrite, occlusion_rate=occlusion_rate, truth_keypoints=truth_keypoints)
    if "splits" in manifest and manifest["layout"] != "cuhk03":
        parts = [f"{s} {v['images']} imgs/{v['ids']} ids" for s, v in manifest["splits"].items()]
    else:
        parts = [f"{var} {s} {v['images']}" for var, spec in manifest["variants"].items() for s, v in spec["splits"].items()]
    click.echo(f"wrote synthetic {layout} at {out}: {', '.join(parts)}")
    click.echo(f"manifest: {out / 'manifest.json'}; parsing PNGs: {out / 'parsing'}" + (f"; true keypoints: {out / TRUTH_KEYPOINTS}" if truth_keypoints else ""))


@main.command()
@dataset_flags()
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Dataset root folder.")
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path), help="Facts to check against instead of the packaged ones (e.g. a synthetic copy's manifest.json).")
@click.option("--check-images", is_flag=True, help="Also decode every image (finds truncated files).")
@click.option("--counts/--no-counts", default=True, show_default=True,
              help="Compare the images / ids per split with the manifest; --no-counts checks a subset or re-split copy "
                   "(layout, names, readable images) and only prints what it found.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256))
def validate(dataset: str, dataset_option: tuple[str, ...], root: Path, manifest_path: Path | None, check_images: bool,
             counts: bool, workers: int) -> None:
    """Check a dataset copy against its manifest; exit 1 and list every difference.

    Prints the images / ids / cameras read per split either way. A dataset without a manifest
    (folder) is read with its adapter and options; every listed image must be a readable file
    (dangling symlinks and missing files are listed).
    """
    from reid_masks.datasets import DATASET_NAMES, read_manifest_file, resolve_dataset
    from reid_masks.validate import check_dataset

    options = dataset_options_from_cli(dataset, dataset_option)
    manifest = read_manifest_file(manifest_path) if manifest_path else None
    report = check_dataset(dataset, root, manifest, check_images=check_images, workers=workers, options=options, counts=counts)
    for line in report.summary_lines():
        click.echo(f"  {line}")
    base = resolve_dataset(dataset, options)[0]
    source = manifest_path or f"data_manifests/{base}.json"
    has_facts = manifest is not None or base in DATASET_NAMES  # else: only what its adapter reads
    fine = f"the layout and file names are as {base} expects and every listed image is readable" + (" and decodes" if check_images else "")
    if report.problems:
        head = (f"{len(report.problems)} difference(s) from {source}" if has_facts and counts else
                f"{len(report.problems)} problem(s) reading it as {base}")
        click.echo(f"{root}: {head}:", err=True)
        for line in report.problems:
            click.echo(f"  {line}", err=True)
        if report.only_counts_differ:
            click.echo(f"{root}: {fine}; only the counts differ (a subset or a re-split copy? "
                       f"--no-counts checks everything but the counts)", err=True)
        sys.exit(1)
    if has_facts and counts:
        click.echo(f"{root}: matches {source}")
    elif has_facts:
        click.echo(f"{root}: {fine} (counts not compared: --no-counts)")
    else:
        click.echo(f"{root}: reads as {base}; every listed image is readable" + (" and decodes" if check_images else ""))


def command_line(ctx: click.Context) -> str:
    """The command as run, rebuilt from the parsed options (works under CliRunner too)."""
    opts = [
        f"--{k.replace('_', '-')}" + ("" if v is True else f"={shlex.quote(str(one))}")
        for k, v in ctx.params.items() if v not in (None, False, ())
        for one in (v if isinstance(v, tuple) else (v,))
    ]
    return " ".join(["reid-masks", ctx.info_name or "generate"] + opts)


@main.command()
@dataset_flags()
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Dataset root folder.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Cache file to write (.h5).")
@click.option("--parsing-dir", type=click.Path(file_okay=False, path_type=Path), help="Precomputed LIP parsing PNGs: <dir>/<image's relative path with .png for its extension>, e.g. DIR/bounding_box_train/0002_c1s1_000451_03.png.")
@click.option("--parser", type=click.Choice(["schp", "precomputed", "none"]), help="Human parser: SCHP network, the --parsing-dir PNGs, or none (keypoint split). Default: precomputed with --parsing-dir, else none.")
@click.option("--parser-weights", type=click.Path(dir_okay=False, path_type=Path), help="SCHP LIP checkpoint (default: torchvision's hub cache, exp-schp-201908261155-lip.pth).")
@click.option("--parser-flip/--no-parser-flip", default=False, show_default=True, help="SCHP flip test: average with the mirrored image's left/right-swapped logits (2x the parser's compute; off as in SCHP's extractor).")
@click.option("--masks-dir", type=click.Path(file_okay=False, path_type=Path), help="Precomputed person-mask PNGs: <dir>/<image's relative path with .png for its extension>.")
@click.option("--seg-siblings", is_flag=True, help="Person-mask PNGs in MGCAM-style <split>_seg/ folders beside each split folder.")
@click.option("--keypoints", "keypoints", type=click.Path(path_type=Path), help="Keypoints to import instead of running a keypoint model: a COCO keypoints file, a COCO results list, or a folder of OpenPifPaf <image path>.predictions.json files (README: Importing keypoints). Needs a mask source.")
@click.option("--keypoints-images", type=click.Path(dir_okay=False, path_type=Path), help="A COCO file whose images (id, file_name) map the image ids of a --keypoints results list.")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(["auto", "torchvision", "detectron2", "none"]), help="Instance segmentation + keypoints; auto = none with a precomputed source, else torchvision.")
@click.option("--mask-weights", type=click.Path(dir_okay=False, path_type=Path), help="Mask R-CNN weights file (default: the zoo file in torchvision's cache, or in detectron2's cache with --backend detectron2).")
@click.option("--keypoint-weights", type=click.Path(dir_okay=False, path_type=Path), help="Keypoint R-CNN weights file (default: the zoo file in torchvision's cache, or in detectron2's cache with --backend detectron2).")
@click.option("--random-weights", is_flag=True, help="TESTS ONLY: random detector/parser weights (recorded in the provenance).")
@click.option("--min-size", type=click.IntRange(32, 2000), help="Detector input short side. Default: torchvision 256 (long side <= 768); detectron2 the config's INPUT.MIN_SIZE_TEST (800, long side <= 1333 for the zoo configs). README: speed/quality trade-off; inspect shows the size used.")
@click.option("--score-threshold", type=FiniteFloatRange(0, 1), help="Detector person score threshold.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1, 4096))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0, 256), help="Decoding worker processes.")
@click.option("--shard", default="0/1", show_default=True, help="i/n: process shard i of n (writes <stem>.shard<i>of<n>.h5 for merge).")
@click.option("--update", is_flag=True, help="Recompute only rows whose image changed, was added or removed.")
@click.option("--variant", type=click.Choice(["labeled", "detected"]), help="CUHK03 variant (shortcut for --dataset-option variant=...).")
@click.option("--person-size", default="256x128", show_default=True, help=f"HxW of the stored pedestrian mask and regions (each side {PERSON_SIDE[0]} to {PERSON_SIDE[1]}).")
@click.option("--chunk-rows", default=256, show_default=True, type=click.IntRange(1, 100000), help="Rows per saved chunk: the unit of resume and of sharding.")
@click.option("--strict", is_flag=True, help="Exit 1 (after writing the cache) when any image was unreadable.")
def generate(dataset: str, dataset_option: tuple[str, ...], root: Path, out: Path, parsing_dir: Path | None, parser: str | None, parser_weights: Path | None, parser_flip: bool, masks_dir: Path | None, seg_siblings: bool,
             keypoints: Path | None, keypoints_images: Path | None, backend: str,
             mask_weights: Path | None, keypoint_weights: Path | None, random_weights: bool, min_size: int | None, score_threshold: float | None,
             device: str, batch_size: int, workers: int, shard: str, update: bool, variant: str | None, person_size: str, chunk_rows: int, strict: bool) -> None:
    """Run the mask stage over train, query and gallery and write the HDF5 cache."""
    from reid_masks.generate import GenerateConfig, generate as run_generate, parse_shard

    backend_options: dict = {"device": device}
    for key, value in (("mask_weights", mask_weights), ("keypoint_weights", keypoint_weights), ("min_size", min_size), ("score_threshold", score_threshold)):
        if value is not None:
            backend_options[key] = str(value) if isinstance(value, Path) else value
    parser_options: dict = {"device": device, "batch_size": batch_size, "flip": parser_flip}
    if parser_weights is not None:
        parser_options["weights"] = str(parser_weights)
    if random_weights:
        backend_options["random_weights"] = True
        parser_options["random_weights"] = True
    person_hw = parse_hw(person_size, "--person-size", *PERSON_SIDE)
    check_chunk_memory(chunk_rows, person_hw)
    cfg = GenerateConfig(
        dataset=dataset, root=root, out=out, dataset_options=dataset_options_from_cli(dataset, dataset_option, variant),
        parsing_dir=parsing_dir, masks_dir=masks_dir, seg_siblings=seg_siblings, keypoints=keypoints, keypoints_images=keypoints_images, backend=backend,
        backend_options=backend_options, parser=parser, parser_options=parser_options, batch_size=batch_size, workers=workers, shard=parse_shard(shard),
        update=update, person_size=person_hw, chunk_rows=chunk_rows, command=command_line(click.get_current_context()),
    )
    result = run_generate(cfg)
    if result.written:
        counts = ", ".join(f"{n} {s}" for s, n in result.status_counts.items())
        click.echo(f"wrote {result.path} ({counts})")
    for line in result.summary_lines():
        click.echo(f"warning: {line}", err=True)
    if strict and result.status_counts.get("unreadable", 0):
        click.echo(f"error: --strict: {result.status_counts['unreadable']} unreadable image(s); the cache {result.path} was kept", err=True)
        sys.exit(1)


@main.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Merged cache to write.")
def merge(shards: tuple[Path, ...], out: Path) -> None:
    """Merge the shard caches of one generate run into one cache."""
    from reid_masks.merge import merge_shards

    merge_shards(list(shards), out, command=command_line(click.get_current_context()))
    click.echo(f"merged {len(shards)} shard(s) into {out}")


def add_command(group: click.Group, command: click.Command) -> None:
    """Register a command defined in its own module, with ``-h`` in its own settings (click caches a
    command's help option at its first use, which may be under another group, e.g. in tests)."""
    command.context_settings = {**HELP_SETTINGS, **command.context_settings}
    group.add_command(command)


def _register() -> None:
    from reid_masks.export import export_command
    from reid_masks.inspect import inspect_command
    from reid_masks.preview import preview_command
    from reid_masks.slurm import status_command, submit_command

    for command in (inspect_command, preview_command, submit_command, status_command, export_command):
        add_command(main, command)


_register()

if __name__ == "__main__":
    main()
