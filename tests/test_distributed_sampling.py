"""genflow-sample over ranks (issue 16): any world size gives bit-identical samples, shards resume,
a failing rank fails every rank in one line without a hang, PNGs round-trip to ``to_uint8``, and a
safetensors export samples exactly as its checkpoint; bad exports are refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import ROOT, finish, fit, free_port, launch, torchrun

from genflow.cli.export import main as export_main
from genflow.cli.sample import main as sample_main
from genflow.generate import default_shard_size, shard_ranges
from genflow.training.distributed import share
from genflow.utils import to_uint8

WORKER = str(ROOT / "tests" / "sample_worker.py")
SAMPLE = ["-m", "genflow.cli.sample"]


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("toy")
    fit(run, "trainer.steps=2", "trainer.ckpt_every=2")
    return run / "checkpoints" / "last.pt"


def flags(ckpt: Path, out: Path, *extra: str) -> list[str]:
    # --num-samples: torchrun's own parser would take --num for its --numa-binding
    return ["--ckpt", str(ckpt), "--out", str(out), "--sampler", "ddim", "--steps", "4", "--num-samples", "7",
            "--batch-size", "2", "--shard-size", "2", "--device", "cpu", "--no-progress", *extra]


def samples(out: Path) -> np.ndarray:
    return np.load(out / "samples.npz")["samples"]


def info(out: Path) -> dict:
    return json.loads((out / "info.json").read_text())


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_shards_split_over_ranks_cover_every_index_once():
    ranges = shard_ranges(7, 2)
    assert ranges == [range(0, 2), range(2, 4), range(4, 6), range(6, 7)]
    for world in (1, 2, 3, 5):
        taken = [i for r in range(world) for s in share(len(ranges), r, world) for i in ranges[s]]
        assert taken == list(range(7))


@pytest.mark.parametrize("num, batch, size", [(50_000, 256, 4 * 256), (2000, 250, 250), (7, 256, 256),
                                              (10**7, 256, 10 * 256)])
def test_the_default_shard_is_whole_batches_leaving_about_64_shards(num, batch, size):
    assert default_shard_size(num, batch) == size  # 50,000: 49 shards of 4 batches; at most 10 batches


def test_world_sizes_1_2_3_give_bit_identical_samples_and_a_rerun_draws_only_the_missing_shards(toy_ckpt, tmp_path):
    assert sample_main(flags(toy_ckpt, tmp_path / "one")) == 0
    assert sample_main(flags(toy_ckpt, tmp_path / "other", "--seed", "1")) == 0
    one = samples(tmp_path / "one")
    code, err = torchrun("--standalone", "--nproc_per_node=3", *SAMPLE, *flags(toy_ckpt, tmp_path / "three"))
    assert code == 0, err[-3000:]
    assert np.array_equal(samples(tmp_path / "three"), one)  # 4 shards of 7 samples over 3 ranks
    got = info(tmp_path / "three")
    assert (got["world_size"], got["shards"], got["shards_drawn"]) == (3, [[0, 2], [2, 4], [4, 6], [6, 7]], 4)
    # a crash: one shard lost, one cut short, one from other settings (seed 1); the first is complete
    shards = tmp_path / "three" / "shards"
    (shards / "shard-00000002-00000004.npz").unlink()
    cut = shards / "shard-00000004-00000006.npz"
    cut.write_bytes(cut.read_bytes()[:100])
    (shards / "shard-00000006-00000007.npz").write_bytes(
        (tmp_path / "other" / "shards" / "shard-00000006-00000007.npz").read_bytes())
    kept = (shards / "shard-00000000-00000002.npz").stat().st_mtime_ns
    code, err = torchrun("--standalone", "--nproc_per_node=2", *SAMPLE, *flags(toy_ckpt, tmp_path / "three"))
    assert code == 0, err[-3000:]
    got = info(tmp_path / "three")
    assert (got["world_size"], got["shards_reused"], got["shards_drawn"]) == (2, 1, 3)
    assert (shards / "shard-00000000-00000002.npz").stat().st_mtime_ns == kept
    assert np.array_equal(samples(tmp_path / "three"), one)
    assert not np.array_equal(samples(tmp_path / "other"), one)


def test_a_failing_rank_fails_every_rank_in_one_line_and_none_hangs(toy_ckpt, tmp_path):
    """Two plain processes with torchrun's variables (no agent to kill the survivor): rank 1 fails
    drawing; both exit 1 with one line each, and no samples.npz is written."""
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "FAIL_RANK": "1"}
    ranks = [subprocess.Popen([sys.executable, WORKER, *flags(toy_ckpt, tmp_path / "out")], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in (0, 1)]
    (code0, err0), (code1, err1) = (finish(rank, timeout=120) for rank in ranks)
    assert (code0, code1) == (1, 1), err0 + err1
    for err in (err0, err1):
        assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert "rank 1: " in err1 and "injected failure drawing samples" in err1
    assert err0.split("error: ")[1] == err1.split("error: ")[1]  # the same line on every rank
    assert not (tmp_path / "out" / "samples.npz").exists()


def test_cleanup_destroys_the_group_only_after_a_collectives_tensors_are_freed():
    """torch 2.4's Gloo teardown holds the GIL while it joins a worker that may still need the GIL
    to free a finished collective's tensor (a hang). Here a Future stands for that worker: it holds
    a noted tensor that Python has dropped, and a thread frees it later; cleanup must wait for it."""
    import threading
    import weakref

    import torch.distributed as dist

    from genflow.training import distributed

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        obj = {"rank 0": ("a", 1.5), "pad": b"x" * 1000}
        assert distributed.gather_objects(obj) == [obj]
        assert distributed.agree_max([3, 7], torch.device("cpu")) == [3, 7]
        tensor = torch.arange(3.0)
        holder = [torch.futures.Future()]
        holder[0].set_result([tensor])  # a reference outside Python, as a backend thread's
        distributed._sent(tensor)
        freed = weakref.ref(tensor)
        del tensor
        assert freed() is not None  # kept alive by the Future alone
        threading.Timer(0.2, holder.clear).start()
    finally:
        distributed.cleanup(wait=False)
    assert not dist.is_initialized()
    assert freed() is None and not distributed._IN_FLIGHT


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory) -> Path:
    """A class-conditional digits UNet (8x8, one channel) under DDPM, trained for one step."""
    from test_training import tiny

    from genflow.training import Trainer, compose

    run = tmp_path_factory.mktemp("digits")
    overrides = [o for o in tiny(run) if not o.startswith(("data", "model", "process"))]
    Trainer(compose([*overrides, "model.channels=8", "model.norm_groups=8", "model.num_classes=10",
                     "trainer.cond_drop_prob=0.1", "trainer.steps=1", "trainer.ckpt_every=1"])).fit()
    return run / "checkpoints" / "last.pt"


def test_the_png_folder_round_trips_to_to_uint8_and_a_rerun_fills_in_lost_pngs_and_labels(digits_ckpt, tmp_path):
    from PIL import Image

    out, pngs = tmp_path / "out", tmp_path / "png"
    argv = ["--ckpt", str(digits_ckpt), "--out", str(out), "--sampler", "ddim", "--steps", "2", "--num", "5",
            "--batch-size", "2", "--no-progress", "--png-dir", str(pngs), "--class", "0,2", "--guidance", "1"]
    assert sample_main(argv) == 0
    x = torch.from_numpy(samples(out))
    assert np.load(out / "samples.npz")["labels"].tolist() == [0, 2, 0, 2, 0]  # merged from 3 shards
    assert sorted(p.name for p in pngs.iterdir()) == [f"00000{i}.png" for i in range(5)]
    read = np.stack([np.asarray(Image.open(pngs / f"{i:06d}.png")) for i in range(5)])
    assert read.dtype == np.uint8 and np.array_equal(read, to_uint8(x)[:, 0].numpy())
    assert info(out)["png_rounding"] == "edm" and (out / "grid.png").is_file()
    (pngs / "000003.png").unlink()
    assert sample_main(argv) == 0
    assert info(out)["shards_reused"] == 3 and np.array_equal(np.asarray(Image.open(pngs / "000003.png")), read[3])


def test_png_dir_needs_images(toy_ckpt, tmp_path, capsys):
    assert sample_main(flags(toy_ckpt, tmp_path / "out", "--png-dir", str(tmp_path / "png"))) == 2
    assert "--png-dir needs images of 1 or 3 channels" in one_line(capsys)


# --- genflow-export --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(toy_ckpt, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "model.safetensors"
    assert export_main(["--ckpt", str(toy_ckpt), "--out", str(path)]) == 0
    return path


def test_an_export_samples_exactly_as_its_checkpoint_without_unpickling(toy_ckpt, exported, tmp_path, monkeypatch):
    assert sample_main(flags(toy_ckpt, tmp_path / "ckpt")) == 0

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load called on an export")

    monkeypatch.setattr(torch, "load", no_pickle)
    assert sample_main(flags(exported, tmp_path / "export")) == 0
    assert np.array_equal(samples(tmp_path / "export"), samples(tmp_path / "ckpt"))
    assert info(tmp_path / "export")["step"] == 2


def test_genflow_eval_takes_an_export_in_place_of_its_checkpoint(toy_ckpt, exported, capsys):
    from genflow.cli.evaluate import main as eval_main

    nll = ["nll", "--num", "8", "--method", "rk4", "--steps", "4", "--no-progress"]
    results = []
    for path in (toy_ckpt, exported):
        assert eval_main([*nll, "--ckpt", str(path)]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1]  # the same weights, the same probes: the same number
    assert eval_main([*nll, "--ckpt", str(exported), "--no-ema"]) == 2
    assert "holds only the EMA weights; drop --no-ema" in one_line(capsys)


def rewrite(source: Path, target: Path, edit) -> Path:
    """``source``'s tensors and metadata, changed by ``edit(tensors, metadata)``, saved at ``target``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    edit(tensors, meta)
    save_file(tensors, str(target), metadata=meta)
    return target


