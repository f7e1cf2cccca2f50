"""``reid-masks``: dataset tools and the offline mask stage."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from reid_masks.errors import UserError


class Group(click.Group):
    """A click group that prints a UserError as one line (no traceback) and exits 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=Group)
@click.version_option(package_name="reid-masks")
def main() -> None:
    """Turn a re-ID dataset into an HDF5 cache of body masks, regions and keypoints."""


@main.command()
@click.option("--layout", required=True, type=click.Choice(["market1501", "dukemtmc", "cuhk03", "msmt17"]), help="Real dataset layout to imitate.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Dataset root to write.")
@click.option("--ids", default=8, show_default=True, type=click.IntRange(2, 1000), help="Identities in train and in test.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256))
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
def synth(layout: str, out: Path, ids: int, seed: int, workers: int, overwrite: bool) -> None:
    """Write a small synthetic dataset in a real layout, with LIP parsing PNGs under OUT/parsing/."""
    from reid_masks.synth.layouts import synthesize

    manifest = synthesize(layout, out, ids=ids, seed=seed, workers=workers, overwrite=overwrite)
    if "splits" in manifest and manifest["layout"] != "cuhk03":
        parts = [f"{s} {v['images']} imgs/{v['ids']} ids" for s, v in manifest["splits"].items()]
    else:
        parts = [f"{var} {s} {v['images']}" for var, spec in manifest["variants"].items() for s, v in spec["splits"].items()]
    click.echo(f"wrote synthetic {layout} at {out}: {', '.join(parts)}")
    click.echo(f"manifest: {out / 'manifest.json'}; parsing PNGs: {out / 'parsing'}")


@main.command()
@click.option("--dataset", required=True, help="market1501, dukemtmc, cuhk03 or msmt17.")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Dataset root folder.")
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path), help="Facts to check against instead of the packaged ones (e.g. a synthetic copy's manifest.json).")
@click.option("--check-images", is_flag=True, help="Also decode every image (finds truncated files).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256))
def validate(dataset: str, root: Path, manifest_path: Path | None, check_images: bool, workers: int) -> None:
    """Check a dataset copy against its manifest; exit 1 and list every difference."""
    from reid_masks.datasets import load_manifest, read_manifest_file
    from reid_masks.validate import validate_dataset

    manifest = read_manifest_file(manifest_path) if manifest_path else load_manifest(dataset)
    problems = validate_dataset(dataset, root, manifest, check_images=check_images, workers=workers)
    source = manifest_path or f"data_manifests/{dataset}.json"
    if problems:
        click.echo(f"{root}: {len(problems)} difference(s) from {source}:", err=True)
        for line in problems:
            click.echo(f"  {line}", err=True)
        sys.exit(1)
    click.echo(f"{root}: matches {source}")


if __name__ == "__main__":
    main()
