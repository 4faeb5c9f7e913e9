"""Bad input and faults through the real commands (issue 18): every case is a subprocess
(``python -m genflow.train`` / ``genflow.cli.sample`` / ``genflow.cli.evaluate``) and must end
with the right exit status (2 usage, 1 failure), exactly one line on stderr naming what was wrong,
no traceback, and nothing damaged on disk.

The cases run once, in one module fixture, as processes forked from one process that imported
torch (see ``ZYGOTE``; two also run in a fresh interpreter); each test then checks its own.
Full disk and kill -9 mid-write are simulated inside the real command by a patched ``torch.save``,
so they happen at the same place every time; ``scripts/bench_faults.py`` also fills a real tmpfs
and kills a run at random moments. A read-only folder is a read-only tmpfs when run as root (the
cases skip where it cannot be mounted), a chmod 555 folder otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from genflow.training import Trainer, checkpoint, compose

ROOT = Path(__file__).resolve().parents[1]
TOY = ["data=toy2d", "data.size=512", "model=mlp", "model.hidden=32", "model.depth=1", "process=vpsde",
       "trainer.batch_size=32", "trainer.sample_every=0", "trainer.num_samples=4", "sampler.steps=4",
       "trainer.progress=false", "trainer.device=cpu", "trainer.log_every=1"]
TRAIN, SAMPLE, EVAL, EXPORT = "genflow.train", "genflow.cli.sample", "genflow.cli.evaluate", "genflow.cli.export"
LEARN = "genflow.cli.learn"

# The cases run as processes forked from one "zygote" process that has imported torch and genflow
# once: each child sets sys.argv and runs the command's module as __main__ (what ``python -m``
# does), with its own cwd, stdout and stderr files and exit status (or signal). A fresh interpreter
# per case costs ~4 s of CPU; a fork, a fraction of that. ``fresh_python`` runs a few cases the
# plain way to show the two agree. Patches: 'enospc' fails like a full disk after writing part of
# a checkpoint, 'kill' writes part of one and kill -9s itself, 'nan' poisons the weights after
# every optimizer step from step 3 on.
ZYGOTE = """
import errno, json, os, runpy, signal, sys
import torch
import genflow.cli.evaluate, genflow.cli.sample, genflow.train, genflow.training.trainer, hydra  # noqa: F401

def partial(obj, f, *args, **kwargs):
    f.write(b"PK\\x03\\x04 part of a checkpoint"); f.flush()
    if os.environ.get("FAULT") == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

def patch(mode):
    if mode in ("enospc", "kill"):
        os.environ["FAULT"] = mode
        torch.save = partial
    if mode == "nan":
        step = torch.optim.AdamW.step
        def poisoned(self, *args, **kwargs):
            out = step(self, *args, **kwargs)
            if self.state[self.param_groups[0]["params"][0]]["step"] >= 3:
                for group in self.param_groups:
                    for p in group["params"]:
                        p.data.fill_(float("nan"))
            return out
        torch.optim.AdamW.step = poisoned

def child(job):
    os.chdir(job["cwd"])
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.stdout, sys.stderr = os.fdopen(1, "w", buffering=1), os.fdopen(2, "w", buffering=1)
    patch(job["boot"])
    sys.argv = [job["module"], *job["args"]]
    sys.modules.pop(job["module"], None)  # imported by the zygote; run afresh as __main__
    try:
        runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(code)

for line in sys.stdin:
    job = json.loads(line)
    if job is None:  # close: not EOF, which a forked process holding the pipe would delay
        break
    pid = os.fork()
    if pid == 0:
        child(job)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
