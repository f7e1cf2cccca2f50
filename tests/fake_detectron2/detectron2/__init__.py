"""A small, faithful fake of detectron2's API for tests (see tests/fake_detectron2/README.md)."""
__version__ = "0.6+fake"
