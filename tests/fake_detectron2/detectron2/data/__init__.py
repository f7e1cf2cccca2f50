"""detectron2.data (only ``transforms`` is faked)."""
from . import transforms  # noqa: F401