"""


class Zygote:
    """One process that imported torch; ``run`` forks a child per command (one at a time)."""

    def __init__(self, env: dict) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True)
        self.lock = threading.Lock()

    def run(self, module: str, args: list[str], cwd: Path, boot: str | None = None) -> subprocess.CompletedProcess:
        n = len(list(cwd.glob(".stdout-*")))
        out, err = cwd / f".stdout-{n}", cwd / f".stderr-{n}"
        job = {"module": module, "args": args, "cwd": str(cwd), "boot": boot, "stdout": str(out), "stderr": str(err)}
        with self.lock:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            code = json.loads(self.proc.stdout.readline())
        return subprocess.CompletedProcess([module, *args], code, out.read_text(), err.read_text())

    def close(self) -> None:
        try:
            self.proc.stdin.write("null\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        finally:
            self.proc.kill()  # a no-op once it has exited
            self.proc.stdout.close()


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    module: str
    args: tuple[str, ...]   # {placeholders} filled from the fixture's paths
    code: int
    says: tuple[str, ...]   # on the one stderr line
    boot: str | None = None  # run through BOOT in this mode
    xfail: str | None = None


def train(name, *args, code, says, boot=None, xfail=None) -> Case:
    return Case(name, TRAIN, (*TOY, "run_dir={run}", *args), code, says, boot, xfail)


def sample(name, *args, code, says, xfail=None) -> Case:
    return Case(name, SAMPLE, ("--ckpt", "{ckpt}", "--num", "4", "--no-progress", "--out", "{out}", *args), code,
                says, xfail=xfail)


def evaluate(name, command, *args, code, says, xfail=None) -> Case:
    extra = ("--num", "8", "--no-progress", "--method", "euler", "--steps", "2") if command == "nll" else ()
    return Case(name, EVAL, (command, "--ckpt", "{ckpt}", *extra, *args), code, says, xfail=xfail)


def learn(name, *args, code, says) -> Case:
    return Case(name, LEARN, ("--ckpt", "{ckpt}", "--no-progress", "--iterations", "2", "--out", "{out}/s.json",
                              *args), code, says)


NO_CUDA = not torch.cuda.is_available()
CASES = [
    # genflow-train: non-finite or out-of-range options, bad run folders, bad data, faults mid-run
    train("grad_clip=nan", "trainer.grad_clip=nan", code=2, says=("trainer.grad_clip=nan: must be a finite number",)),
    train("lr=nan", "trainer.lr=nan", code=2, says=("trainer.lr=nan: must be a finite number",)),
    train("lr=inf on resume", "trainer.lr=inf", "trainer.steps=4", code=2, says=("trainer.lr=inf",)),
    train("seed=-1", "trainer.seed=-1", code=2, says=("trainer.seed must be in [0, 2^31); got -1",)),
    train("betas=[0.9,1.5]", "trainer.betas=[0.9,1.5]", code=2, says=("trainer.betas must be two numbers in [0, 1)",)),
    Case("run_dir empty", TRAIN, (*TOY, "run_dir="), 2, ("run_dir is empty; give a folder path",)),
    Case("run_dir a file", TRAIN, (*TOY, "run_dir={file}"), 1, ("run_dir {file} is a file; give a folder",)),
    Case("run_dir under a file", TRAIN, (*TOY, "run_dir={file}/run"), 1, ("lies under the file {file}",)),
    Case("run_dir read-only", TRAIN, (*TOY, "run_dir={readonly}/run"), 1,
         ("run_dir {readonly}/run cannot be written",)),
    Case("data.root missing", TRAIN, ("data=folder", "run_dir={run}"), 2,
         ("data.root must be given (the config marks it ???); pass data.root=VALUE",)),
    Case("corrupt image", TRAIN, ("data=folder", "data.root={images}", "data.image_size=8", "data.channels=1",
                                  "trainer.batch_size=2", "trainer.steps=1", "trainer.progress=false",
                                  "trainer.device=cpu", "run_dir={fresh}"), 1,
         ("cannot read image {images}/bad.jpg", "remove or replace the file")),
    train("full disk while saving", "trainer.steps=4", "trainer.ckpt_every=4", code=1, boot="enospc",
          says=("cannot write checkpoint", "No space left on device; the previous checkpoints are intact")),
    train("weights turn NaN", "trainer.steps=4", "trainer.ckpt_every=1", code=1, boot="nan",
          says=("not saving step 3: its weights are not finite", "the last good checkpoint stays")),
    # genflow-sample
    sample("seed=-1", "--seed", "-1", code=2, says=("--seed must be in [0, 2^63); got -1",)),
    sample("device gpu", "--device", "gpu", code=2, says=("--device must be cpu or cuda[:N]; got 'gpu'",)),
    sample("device cpu:7", "--device", "cpu:7", code=2, says=("--device must be cpu or cuda[:N]; got 'cpu:7'",)),
    *([sample("device cuda", "--device", "cuda", code=2, says=("--device cuda: no such CUDA device",))]
      if NO_CUDA else []),
    sample("out is a file", "--out", "{file}", code=1, says=("--out {file} is a file; give a folder",)),
    sample("out read-only", "--out", "{readonly}/s", code=1, says=("--out {readonly}/s cannot be written",)),
    Case("random bytes as ckpt", SAMPLE, ("--ckpt", "{random}", "--out", "{out}"), 1,
         ("cannot read checkpoint {random} (truncated or not a torch file): it is neither a zip archive nor a "
          "pickle",)),
    Case("png as ckpt", SAMPLE, ("--ckpt", "{png}", "--out", "{out}"), 1,
         ("cannot read checkpoint {png} (truncated or not a torch file)",)),
    Case("weights that do not fit", SAMPLE, ("--ckpt", "{misfit}", "--out", "{out}", "--no-progress"), 1,
         ("its EMA weights do not fit its net", "size mismatch for")),
    Case("random bytes as safetensors", SAMPLE, ("--ckpt", "{random_st}", "--out", "{out}"), 1,
         ("cannot read {random_st} (truncated or not a safetensors file)",)),
    Case("export to a .pt", EXPORT, ("--ckpt", "{ckpt}", "--out", "{out}/model.pt"), 2,
         ("--out must end in .safetensors",)),
    Case("export of random bytes", EXPORT, ("--ckpt", "{random}", "--out", "{file}.safetensors"), 1,
         ("cannot read checkpoint {random}",)),
    sample("shard-size 0", "--shard-size", "0", code=2, says=("--shard-size must be >= 1; got 0",)),
    sample("png-dir on 2-D points", "--png-dir", "{file}-png", code=2, says=("--png-dir needs images",)),
    sample("eta=nan", "--eta", "nan", code=2, says=("eta",)),
    sample("eta=inf", "--eta", "inf", code=2, says=("eta",)),
    sample("pc snr=inf", "--sampler", "pc", "--snr", "inf", code=2, says=("snr",)),
    sample("ode rtol=nan", "--sampler", "ode", "--rtol", "nan", code=2, says=("rtol",)),
    sample("schedule file missing", "--sampler", "lms", "--steps", "4", "--schedule-file", "{fresh}/none.json",
           code=2, says=("sampler 'lms': schedule file {fresh}/none.json does not exist",)),
    sample("schedule file not JSON", "--sampler", "lms", "--steps", "4", "--schedule-file", "{file}", code=2,
           says=("sampler 'lms': schedule file {file} is not JSON",)),
    sample("schedule learned, no file", "--sampler", "unipc", "--schedule", "learned", code=2,
           says=("schedule 'learned' needs schedule_file=PATH",)),
    # genflow-learn-schedule
    learn("learn for ddim", "--sampler", "ddim", code=2, says=("learn_schedule takes a sampler with a given grid",)),
    learn("learn nfe=1", "--nfe", "1", code=2, says=("learn_schedule: nfe must be an integer >= 2; got 1",)),
    learn("learn with sigmas", "--sigmas", "1,0.1", code=2, says=("drop the grid option(s) sigmas",)),
    learn("learn teacher bogus", "--teacher", "bogus", code=2, says=("unknown sampler 'bogus'",)),
    learn("learn objective bogus", "--objective", "l1", code=2,
          says=("--objective must be one of mse, trimmed; got 'l1'",)),
    Case("learn out under a file", LEARN, ("--ckpt", "{ckpt}", "--out", "{file}/s.json"), 1,
         ("the folder of --out {file} is a file; give a folder",)),
    # genflow-eval
    evaluate("nll device cpu:7", "nll", "--device", "cpu:7", code=2, says=("--device must be cpu or cuda[:N]",)),
    evaluate("sw seed=-1", "sw", "--samples", "{nan}", "--seed", "-1", code=2, says=("--seed must be in [0, 2^63)",)),
    evaluate("sw on NaN samples", "sw", "--samples", "{nan}", code=1,
             says=("3 of 16 samples in {nan} hold NaN or inf; nothing to compare",)),
    evaluate("fd on NaN samples", "fd", "--samples", "{nan}", code=1, says=("hold NaN or inf",)),
    evaluate("fd on a png file as samples", "fd", "--samples", "{png}", code=1,
             says=("cannot read samples file {png} as .npz",)),
    evaluate("fd with random bytes as --ref", "fd", "--samples", "{nan}", "--ref", "{random}", code=1,
             says=("cannot read reference statistics file {random} as .npz",)),
    evaluate("fd with a missing --ref", "fd", "--samples", "{nan}", "--ref", "{random}.missing", code=1,
             says=("reference file not found: {random}.missing",)),
    Case("nll steps=0", EVAL, ("nll", "--ckpt", "{ckpt}", "--num", "8", "--no-progress", "--method", "euler",
                               "--steps", "0"), 2, ("--steps",)),
    evaluate("nll rtol=nan", "nll", "--method", "dopri5", "--rtol", "nan", code=2, says=("--rtol",)),
    evaluate("nll method bogus", "nll", "--method", "bogus", code=2, says=("--method", "dopri5")),
]


def _read_only_folder(folder: Path) -> Path | None:
    """A folder this process cannot write: permissions for a normal user, a read-only tmpfs for root."""
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return folder
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True)
    return folder if done.returncode == 0 else None


def _paths(tmp: Path) -> dict[str, Path]:
    """The fixtures every case refers to, made once."""
    good = tmp / "good"
    Trainer(compose([*TOY, "trainer.steps=2", "trainer.ckpt_every=2", f"run_dir={good}"])).fit()
    ckpt = good / "checkpoints" / "last.pt"
    (tmp / "file").write_bytes(b"a file, not a folder")
    (tmp / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp / "random.safetensors").write_bytes(np.random.default_rng(2).bytes(4096))
    from PIL import Image

    images = tmp / "images"
    images.mkdir()
    Image.new("L", (8, 8), 128).save(images / "good.png")
    Image.new("L", (8, 8), 128).save(tmp / "png.pt", format="PNG")
    (images / "bad.jpg").write_bytes(np.random.default_rng(1).bytes(3000))
    state = checkpoint.load(ckpt)
    misfit = {**state, "config": {**state["config"], "model": {**state["config"]["model"], "hidden": 16}}}
    torch.save(misfit, tmp / "misfit.pt")
    samples = torch.randn(16, 2)
    samples[[1, 5, 9], 0] = float("nan")
    np.savez(tmp / "nan.npz", samples=samples.numpy())
    return {"good": good, "ckpt": ckpt, "file": tmp / "file", "random": tmp / "random.pt", "png": tmp / "png.pt",
            "images": images, "misfit": tmp / "misfit.pt", "nan": tmp / "nan.npz",
            "random_st": tmp / "random.safetensors",
            "readonly": _read_only_folder(tmp / "readonly")}


def env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "GENFLOW_CACHE": str(tmp / "cache")}


def fill(case: Case, home: Path, paths: dict) -> tuple[list[str], dict[str, str]]:
    names = {k: str(v) for k, v in paths.items() if v is not None}
    names |= {"run": str(home / "run"), "out": str(home / "out"), "fresh": str(home / "fresh")}
    return [a.format(**names) for a in case.args], names


def run_case(case: Case, tmp: Path, paths: dict, zygote: Zygote) -> dict:
    """Run one case in its own folder (a copy of the good run for genflow-train); what it left."""
    if "{readonly}" in " ".join(case.args) and paths["readonly"] is None:
        return {"skip": "no read-only folder here (root without mount)"}
    home = tmp / "cases" / folder_name(f"{case.module}-{case.name}")
    shutil.copytree(paths["good"], home / "run")
    args, names = fill(case, home, paths)
    before = {p: p.read_bytes() for p in [*(home / "run" / "checkpoints").iterdir(), paths["file"], paths["ckpt"]]}
    done = zygote.run(case.module, args, home, case.boot)
    return {"done": done, "names": names, "home": home, "before": before}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    paths = _paths(tmp)
    try:
        zygote = Zygote(env(tmp))
        try:
            done = {case: run_case(case, tmp, paths, zygote) for case in CASES}
            done["kill -9"] = kill_mid_write(tmp, paths, zygote)
            yield {"paths": paths, "tmp": tmp, **done}
        finally:
            zygote.close()
    finally:
        if paths["readonly"] is not None and os.geteuid() == 0:
            subprocess.run(["umount", str(paths["readonly"])], capture_output=True)


def err_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)]
                                               if c.xfail else []) for c in CASES])
def test_bad_input_and_faults_end_in_one_line(results, case):
    got = results[case]
    if "skip" in got:
        pytest.skip(got["skip"])
    done, names = got["done"], got["names"]
    lines = err_lines(done)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == case.code, (done.returncode, done.stderr)
    assert len(lines) == 1, done.stderr
    prog = {TRAIN: "genflow-train", SAMPLE: "genflow-sample", EVAL: "genflow-eval",
            EXPORT: "genflow-export", LEARN: "genflow-learn-schedule"}[case.module]
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    for text in case.says:
        assert text.format(**names) in lines[0], lines[0]
    assert "weights_only=False" not in done.stderr and "weights_only` set to `False" not in done.stderr
    for path, data in got["before"].items():  # nothing damaged: the good checkpoints and files as they were
        assert path.read_bytes() == data, path
    ckpt = got["home"] / "run" / "checkpoints"
    assert not list(ckpt.glob(".*.tmp-*")), list(ckpt.iterdir())
    assert not (got["home"] / "out").exists() and not (got["home"] / "runs").exists()


def test_lr_inf_leaves_the_last_finite_checkpoint_as_last_pt(results):
    got = results[case_named("lr=inf on resume")]
    last = got["home"] / "run" / "checkpoints" / "last.pt"
    state = checkpoint.load(last)
    good = checkpoint.load(Path(got["names"]["ckpt"]))
    assert state["step"] == 2 and not checkpoint.non_finite({"model": state["model"], "ema": state["ema"]})
    assert all(torch.equal(state["model"][k], v) for k, v in good["model"].items())


def test_weights_that_turn_nan_are_never_saved(results):
    """Steps 1-2 good (the copied run), step 3 poisons the weights: last.pt stays step 2."""
    got = results[case_named("weights turn NaN")]
    ckpt = got["home"] / "run" / "checkpoints"
    assert checkpoint.load(ckpt / "last.pt")["step"] == 2
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt", "step_0000002.pt"]


def folder_name(text: str) -> str:  # no '=' or ':' (Hydra would parse them in run_dir=...)
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def case_named(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


def kill_mid_write(tmp: Path, paths: dict, zygote: Zygote) -> dict:
    """A stale temporary file of a dead writer made by hand and a live writer's (this test's pid);
    a start that removes the dead one and is kill -9ed while writing step 4's checkpoint; the next
    start removes what the kill left. The live writer's file stays."""
    run = tmp / "kill" / "run"
    shutil.copytree(paths["good"], run)
    ckpt = run / "checkpoints"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (ckpt / f".step_0000002.pt.tmp-{dead.stdout.strip()}").write_bytes(b"PK stale")
    live = ckpt / f".last.pt.tmp-{os.getpid()}"
    live.write_bytes(b"PK being written")
    args = [*TOY, f"run_dir={run}", "trainer.steps=4", "trainer.ckpt_every=4"]
    killed = zygote.run(TRAIN, args, run.parent, "kill")
    left = sorted(p.name for p in ckpt.iterdir())
    again = zygote.run(TRAIN, args, run.parent)
    return {"killed": killed, "left": left, "again": again, "ckpt": ckpt, "live": live, "dead": dead.stdout.strip()}


