"""The FID protocol and distributed evaluation (issue 16): to_uint8 against a hand-written
reference, the dataset's 8-bit levels round-tripping, the same images as a tensor, a PNG folder and
an ADM npz giving one FD, EDM's and ADM's reference files read (and malformed ones refused in one
line), and fd / pr / nll under real torchrun (Gloo, 2 ranks) equal to one process.

The Inception network is randomly initialized (the real FID weights are not on this machine):
these tests check the chain of conversions and the bookkeeping, not published FIDs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from test_inception import random_state

from genflow.cli.evaluate import main
from genflow.training import Trainer, checkpoint, compose
from genflow.utils import to_uint8

ROOT_TOY = ["data=toy2d", "data.size=512", "model=mlp", "model.hidden=32", "model.depth=1", "process=flow",
            "trainer.batch_size=32", "trainer.steps=3", "trainer.ckpt_every=3", "trainer.sample_every=0",
            "trainer.num_samples=4", "sampler.steps=4", "trainer.progress=false", "trainer.device=cpu"]


def reference_uint8(x: float, rounding: str) -> int:
    """By hand: EDM floor(x * 127.5 + 128), ADM floor((x + 1) * 127.5), both clipped to 0..255."""
    value = x * 127.5 + 128 if rounding == "edm" else (x + 1) * 127.5
    return min(255, max(0, math.floor(value)))


EDGES = [-1.0, 1.0, 0.0, -1 - 1e-9, 1 + 1e-9, -3.0, 7.0, 1 - 1e-9, -1 + 1e-9, 1 / 127.5, -1 / 255, 1 / 255,
         (200 - 128) / 127.5, (200 - 128) / 127.5 - 1e-12, (200 - 127.5) / 127.5, (200 - 127.5) / 127.5 - 1e-12]


@pytest.mark.parametrize("rounding", ["edm", "adm"])
def test_to_uint8_matches_a_hand_written_reference_on_edge_values(rounding):
    x = torch.tensor(EDGES, dtype=torch.float64)
    assert to_uint8(x, rounding).tolist() == [reference_uint8(v, rounding) for v in EDGES]
    assert to_uint8(x, rounding).dtype == torch.uint8
    # -1 and 1 are 0 and 255 both ways; just inside 1, EDM rounds up to 255, ADM truncates to 254
    assert to_uint8(torch.tensor([-1.0, 1.0, 1 - 1e-9], dtype=torch.float64), rounding).tolist() == \
        [0, 255, 255 if rounding == "edm" else 254]
    # literal values of the published code: x = 0 is EDM's 0 * 127.5 + 128 = 128, ADM's (0 + 1) * 127.5 -> 127
    assert to_uint8(torch.zeros(1), rounding).item() == (128 if rounding == "edm" else 127)


def test_to_uint8_refuses_nan_and_inf_naming_the_count():
    x = torch.tensor([0.0, float("nan"), float("inf"), -float("inf"), 0.5])
    with pytest.raises(ValueError, match=r"^3 of 5 image values are NaN or inf"):
        to_uint8(x)
    with pytest.raises(ValueError, match="rounding must be one of edm, adm"):
        to_uint8(x[:1], "round")


def test_the_datasets_8_bit_levels_round_trip_through_edm_rounding_not_adm_truncation():
    """CIFAR-10's images reach genflow as ToTensor + Normalize(0.5, 0.5) of uint8: EDM's rounding
    gives every one of the 256 values back; ADM's truncation lowers 63 of them by one (why the
    reference images always go through nearest rounding)."""
    from genflow.data.images import _to_unit_range

    k = np.arange(256, dtype=np.uint8).reshape(16, 16)
    x = _to_unit_range()(Image.fromarray(k))
    assert torch.equal(to_uint8(x, "edm")[0], torch.from_numpy(k))
    assert int((to_uint8(x, "adm")[0] != torch.from_numpy(k)).sum()) == 63


def test_the_protocol_feeds_inception_the_published_input_scalings():
    from genflow.metrics.fid import Protocol

    k = torch.arange(256, dtype=torch.uint8)
    torch.testing.assert_close(Protocol(scaling="tf").network_input(k), (k.float() - 128) / 128, rtol=0, atol=0)
    torch.testing.assert_close(Protocol(scaling="pytorch-fid").network_input(k), 2 * (k.float() / 255) - 1,
                               rtol=0, atol=0)
    # literal ends: the TF graph maps 0 and 255 to -1 and 127/128, pytorch-fid to -1 and 1
    assert Protocol(scaling="tf").network_input(k[[0, 255]]).tolist() == [-1.0, 0.9921875]
    assert Protocol(scaling="pytorch-fid").network_input(k[[0, 255]]).tolist() == [-1.0, 1.0]
    x = torch.tensor([1 - 1e-6, -1.0])  # samples: the chosen rounding; reference images: always nearest
    assert Protocol(rounding="adm").quantize(x).tolist() == [254, 0]
    assert Protocol(rounding="adm").quantize(x, reference=True).tolist() == [255, 0]


# --- genflow-eval fd on files -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """Random FID-kind Inception weights, a checkpoint naming the digits, 3 training digits as uint8."""
    from genflow.data import digits

    folder = tmp_path_factory.mktemp("fid")
    torch.save(random_state("fid"), folder / "fid.pth")
    checkpoint.save({"step": 0, "config": {"data": {"name": "digits"}}, "model": {}}, folder)
    images = to_uint8(digits("train").tensors[0][:3])  # samples: 3 training digits, as 8-bit images
    return folder, images


def run(capsys, *argv) -> tuple[int, dict | str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]) if code == 0 else err.strip()


def fd_argv(folder, samples, *extra):
    return ["fd", "--ckpt", folder / "last.pt", "--samples", samples, "--split", "test", "--num", "3",
            "--inception-weights", folder / "fid.pth", "--batch-size", "5", *extra]


def test_one_fd_from_a_tensor_a_png_folder_and_an_adm_npz_and_from_edm_and_adm_reference_files(
        setting, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GENFLOW_CACHE", str(tmp_path / "cache"))
    folder, images = setting
    np.savez(tmp_path / "genflow.npz", samples=(images.float() / 127.5 - 1).numpy())  # the levels, as floats
    (tmp_path / "png").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy()).save(tmp_path / "png" / f"{i:06d}.png")
    np.savez(tmp_path / "adm.npz", arr_0=images.permute(0, 2, 3, 1).numpy())
    results = {name: run(capsys, *fd_argv(folder, tmp_path / name)) for name in ("genflow.npz", "png", "adm.npz")}
    assert all(code == 0 for code, _ in results.values()), results
    values = {name: r["value"] for name, (_, r) in results.items()}
    assert values["genflow.npz"] > 1e-3 and all(v == pytest.approx(values["png"], rel=1e-6) for v in values.values())
    first = results["genflow.npz"][1]
    assert [r["samples_layout"] for _, r in results.values()] == ["genflow npz", "png folder", "adm npz"]
    assert first["conversion"] == {"rounding": "edm", "reference_rounding": "edm", "scaling": "tf"}
    assert first["split"] == "test" and (first["samples"], first["data"], first["world_size"]) == (3, 3, 1)
    assert first["feature_space"].startswith("inception-v3 fid sha256:")
    # EDM's layout: the split's statistics (from genflow's cache) as mu, sigma; ADM's: its uint8 images
    with np.load(first["reference_cache"]) as f:
        np.savez(tmp_path / "edm_ref.npz", mu=f["mu"], sigma=f["sigma"])
        np.savez(tmp_path / "adm_ref_stats.npz", arr_0=np.zeros((1, 2, 2, 3), np.uint8), mu=f["mu"], sigma=f["sigma"],
                 mu_s=f["mu"][:3], sigma_s=f["sigma"][:3, :3])
    from genflow.data import digits

    test = to_uint8(digits("test").tensors[0][:3])
    np.savez(tmp_path / "adm_ref.npz", arr_0=test.permute(0, 2, 3, 1).numpy())
    for name, layout in [("edm_ref", "edm"), ("adm_ref_stats", "adm statistics"), ("adm_ref", "adm images")]:
        code, result = run(capsys, *fd_argv(folder, tmp_path / "png", "--ref", tmp_path / f"{name}.npz"))
        assert code == 0, result
        assert result["value"] == pytest.approx(values["png"], rel=1e-6), name
        assert result["reference"] == f"file ({layout})" and result["split"] is None
        assert len(result["reference_sha256"]) == 64
    # the rounding and scaling are choices: another choice, another number, recorded
    code, adm = run(capsys, *fd_argv(folder, tmp_path / "genflow.npz", "--scaling", "pytorch-fid"))
    assert code == 0 and adm["conversion"]["scaling"] == "pytorch-fid" and adm["value"] != values["png"]


BAD_REFERENCES = {
    "keys": ({"mean": np.zeros(2048), "cov": np.eye(2048)}, "holds ['cov', 'mean']; expected EDM's"),
    "dims": ({"mu": np.zeros(64), "sigma": np.eye(64)}, "statistics of 64-d features, but the feature space gives 2048"),
    "square": ({"mu": np.zeros(2048), "sigma": np.zeros((2048, 4))}, "they must be (d,) and (d, d)"),
    "finite": ({"mu": np.full(2048, np.nan), "sigma": np.eye(2048)}, "2048 values of mu and sigma are NaN or inf"),
    "images": ({"arr_0": np.zeros((2, 8, 8), np.uint8)}, "'arr_0' must be uint8 images [n, H, W, 1 or 3]"),
}


@pytest.mark.parametrize("case", sorted(BAD_REFERENCES))
def test_a_malformed_reference_file_is_refused_in_one_line_with_exit_1(setting, tmp_path, capsys, case):
    folder, images = setting
    arrays, message = BAD_REFERENCES[case]
    np.savez(tmp_path / "ref.npz", **arrays)
    np.savez(tmp_path / "adm.npz", arr_0=images.permute(0, 2, 3, 1).numpy())
    code, err = run(capsys, *fd_argv(folder, tmp_path / "adm.npz", "--ref", tmp_path / "ref.npz"))
    assert code == 1 and err.count("\n") == 0 and message in err, err


def test_malformed_samples_are_refused_in_one_line(setting, tmp_path, capsys):
    folder, images = setting
    np.savez(tmp_path / "x.npz", images=images.numpy())
    code, err = run(capsys, *fd_argv(folder, tmp_path / "x.npz"))
    assert code == 1 and "holds ['images']; expected genflow's samples.npz" in err and "\n" not in err
    (tmp_path / "rgba").mkdir()
    Image.new("RGBA", (8, 8)).save(tmp_path / "rgba" / "0.png")
    code, err = run(capsys, *fd_argv(folder, tmp_path / "rgba"))
    assert code == 1 and "has mode RGBA; the samples must be 8-bit gray (L) or RGB PNGs" in err
    np.savez(tmp_path / "rgb.npz", arr_0=np.zeros((3, 8, 8, 3), np.uint8))  # RGB but the digits are gray
    code, err = run(capsys, *fd_argv(folder, tmp_path / "rgb.npz"))
    assert code == 2 and "samples have shape (3, 8, 8) but the data (1, 8, 8)" in err


# --- under torchrun -------------------------------------------------------------------------------------------

def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_fd_pr_and_nll_under_torchrun_equal_one_process_and_a_failing_rank_ends_both(setting, tmp_path, capsys,
                                                                                    monkeypatch):
    """World 2 against world 1: FD to 1e-6 (Inception through the FID protocol, 3 PNG samples and 3
    reference images, each split 2 + 1), precision/recall (raw vectors) exactly, nll per example
    exactly (dopri5: the batches and each example's probes are the same for any world size). A
    corrupt PNG in rank 1's share: both ranks exit 1 with the same one line, no hang."""
    from test_training import launch

    folder, images = setting
    (tmp_path / "png").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy()).save(tmp_path / "png" / f"{i:06d}.png")
    (tmp_path / "bad").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy()).save(tmp_path / "bad" / f"{i:06d}.png")
    (tmp_path / "bad" / "000002.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Trainer(compose([*ROOT_TOY, f"run_dir={tmp_path / 'toy'}"])).fit()
    toy = tmp_path / "toy" / "checkpoints" / "last.pt"
    vectors = torch.randn(41, 2, generator=torch.Generator().manual_seed(3))
    np.savez(tmp_path / "vectors.npz", samples=vectors.numpy())
    commands = [
        [str(a) for a in fd_argv(folder, tmp_path / "png")],
        ["pr", "--ckpt", str(toy), "--samples", str(tmp_path / "vectors.npz"), "--num", "43", "--k", "2"],
        ["nll", "--ckpt", str(toy), "--num", "30", "--batch-size", "8", "--no-progress", "--per-example",
         str(tmp_path / "NAME.npz")],
    ]
    failing = [str(a) for a in fd_argv(folder, tmp_path / "bad")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun workers: bitwise needs one summation order
    monkeypatch.setenv("GENFLOW_CACHE", str(tmp_path / "cache1"))
    try:
        single = [run(capsys, *[a.replace("NAME", "one") for a in argv]) for argv in commands]
    finally:
        torch.set_num_threads(threads)
    assert all(code == 0 for code, _ in single), single
    commands = [[a.replace("NAME", "two") for a in argv] for argv in commands]
    agent = launch("--standalone", "--nproc_per_node=2", "tests/eval_worker.py",
                   env={"GENFLOW_CACHE": str(tmp_path / "cache2"), "EVAL_COMMANDS": json.dumps([*commands, failing])})
    out, err = agent.communicate(timeout=300)
    assert agent.returncode == 1, err[-3000:]
    assert len(json_lines(out)) == 3, out
    fd, pr, nll = json_lines(out)  # rank 0 printed one line per command that succeeded; rank 1 nothing
    (_, fd1), (_, pr1), (_, nll1) = single
    assert fd["world_size"] == 2 and fd["reference"] == "computed" and (fd["samples"], fd["data"]) == (3, 3)
    assert fd["value"] == pytest.approx(fd1["value"], rel=1e-6) and fd1["value"] > 1e-3
    assert (pr["precision"], pr["recall"]) == (pr1["precision"], pr1["recall"]) and pr["samples"] == 41
    assert nll["examples"] == 30 and nll["batches"] == 4 and nll["world_size"] == 2
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "two.npz") as two:
        assert np.array_equal(one["value"], two["value"]) and np.array_equal(two["index"], np.arange(30))
    assert nll["value"] == nll1["value"] and nll["stderr"] == nll1["stderr"]
    lines = [line for line in err.splitlines() if line.startswith("genflow-eval: error:")]
    assert len(lines) == 2 and lines[0] == lines[1] and "rank 1: cannot read image" in lines[0], err[-3000:]


def test_an_examples_noise_depends_on_the_seed_and_its_index_only():
    from genflow.likelihood import example_noise

    u, probes = example_noise(range(0, 5), (1, 4, 4), draws=2, seed=7)
    u2, probes2 = example_noise(range(2, 5), (1, 4, 4), draws=2, seed=7)
    assert torch.equal(u[4:], u2) and torch.equal(probes[4:], probes2)  # rows: example by example, draws inside
    assert set(probes.unique().tolist()) == {-1.0, 1.0} and 0 <= u.min() and u.max() < 1 and u.dtype == torch.float64
    other, _ = example_noise(range(0, 5), (1, 4, 4), draws=2, seed=8)
    assert not torch.equal(other, u)


def test_score_takes_uint8_images_or_their_float_levels_alike(setting):
    """``fid.score`` (for freshly generated samples) through the protocol: uint8 images and the
    floats they stand for give one FD; with ADM's rounding, the FD of the truncated images."""
    from genflow.metrics import gaussian_statistics
    from genflow.metrics.fid import Protocol, levels, score
    from genflow.metrics.inception import inception_features

    folder, images = setting
    net = inception_features(folder / "fid.pth")
    reference = torch.flip(images, dims=[-1])  # other images: a nonzero distance
    mu, sigma = gaussian_statistics(net(Protocol().network_input(reference)))
    edm, adm = (lambda x, p=Protocol(rounding=r): net(p.network_input(x)) for r in ("edm", "adm"))
    as_uint8 = score(images, mu, sigma, edm)
    assert as_uint8 > 1e-3 and score(levels(images), mu, sigma, edm) == pytest.approx(as_uint8, rel=1e-9)
    # with ADM's rounding the floats are truncated first: the FD of exactly those 8-bit images
    truncated = to_uint8(levels(images), "adm")
    assert score(levels(images), mu, sigma, adm) == pytest.approx(score(truncated, mu, sigma, edm), rel=1e-9)
