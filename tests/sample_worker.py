"""genflow-sample for the distributed tests, with one injected fault: the rank named by FAIL_RANK
raises in its first draw (as a sampler error or a lost GPU would); it exits as genflow-sample does.

    RANK=1 WORLD_SIZE=2 ... FAIL_RANK=1 python tests/sample_worker.py --ckpt ... --out ...
"""

import os
import sys

from genflow import generate
from genflow.cli import sample


def broken(recipe, indices):
    raise RuntimeError(f"injected failure drawing samples {indices.start}..{indices.stop - 1}")


if __name__ == "__main__":
    if os.environ.get("RANK", "0") == os.environ.get("FAIL_RANK"):
        generate.draw = broken
    sys.exit(sample.main(sys.argv[1:]))