def drop_one(t, m):
    t.pop(sorted(t)[0])


def add_one(t, m):
    t["extra.weight"] = torch.zeros(2)


def reshape_one(t, m):
    key = sorted(t)[0]
    t[key] = torch.zeros(*t[key].shape, 2)


@pytest.mark.parametrize("edit, message", [
    (drop_one, "lacks tensor(s) for its net: 1, e.g."),
    (add_one, "has extra tensor(s) for its net: 1, e.g. extra.weight"),
    (reshape_one, "has wrongly shaped tensor(s) for its net: 1, e.g."),
    (lambda t, m: m.pop("format"), "is not a genflow export (no format tag 'genflow-safetensors-1'"),
    (lambda t, m: m.update(config=json.dumps({"model": {"name": "no_such_net"}, "process": {}})),
     "its config cannot be rebuilt"),
    (lambda t, m: m.update(config="{not json"), "its metadata cannot be read (JSONDecodeError"),
])
def test_an_export_with_wrong_tensors_or_a_foreign_config_is_refused_in_one_line(exported, tmp_path, capsys, edit,
                                                                                   message):
    bad = rewrite(exported, tmp_path / "bad.safetensors", edit)
    assert sample_main(flags(bad, tmp_path / "out")) == 1
    assert message in one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_damaged_and_foreign_files_named_safetensors_are_refused_in_one_line(toy_ckpt, exported, tmp_path, capsys):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(exported.read_bytes()[:-10])
    pickled = tmp_path / "ckpt.safetensors"
    pickled.write_bytes(toy_ckpt.read_bytes())  # a torch checkpoint (zip and pickle) under the name
    for path in (cut, pickled):
        assert sample_main(flags(path, tmp_path / "out")) == 1
        assert f"cannot read {path} (truncated or not a safetensors file)" in one_line(capsys)
    assert sample_main(flags(exported, tmp_path / "out", "--no-ema")) == 2
    assert "holds only the EMA weights; drop --no-ema" in one_line(capsys)
    assert export_main(["--ckpt", str(toy_ckpt), "--out", str(tmp_path / "model.pt")]) == 2
    assert "--out must end in .safetensors" in one_line(capsys)


