"""``genflow-train -m``: Hydra sweeps, each combination in its own run folder named after its overrides.

The combinations are Hydra's basic sweeper's, read by Hydra's public override parser
(``a=1,2 b=x,y`` gives 4 jobs; ``range(...)`` and ``choice(...)`` work too). A
job's folder is ``BASE/<its swept overrides, sorted, joined by ','>`` (Hydra's
``override_dirname`` without the keys every job shares), ``BASE`` being ``run_dir`` or
``runs/multirun``: a rerun of the sweep resumes every job, and every rank of a job (or task of a
SLURM job) derives the same folder, never a timestamped one per rank (facebookresearch/hydra#2070).

Every job is composed and checked before any starts. The basic launcher runs them here, one after
another; another launcher (``hydra/launcher=submitit_local`` or ``submitit_slurm``, from the
hydra-submitit-launcher plugin) gets them through Hydra's own multirun (``hydra.main``).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

from genflow.training.config import ConfigError
from genflow.utils import one_line

HONOURED = "hydra.searchpath, and with -m hydra/launcher=NAME and hydra.launcher.KEY=VALUE"
DEFAULT_BASE = Path("runs") / "multirun"


@dataclass(frozen=True)
class Job:
    overrides: tuple[str, ...]  # the job's overrides, hydra.* and run_dir left out
    swept: tuple[str, ...]      # those that vary across the sweep

    @property
    def name(self) -> str:
        """Hydra's ``override_dirname`` of the swept overrides."""
        return ",".join(sorted(self.swept))


@dataclass(frozen=True)
class Sweep:
    jobs: tuple[Job, ...]
    base: Path
    searchpath: tuple[str, ...]  # hydra.searchpath=... overrides, passed to every job
    launcher: tuple[str, ...]    # hydra/launcher=NAME and hydra.launcher.* overrides
    fixed_keys: tuple[str, ...]  # the keys every job shares (left out of the folder names)
    command: tuple[str, ...]     # the sweep's own overrides (``key=a,b``), hydra.* and run_dir left out

    @property
    def launcher_name(self) -> str:
        chosen = [o.partition("=")[2] for o in self.launcher if o.startswith("hydra/launcher=")]
        return chosen[-1] if chosen else "basic"

    def folder(self, job: Job) -> Path:
        return self.base / job.name if job.name else self.base


def _key(line: str) -> str:
    return line.partition("=")[0].lstrip("+~")


def _is_hydra(line: str) -> bool:
    key = _key(line)
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def check_hydra_keys(overrides: list[str], multirun: bool) -> None:
    """Refuse the ``hydra.*`` overrides genflow-train would otherwise ignore, in one line."""
    for line in overrides:
        key = _key(line)
        if not _is_hydra(line) or key == "hydra.searchpath":
            continue
        launcher = key == "hydra/launcher" or key.startswith("hydra.launcher.")
        if launcher and multirun:
            continue
        where = "; it needs -m (a sweep)" if launcher else ""
        hint = " (the run folder is run_dir=PATH)" if key.startswith(("hydra.run", "hydra.sweep")) else ""
        raise ConfigError(f"{key}: genflow-train does not use this Hydra setting{where}{hint}; it honours {HONOURED}")


def parse(overrides: list[str]) -> Sweep:
    """The jobs of a ``-m`` command line: every combination of its swept values, in Hydra's order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    hydra = [o for o in overrides if _is_hydra(o)]
    rest = [o for o in overrides if o not in hydra]
    parser, parsed = OverridesParser.create(), []
    for line in rest:
        try:
            parsed.append(parser.parse_override(line))
        except HydraException as err:
            raise ConfigError(f"{line}: {one_line(err).split(' See https://')[0]}") from None
    base = DEFAULT_BASE
    choices, fixed = [], []
    for line, o in zip(rest, parsed):
        prefix = line[: len(line) - len(line.lstrip("+~"))]
        if o.key_or_group == "run_dir":
            if o.is_sweep_override():
                raise ConfigError("run_dir cannot be swept; it is the sweep's folder (each job gets a subfolder)")
            base = Path(o.get_value_element_as_str())
            continue
        if o.is_sweep_override():
            choices.append([f"{prefix}{o.key_or_group}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([line])
            fixed.append(o.key_or_group)
    swept = {i for i, c in enumerate(choices) if _key(c[0]) not in fixed}
    jobs = tuple(Job(combo, tuple(combo[i] for i in sorted(swept))) for combo in itertools.product(*choices))
    launcher = tuple(o for o in hydra if _key(o) != "hydra.searchpath")
    if any(_key(o).startswith("hydra.launcher.") for o in launcher) and not any(
            o.startswith("hydra/launcher=") for o in launcher):
        raise ConfigError("hydra.launcher.KEY needs a launcher plugin: add hydra/launcher=submitit_local or "
                          "submitit_slurm (the basic launcher has no settings)")
    command = tuple(line for line, o in zip(rest, parsed) if o.key_or_group != "run_dir")
    return Sweep(jobs, base, tuple(o for o in hydra if _key(o) == "hydra.searchpath"), launcher, tuple(fixed),
                 command)


def compose_jobs(sweep: Sweep) -> list[dict]:
    """Every job's checked config, its run folder filled in; the first bad one is one line naming it."""
    from genflow.training.config import compose

    configs = []
    for job in sweep.jobs:
        try:
            cfg = compose([*sweep.searchpath, *job.overrides])
        except ConfigError as err:
            raise ConfigError(f"job {job.name or '(no overrides)'}: {err}") from None
        configs.append({**cfg, "run_dir": str(sweep.folder(job))})  # not an override: '=' and ',' in it
    return configs


