"""Data sets: embedded ones (scikit-learn's digits, 2-D toys) and local image files."""

from genflow.data.digits import digits

__all__ = ["digits"]
