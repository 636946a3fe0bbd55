"""The semantic segmentation example (see README.md)."""
