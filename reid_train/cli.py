"""``reid-train``: train and evaluate mask-guided re-ID models on reid-masks caches."""
from __future__ import annotations

import click

from reid_masks.cli import Group


@click.group(cls=Group)
@click.version_option(package_name="reid-masks")
def main() -> None:
    """Train, evaluate and export MMGA / MGRAN models."""


if __name__ == "__main__":
    main()