def launcher_options() -> list[str]:
    """The launchers Hydra finds: basic, and those of installed plugins (submitit_local, ...)."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # imports the installed plugins, which register their launcher configs
    return sorted(name.removesuffix(".yaml") for name in ConfigStore.instance().list("hydra/launcher"))


def check_launcher(sweep: Sweep) -> None:
    name = sweep.launcher_name
    options = launcher_options()
    if name not in options:
        extra = " (pip install 'genflow[submitit]')" if name.startswith("submitit") else ""
        raise ConfigError(f"unknown hydra/launcher {name!r}{extra}; available: {', '.join(options)}")


def launch(sweep: Sweep, root: Path) -> int:
    """Hand the sweep to a launcher plugin through Hydra's multirun; 0 when every job finished."""
    import hydra

    base = sweep.base.resolve()
    exclude = ",".join(["run_dir", *sweep.fixed_keys])
    argv = [sys.argv[0], "-m", *sweep.searchpath, *sweep.command, *sweep.launcher,
            f"hydra.sweep.dir={base}", "hydra.sweep.subdir=${hydra.job.override_dirname}",
            f"hydra.job.config.override_dirname.exclude_keys=[{exclude}]", "hydra.output_subdir=null",
            "hydra.job.chdir=false", "hydra/job_logging=none"]
    saved, sys.argv = sys.argv, argv
    report = io.StringIO()
    try:
        with contextlib.redirect_stderr(report):
            hydra.main(config_path=str(root), config_name="config", version_base=None)(launched_job)()
    except SystemExit:  # Hydra printed a failed job's traceback, then exited: its last line, the job's error
        failed = [line for line in report.getvalue().splitlines() if line.startswith(f"{JobFailed.__module__}.")]
        print(f"genflow-train: error: {failed[-1].partition(': ')[2] if failed else one_line_of(report)}",
              file=sys.stderr)
        return 1
    finally:
        sys.argv = saved
    sys.stderr.write(report.getvalue())
    return 0


def one_line_of(report: io.StringIO) -> str:
    lines = [line for line in report.getvalue().splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    return lines[-1] if lines else "the launcher failed"


class JobFailed(RuntimeError):
    """A launched job ended with a nonzero genflow-train status (its one line is on its stderr)."""


def launched_job(cfg) -> str:
    """The task a launcher plugin runs (in another process, perhaps on another machine): train in
    the job's folder, ``hydra.sweep.dir/hydra.sweep.subdir``; one line on failure."""
    from hydra.core.hydra_config import HydraConfig

    from genflow.train import run_config
    from genflow.training.config import checked

    hc = HydraConfig.get()
    folder = Path(hc.sweep.dir) / hc.sweep.subdir
    config = checked(cfg)
    config["run_dir"] = str(folder)
    errors = LastLine(sys.stderr)
    with contextlib.redirect_stderr(errors):
        code = run_config(config)
    if code:
        raise JobFailed(f"job {hc.sweep.subdir or '(no overrides)'}: "
                        f"{errors.last.removeprefix('genflow-train: error: ')} (exit status {code})")
    return str(folder)


class LastLine(io.TextIOBase):
    """A stream that passes text on and keeps its last non-empty line."""

    def __init__(self, stream) -> None:
        self.stream, self.last = stream, ""

    def write(self, text: str) -> int:
        lines = [line for line in text.splitlines() if line.strip()]
        self.last = lines[-1] if lines else self.last
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

