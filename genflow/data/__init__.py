"""Data sets: embedded ones (scikit-learn's digits, 2-D toys), torchvision's and local image files.

    from genflow.data import build
    data = build({"name": "toy2d", "kind": "moons"})   # Data(train, test, shape, num_classes, flip)
"""

from genflow.data.base import Data
from genflow.data.catalog import DATASETS, build
from genflow.data.digits import digits
from genflow.data.render import render_density, render_points
from genflow.data.toy2d import TOYS, toy_sample

__all__ = ["DATASETS", "TOYS", "Data", "build", "digits", "render_density", "render_points", "toy_sample"]
