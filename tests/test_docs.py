"""docs/extend.md runs as written: every ``python`` block, in order, in one namespace (the blocks
assert their own results: the new path samples the oracle's mean and gives its log-density, the
new net trains, the new sampler matches DDIM)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "extend.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_every_example_of_the_extend_page_runs():
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 2
    namespace: dict = {"__name__": "extend_md"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
