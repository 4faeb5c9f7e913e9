"""Fault benchmark (issue 18): bad inputs tried and clean one-line refusals, kill -9, SIGTERM, full disk.

    python scripts/bench_faults.py [--kills 4]

Bad inputs are tests/test_faults.py's table (the cases other branches fix included); a refusal is
clean when it has the expected exit status, one stderr line naming what was wrong and no traceback.
kill -9: a training run (real ``python -m genflow.train``) is killed at random moments and
restarted each time; it should finish with the weights of an uninterrupted run and leave no
temporary file. SIGTERM (issue 17): a run with rare checkpoints is stopped 5 times and rerun each
time; each stop saves the step it stopped at, so no step is lost, and the end equals an uninterrupted run. Full
disk: a real tmpfs too small for the second checkpoint (root with mount), else a patched write.
Prints a markdown table; takes about four minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_faults as faults  # noqa: E402  (the table of bad inputs and the forking runner)

from genflow.training import checkpoint  # noqa: E402

STEPS = 60
TRAIN = [*faults.TOY, "model.hidden=256", "model.depth=3", "trainer.ckpt_every=1", "trainer.keep=2"]


def clean(case: faults.Case, got: dict) -> bool:
    done = got["done"]
    lines = faults.err_lines(done)
    return (done.returncode == case.code and len(lines) == 1 and "Traceback" not in done.stderr
            and all(text.format(**got["names"]) in lines[0] for text in case.says))


def bad_inputs(tmp: Path, paths: dict) -> tuple[int, int, list[str]]:
    zygote = faults.Zygote(faults.env(tmp))
    tried, refused, not_clean = 0, 0, []
    try:
        for case in faults.CASES:
            got = faults.run_case(case, tmp, paths, zygote)
            if "skip" in got:
                continue
            tried += 1
            if clean(case, got):
                refused += 1
            else:
                lines = faults.err_lines(got["done"])
                not_clean.append(f"{case.name} ({case.xfail or 'ours'}: exit {got['done'].returncode}, "
                                 f"{len(lines)} line(s){', traceback' if 'Traceback' in got['done'].stderr else ''})")
    finally:
        zygote.close()
    return tried, refused, not_clean


def train(run: Path, tmp: Path, *extra: str, base: list[str] = TRAIN) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "genflow.train", *base, f"run_dir={run}", *extra],
                            env=faults.env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def temps(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob(".*.tmp-*")) if (run / "checkpoints").is_dir() else []


def weights(run: Path) -> dict:
    return checkpoint.load(run / "checkpoints" / "last.pt")["model"]


def kill_9(tmp: Path, kills: int) -> dict:
    """Kill a run ``kills`` times at random moments (after its start-up), restart it each time."""
    whole, broken = tmp / "whole", tmp / "killed"
    train(whole, tmp, f"trainer.steps={STEPS}").communicate()
    rng, left_after_kill, left_after_start, removed = random.Random(0), 0, 0, 0
    for _ in range(kills):
        proc = train(broken, tmp, f"trainer.steps={STEPS}")
        time.sleep(rng.uniform(4.0, 8.0))
        proc.send_signal(signal.SIGKILL)
        removed += proc.communicate()[1].count("stale temporary checkpoint")  # said at its start
        left_after_kill += len(temps(broken))
    final = train(broken, tmp, f"trainer.steps={STEPS}")
    removed += final.communicate()[1].count("stale temporary checkpoint")
    left_after_start = len(temps(broken))
    same = all(torch.equal(weights(broken)[k], v) for k, v in weights(whole).items())
    return {"kills": kills, "temp_after_kill": left_after_kill, "temp_after_start": left_after_start,
            "removal_lines": removed, "exact": same, "rc": final.returncode}


def last_step(run: Path) -> int:
    """The newest step logged (log_every = 1: every step the run took)."""
    if not (run / "metrics.jsonl").exists():
        return 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.endswith("}")]
    return max((r["step"] for r in rows if "loss" in r), default=0)


def wait_training(run: Path, proc: subprocess.Popen, after: int) -> None:
    """Until the run logs a step past ``after`` (its start-up, which no signal handler covers yet, is over)."""
    while proc.poll() is None and last_step(run) <= after:
        time.sleep(0.1)


def sigterm(tmp: Path, stops: int) -> dict:
    """SIGTERM a run with rare checkpoints (ckpt_every=10000, as trainer=ho_cifar10) ``stops`` times at
    random moments, rerun it each time: the steps each stop lost (taken minus saved), and the end."""
    steps, whole, run = STEPS * 50, tmp / "term-whole", tmp / "term"
    every = ["trainer.ckpt_every=10000", "trainer.keep=10"]
    train(whole, tmp, f"trainer.steps={steps}", *every).communicate()
    rng, lost, at, codes, unloadable = random.Random(1), [], [], [], 0
    for _ in range(stops):
        proc = train(run, tmp, f"trainer.steps={steps}", *every)
        wait_training(run, proc, last_step(run))
        time.sleep(rng.uniform(0.5, 3.0))
        proc.send_signal(signal.SIGTERM)
        proc.communicate()
        codes.append(proc.returncode)
        try:
            saved = checkpoint.load(run / "checkpoints" / "last.pt")["step"]
        except checkpoint.CheckpointError:
            unloadable, saved = unloadable + 1, 0
        lost.append(last_step(run) - saved)
        at.append(saved)
    final = train(run, tmp, f"trainer.steps={steps}", *every)
    final.communicate()
    reached = checkpoint.load(run / "checkpoints" / "last.pt")["step"] == steps
    same = all(torch.equal(weights(run)[k], v) for k, v in weights(whole).items())
    return {"stops": stops, "codes": sorted(set(codes)), "lost": lost, "at": at, "unloadable": unloadable,
            "reached": reached, "exact": same, "rc": final.returncode, "temps": len(temps(run))}


def full_disk(tmp: Path, paths: dict) -> dict:
    """A 300 kB tmpfs: room for the first tiny checkpoint (~120 kB, written twice) but not the next;
    else torch.save patched to fail with ENOSPC."""
    disk = tmp / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)],
                                                    capture_output=True).returncode == 0
    try:
        run = disk / "run"
        if mounted:
            proc = train(run, tmp, "trainer.steps=10", "trainer.ckpt_every=1", base=faults.TOY)
            _, err = proc.communicate()
            rc, how = proc.returncode, "real 300 kB tmpfs"
        else:
            shutil.copytree(paths["good"], run)
            zygote = faults.Zygote(faults.env(tmp))
            done = zygote.run("genflow.train", [*faults.TOY, f"run_dir={run}", "trainer.steps=4"], tmp, "enospc")
            zygote.close()
            rc, err, how = done.returncode, done.stderr, "patched torch.save (ENOSPC)"
        lines = [line for line in err.splitlines() if line.strip()]
        last = checkpoint.load(run / "checkpoints" / "last.pt")
        finite = not checkpoint.non_finite({"model": last["model"]})
        return {"how": how, "rc": rc, "lines": len(lines), "line": lines[-1][:110] if lines else "",
                "last_step": last["step"], "intact": finite, "temps": len(temps(run))}
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], capture_output=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=4)
    p.add_argument("--stops", type=int, default=5, help="SIGTERMs, each followed by a rerun")
    args = p.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        paths = faults._paths(tmp)
        try:
            tried, refused, not_clean = bad_inputs(tmp, paths)
            killed, term, disk = kill_9(tmp, args.kills), sigterm(tmp, args.stops), full_disk(tmp, paths)
        finally:
            if paths["readonly"] is not None and os.geteuid() == 0:
                subprocess.run(["umount", str(paths["readonly"])], capture_output=True)
    print(f"genflow fault benchmark, {datetime.date.today()}, torch {torch.__version__}, "
          f"{time.perf_counter() - start:.0f} s\n")
    print("| fault | tried | result |")
    print("| --- | --- | --- |")
    print(f"| bad inputs (tests/test_faults.py's table) | {tried} | {refused} clean one-line refusals; not clean: "
          f"{'; '.join(not_clean) or 'none'} |")
    print(f"| kill -9 at random moments, restarted each time | {killed['kills']} | temp files left by the kills: "
          f"{killed['temp_after_kill']}, after the next start: {killed['temp_after_start']} (removal lines at "
          f"the restarts: {killed['removal_lines']}); finished (exit {killed['rc']}) "
          f"{'bitwise equal to' if killed['exact'] else 'DIFFERENT from'} an uninterrupted run |")
    print(f"| SIGTERM at random moments (ckpt_every=10000), rerun each time | {term['stops']} | exit "
          f"{', '.join(map(str, term['codes']))}; stopped and saved at steps {', '.join(map(str, term['at']))}; steps "
          f"lost per stop: {', '.join(map(str, term['lost']))}; "
          f"checkpoints that fail to load: {term['unloadable']}; the last rerun (exit {term['rc']}) "
          f"{'reached' if term['reached'] else 'did NOT reach'} the target, "
          f"{'bitwise equal to' if term['exact'] else 'DIFFERENT from'} an uninterrupted run; temp files "
          f"{term['temps']} |")
    print(f"| full disk during a checkpoint write, {disk['how']} | 1 | exit {disk['rc']}, {disk['lines']} line(s) "
          f"on stderr (\"{disk['line']}\"); last.pt at step {disk['last_step']} "
          f"{'loads and is finite' if disk['intact'] else 'DAMAGED'}; temp files {disk['temps']} |")


if __name__ == "__main__":
    main()