def test_kill_9_mid_write_leaves_no_temp_file_after_the_next_start(results):
    got = results["kill -9"]
    assert got["killed"].returncode == -9, got["killed"].stderr
    assert any(name.startswith(".step_0000004.pt.tmp-") for name in got["left"]), got["left"]  # the kill's leftover
    assert got["again"].returncode == 0, got["again"].stderr
    said = "genflow-train: removed 1 stale temporary checkpoint file(s) of a killed run: "
    assert err_lines(got["killed"]) == [f"{said}.step_0000002.pt.tmp-{got['dead']}"]  # the one made by hand
    kill_left = next(name for name in got["left"] if name.startswith(".step_0000004.pt.tmp-"))
    lock = f"genflow-train: took over the lock {got['ckpt'].parent / '.genflow.lock'} of pid {kill_left.split('-')[-1]}, "
    assert err_lines(got["again"]) == [f"{lock}which is no longer running", f"{said}{kill_left}"]  # then it resumes
    # from last.pt (step 2), silently
    ckpt = got["ckpt"]
    assert sorted(p.name for p in ckpt.iterdir()) == sorted([got["live"].name, "last.pt", "step_0000002.pt",
                                                             "step_0000004.pt"])
    assert checkpoint.load(ckpt / "last.pt")["step"] == 4


