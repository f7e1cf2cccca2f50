"""reid-masks: the offline stage that turns a re-ID dataset into an HDF5 cache of body masks."""

__version__ = "0.1.0"