# --- genflow-eval fid: generate and score in one command -------------------------------------------------------


def test_fid_draws_as_genflow_sample_and_scores_as_fd_at_world_1_and_2(toy_ckpt, tmp_path, capsys):
    from genflow.cli.evaluate import main as eval_main

    assert sample_main(flags(toy_ckpt, tmp_path / "drawn")) == 0
    capsys.readouterr()
    assert eval_main(["fd", "--ckpt", str(toy_ckpt), "--samples", str(tmp_path / "drawn" / "samples.npz"),
                      "--device", "cpu"]) == 0
    fd = json.loads(capsys.readouterr().out)
    # fid's own flags (--ckpt, --num, --seed, --device, --out) and genflow-sample's, in any order
    fid_flags = ["fid", "--ckpt", str(toy_ckpt), "--sampler", "ddim", "--num-samples", "7", "--steps", "4",
                 "--batch-size", "2", "--shard-size", "2", "--device", "cpu", "--no-progress"]
    assert eval_main([*fid_flags, "--out", str(tmp_path / "fid1")]) == 0
    one = json.loads(capsys.readouterr().out)
    assert np.array_equal(samples(tmp_path / "fid1"), samples(tmp_path / "drawn"))
    assert one["value"] == fd["value"] and one["split"] == "train" and one["features"] == "raw vectors"
    assert one["generated"]["sampler"]["name"] == "ddim" and one["generated"]["num"] == 7
    agent = launch("--standalone", "--nproc_per_node=2", "-m", "genflow.cli.evaluate", *fid_flags,
                   "--out", str(tmp_path / "fid2"))
    out, err = agent.communicate(timeout=180)
    assert agent.returncode == 0, err[-3000:]
    assert np.array_equal(samples(tmp_path / "fid2"), samples(tmp_path / "drawn"))
    two = json.loads(out.strip().splitlines()[-1])  # rank 0's line; the other rank prints nothing
    assert two["world_size"] == 2 and two["generated"]["world_size"] == 2
    assert two["value"] == pytest.approx(one["value"], rel=1e-6, abs=1e-12)


def test_fid_refuses_a_bad_sampler_flag_and_other_commands_unknown_flags_in_one_line(toy_ckpt, tmp_path, capsys):
    from genflow.cli.evaluate import main as eval_main

    assert eval_main(["fid", "--ckpt", str(toy_ckpt), "--out", str(tmp_path / "o"), "--steps", "x"]) == 2
    assert "fid (genflow-sample's flags): argument --steps: invalid int value: 'x'" in one_line(capsys)
    assert eval_main(["fd", "--ckpt", str(toy_ckpt), "--samples", "s.npz", "--sampler", "ddim"]) == 2
    assert "unrecognized arguments: --sampler ddim" in one_line(capsys)
    assert not (tmp_path / "o").exists()
