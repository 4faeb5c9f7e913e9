"""The sampler protocol: a frozen dataclass whose fields are its options, each declared once.

    @dataclass(frozen=True)
    class MySampler(Sampler):
        name: ClassVar[str] = "mine"
        eta: float = option(0.0, "noise added per step", min=0)

        def __call__(self, net, process, x, noise, progress) -> Tensor: ...

An option's declaration (``option``) holds its default, its documentation and what is allowed;
``make``'s refusals, genflow-sample's flags and ``--help`` and the up-front checks are read off it.
Registering the class in ``genflow.samplers.SAMPLERS`` (and a config under configs/sampler/) is
all a new sampler needs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from genflow.processes.base import GaussianPath


class Floats(tuple):
    """An option's value that is a list of numbers (a user's time grid); on the command line one
    comma-separated word, ``--sigmas 80,10,1,0.1``."""

    def __new__(cls, value: Any = ()) -> Floats:
        return super().__new__(cls, [float(v) for v in value.split(",") if v.strip()] if isinstance(value, str) else value)


def option(default: Any, doc: str, *, kind: type | None = None, min: float | None = None,
           above: float | None = None, max: float | None = None, choices: tuple | None = None,
           infinite: bool = False, optional: bool = False) -> Any:
    """A sampler option: its default, one line of documentation and what is allowed.

    ``kind`` is the value's type (default: the default's; ``Floats``: a non-empty list of numbers,
    each bounded as a number is); numbers lie in [``min``, ``max``] and
    above ``above``, finite unless ``infinite`` (+inf allowed); strings are one of ``choices``;
    ``optional`` also allows None (the sampler then picks a value).
    """
    kind = kind or type(default)
    return dataclasses.field(default=default, metadata={
        "doc": doc, "kind": kind, "min": min, "above": above, "max": max, "choices": choices,
        "infinite": infinite, "optional": optional})


def allowed(spec: dataclasses.Field) -> str:
    """What an option takes, in words: 'a finite number >= 0', 'one of a, b', ..."""
    m = spec.metadata
    if m["kind"] is Floats:
        text = " ".join([f"a non-empty list of {'' if m['infinite'] else 'finite '}numbers", _bounds(m)]).strip()
    elif m["kind"] is bool:
        text = "true or false"
    elif m["choices"] is not None:
        text = f"one of {', '.join(map(str, m['choices']))}"
    elif m["kind"] is str:
        text = "a string"
    else:
        noun = "an integer" if m["kind"] is int else ("a number" if m["infinite"] else "a finite number")
        text = " ".join([noun, _bounds(m)]).strip() + (" (inf allowed)" if m["infinite"] else "")
    return f"{text}, or None (the sampler's default)" if m["optional"] else text


def _bounds(m) -> str:
    return " and ".join(f"{op} {v:g}" for op, v in ((">=", m["min"]), (">", m["above"]), ("<=", m["max"])) if v is not None)


def valid(spec: dataclasses.Field, value: Any) -> bool:
    """Whether ``value`` is what the option ``spec`` allows."""
    m = spec.metadata
    if value is None:
        return m["optional"]
    if m["kind"] is Floats:
        number = dataclasses.field(metadata={**m, "kind": float, "optional": False})
        return isinstance(value, (list, tuple)) and len(value) > 0 and all(valid(number, v) for v in value)
    if m["kind"] is bool or isinstance(value, bool):
        return m["kind"] is bool and isinstance(value, bool)
    if m["kind"] is str:
        return isinstance(value, str) and (m["choices"] is None or value in m["choices"])
    if not isinstance(value, int if m["kind"] is int else (int, float)) or math.isnan(value):
        return False
    if value == -math.inf or (value == math.inf and not m["infinite"]):
        return False
    return ((m["min"] is None or value >= m["min"]) and (m["above"] is None or value > m["above"])
            and (m["max"] is None or value <= m["max"]))


@dataclass(frozen=True)
class Sampler:
    """Base of every sampler. ``steps`` and the subclass's fields are its options (``option``);
    every value is checked against its declaration when the sampler is built.

    ``check(process)`` refuses, in one line and before any network call, a process or setting it
    cannot run; ``__call__(net, process, x, noise, progress)`` maps the prior draw ``x`` at t_max to
    samples, calling the network only through ``net`` (a ``CountingModel``) and drawing noise only
    from ``noise`` (a ``NoiseSource``); ``progress`` wraps the step loop's iterable.
    """

    #: The sampler's name in ``genflow.samplers.SAMPLERS`` (its messages name it).
    name: ClassVar[str] = "sampler"
    #: Options a subclass inherits but does not take (``options`` leaves them out, so ``make``
    #: refuses them in one line and no flag or help offers them for this sampler).
    withheld: ClassVar[tuple[str, ...]] = ()
    steps: int = option(50, "sampler steps", min=1)

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.metadata and not valid(spec, value):
                raise ValueError(f"sampler {self.name!r}: {spec.name} must be {allowed(spec)}; got {value!r}")
            if spec.metadata and spec.metadata["kind"] is Floats and value is not None:
                object.__setattr__(self, spec.name, Floats(value))  # a list given becomes a (hashable) tuple

    @property
    def fixed_step(self) -> bool:
        """Whether the network is called on a grid fixed in advance, the same calls for any batch
        (so a CUDA graph can record a call, and a padded batch gives the same samples)."""
        return True

    def check(self, process: GaussianPath) -> None:
        """Refuse what this sampler cannot do on ``process``, in one line (a ValueError)."""

    def __call__(self, net, process: GaussianPath, x: Tensor, noise, progress: Callable) -> Tensor:
        raise NotImplementedError

    @classmethod
    def options(cls) -> dict[str, dataclasses.Field]:
        """The options a user sets (every field but ``steps`` and the ``withheld`` ones), in declaration order."""
        return {f.name: f for f in dataclasses.fields(cls) if f.name != "steps" and f.name not in cls.withheld}

    def settings(self) -> dict[str, Any]:
        """Every option's value as used, ``steps`` included (the ``withheld`` fields are not options)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.withheld}