def test_train_help_lists_every_trainer_key_and_the_config_dir():
    done = subprocess.run([sys.executable, "-m", TRAIN, "--help"], env=env(ROOT), capture_output=True, text=True)
    assert done.returncode == 0
    from genflow.training import TrainerConfig

    missing = [f.name for f in dataclasses.fields(TrainerConfig) if f"{f.name}=" not in done.stdout]
    assert not missing and "GENFLOW_CONFIG_DIR" in done.stdout, missing


def test_eval_nll_reports_its_nfe(tmp_path, capsys):
    """Euler on a flow-free VP path with 2 steps and Hutchinson's trace: 2 network evaluations a batch."""
    from genflow.cli.evaluate import main

    good = tmp_path / "good"
    Trainer(compose([*TOY, "trainer.steps=1", f"run_dir={good}"])).fit()
    argv = ["nll", "--ckpt", str(good / "checkpoints" / "last.pt"), "--num", "12", "--batch-size", "5",
            "--method", "euler", "--steps", "2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    import json

    result = json.loads(captured.out.strip().splitlines()[-1])
    assert (result["nfe"], result["batches"], result["examples"]) == (2, 3, 12)
    assert "nll" in captured.err  # the progress bar over the 3 batches


@pytest.mark.parametrize("name", ["grad_clip=nan", "sw on NaN samples"])
def test_a_fresh_interpreter_gives_the_same_answer(results, name):
    """``python -m ...`` as a user types it (genflow-train; genflow-eval, whose error handling
    genflow-sample shares): what the forked process said."""
    case = case_named(name)
    home = results["tmp"] / "fresh" / folder_name(name)
    shutil.copytree(results["paths"]["good"], home / "run")
    args, _ = fill(case, home, results["paths"])
    done = subprocess.run([sys.executable, "-m", case.module, *args], cwd=home, env=env(results["tmp"]),
                          capture_output=True, text=True, timeout=300)
    forked = results[case]["done"]
    said = [line.replace(str(results[case]["home"]), str(home)) for line in err_lines(forked)]
    assert (done.returncode, err_lines(done)) == (forked.returncode, said)


def test_an_unreadable_image_in_a_loader_worker_is_named_in_one_line(results):
    """torch re-raises a worker's error as 'Caught ... in DataLoader worker process 0' with the
    worker's traceback in the message; one_line keeps the original error's own line."""
    from torch.utils.data import DataLoader

    from genflow import data
    from genflow.data.images import UnreadableImage
    from genflow.utils import one_line

    images = results["paths"]["images"]
    built = data.build({"name": "folder", "root": str(images), "image_size": 8, "channels": 1})
    batches = iter(DataLoader(built.train, batch_size=2, num_workers=1))
    with pytest.raises(UnreadableImage) as err:
        next(batches)
    del batches  # the worker goes
    assert "Original Traceback" in str(err.value)
    assert one_line(err.value).startswith(f"cannot read image {images / 'bad.jpg'}: cannot identify image file")
