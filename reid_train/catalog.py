"""The model zoo's names, importable without torch.

``reid_train.config`` checks ``model.name``, ``model.backbone`` and the keys of one model
family while it reads a config, and every command reads its config before it imports
torch (several seconds): a typo is refused at once, not after the import. So the names
live here, in a module that imports nothing; ``reid_train.models`` builds exactly these
(``tests/test_results_and_errors.py`` checks that the two agree; a new model adds its
name here and its builder there).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MMGA_FAMILY", "MGRAN_FAMILY", "FSA_FAMILY", "FSASpec", "FSA_VARIANTS", "MODEL_NAMES", "BACKBONES"]

#: MMGA and its ablations (reid_train/models/mmga.py ``VARIANTS``): one class, images only at inference.
MMGA_FAMILY = ("baseline", "baseline_att", "wmga", "dmga", "mmga")
#: MGRAN and its ablations (reid_train/models/mgran.py ``MGRAN_VARIANTS``): region masks at inference too.
MGRAN_FAMILY = ("mgran", "mgran_gf", "mgran_pl")


@dataclass(frozen=True)
class FSASpec:
    """What an FSA variant switches on, and which masks its training step needs."""

    mhsa: bool
    eca: bool
    fusion: bool
    masks: tuple[str, ...] = ()  # ("whole",): the self-attention map is trained toward the whole-body mask


#: The Fusion Self-Attention network and its ablations (reid_train/models/fsa.py); the config loader reads
#: ``mhsa`` and ``masks`` to know which keys a variant reads.
FSA_VARIANTS: dict[str, FSASpec] = {
    "fsa_baseline": FSASpec(mhsa=False, eca=False, fusion=False),
    "fsa_sam": FSASpec(mhsa=True, eca=True, fusion=False),
    "fsa": FSASpec(mhsa=True, eca=True, fusion=True),
    "fsa_mask": FSASpec(mhsa=True, eca=True, fusion=True, masks=("whole",)),
}
FSA_FAMILY = tuple(FSA_VARIANTS)
MODEL_NAMES = MMGA_FAMILY + MGRAN_FAMILY + FSA_FAMILY
#: ``model.backbone`` values (reid_train/models/backbone.py ``ARCH_CHANNELS``).
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet50_ibn_a")
