"""docs/extend.md runs as written: every ``python`` block, in order, in one namespace (the blocks
assert their own results: the new path samples the oracle's mean and gives its log-density, the
new net trains, the new sampler matches DDIM)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "extend.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_every_example_of_the_extend_page_runs():
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 3
    module = types.ModuleType("extend_md")  # a real module: dataclasses look their class's module up
    sys.modules[module.__name__] = module
    try:
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), module.__dict__)  # noqa: S102 - our own documentation
    finally:
        del sys.modules[module.__name__]
