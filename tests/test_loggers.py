"""Metrics where researchers look: JSON lines with elapsed time, ETA and peak memory; TensorBoard
events read back with tensorboard's own EventAccumulator; a resumed run continues both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genflow.train import main
from genflow.training.config import ConfigError, compose
from genflow.training.trainer import Trainer

TINY = ["data=toy2d", "data.size=256", "model=mlp", "model.hidden=16", "model.depth=1", "process=vpsde",
        "trainer.batch_size=32", "trainer.warmup=2", "trainer.log_every=2", "trainer.num_samples=16",
        "sampler.steps=2", "trainer.progress=false", "trainer.device=cpu"]
SCALARS = {"loss", "grad_norm", "lr", "examples_per_sec", "skipped_total", "elapsed_sec", "eta_sec", "peak_mem_mib"}


def fit(run_dir: Path, *extra: str) -> Trainer:
    trainer = Trainer(compose([*TINY, f"run_dir={run_dir}", *extra]))
    trainer.fit()
    trainer.close()
    return trainer


def windows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r and not r.get("skipped")]


def test_jsonl_has_elapsed_eta_and_peak_memory_and_a_resume_carries_the_clock(tmp_path):
    fit(tmp_path, "trainer.steps=4", "trainer.ckpt_every=4", "trainer.sample_every=0")
    first = windows(tmp_path)
    assert [r["step"] for r in first] == [2, 4]
    assert first[0]["eta_sec"] > 0 and first[-1]["eta_sec"] == 0  # 2 steps left, then none
    assert 0 < first[0]["elapsed_sec"] < first[1]["elapsed_sec"]
    assert all(r["peak_mem_mib"] > 10 for r in first)  # the interpreter with torch alone is far more
    fit(tmp_path, "trainer.steps=6", "trainer.ckpt_every=4", "trainer.sample_every=0")
    second = windows(tmp_path)
    assert [r["step"] for r in second] == [2, 4, 6]
    assert second[2]["elapsed_sec"] > second[1]["elapsed_sec"]  # the saved clock went on, not from zero


def test_an_unknown_logger_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="trainer.logger must be one of jsonl, tensorboard; got 'wandb'"):
        compose([*TINY, "trainer.logger=wandb"])
    assert main([*TINY, f"run_dir={tmp_path}", "trainer.logger=wandb"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def events(run_dir: Path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    return acc.Reload()


def test_tensorboard_has_every_scalar_and_the_sample_grids_and_a_resume_continues(tmp_path):
    pytest.importorskip("tensorboard")
    common = ["trainer.logger=tensorboard", "trainer.ckpt_every=4", "trainer.sample_every=4"]
    fit(tmp_path, "trainer.steps=6", *common)  # checkpoints at 4 and 6; grids at 4 and 6
    acc = events(tmp_path)
    assert set(acc.Tags()["scalars"]) == {f"train/{k}" for k in SCALARS}
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6]
    assert [r["loss"] for r in windows(tmp_path)] == pytest.approx([e.value for e in acc.Scalars("train/loss")])
    assert [e.step for e in acc.Images("samples")] == [4, 6]
    assert acc.Images("samples")[0].width > 0
    stale = acc.Scalars("train/loss")[2].value
    for name in ("last.pt", "step_0000006.pt"):  # as if killed after step 6's logs, before its checkpoint
        (tmp_path / "checkpoints" / name).unlink()
    fit(tmp_path, "trainer.steps=8", *common)  # resumes at 4
    acc = events(tmp_path)
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6, 8]  # one curve: the old 6 purged
    assert acc.Scalars("train/loss")[2].value == pytest.approx(stale, rel=1e-6)  # exact resume: the same step 6
    assert [e.step for e in acc.Images("samples")] == [4, 8]
    elapsed = [e.value for e in acc.Scalars("train/elapsed_sec")]
    assert elapsed == sorted(elapsed)
