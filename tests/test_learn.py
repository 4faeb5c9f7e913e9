"""Learned step schedules (issue 15, item 4) and the checks of a user's grid (item 3), on the exact
Gaussian-mixture oracle: the search lowers its objective, keeps the grid strictly decreasing inside
the path's range, and its grid beats every fixed schedule on held-out prior noise."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from genflow.processes import DDPM, VPSDE
from genflow.samplers import SCHEDULES, learn_schedule, load_schedule, run
from genflow.samplers.learn import grid_samplers, levels_of, log_range, logits_of, mean_squared, trimmed_squared
from genflow.samplers.solvers import scaled_sigma
from genflow.testing import GaussianMixture

F64 = torch.float64


def ring() -> GaussianMixture:
    angles = [2 * math.pi * k / 8 for k in range(8)]
    return GaussianMixture.isotropic([[2 * math.cos(a), 2 * math.sin(a)] for a in angles], [0.15] * 8)


PROCESSES = {"ddpm": lambda: DDPM(timesteps=1000), "vpsde": lambda: VPSDE()}
TEACHER = {"sampler": "dpmpp_2m", "steps": 100}


def held_out(process, n=1000, seed=12345):
    return process.prior_std() * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def learned(process_name="ddpm", sampler="dpmpp_2m", nfe=5, iterations=120, **kw):
    process = PROCESSES[process_name]()
    model = ring().model(process)
    schedule = learn_schedule(model, process, sampler=sampler, nfe=nfe, shape=(2,), draws=128, teacher=TEACHER,
                              iterations=iterations, dtype=F64, progress=False, **kw)
    return process, model, schedule


@pytest.fixture(scope="module")
def ddpm_2m():
    return learned()


def test_the_softmax_gaps_make_a_strictly_decreasing_grid_inside_the_range_and_invert():
    span = log_range(VPSDE())
    rng = np.random.default_rng(0)
    for _ in range(50):
        z = rng.uniform(-10, 10, size=6)
        s = levels_of(z, span)
        assert len(s) == 5 and all(a > b for a, b in zip(s, s[1:]))
        assert math.exp(span[1]) < s[-1] and s[0] < math.exp(span[0])
    levels = [50.0, 3.0, 0.4, 0.01]
    assert np.allclose(levels_of(logits_of(levels, span), span), levels, rtol=1e-12)
    fixed = (span[0], math.log(0.01))  # the last level kept at the bottom of the span
    assert np.allclose(levels_of(logits_of(levels, fixed, True), fixed, True), levels, rtol=1e-12)
    assert levels_of(rng.uniform(-10, 10, size=4), fixed, True)[-1] == pytest.approx(0.01, rel=1e-15)


def test_with_fixed_ends_the_last_level_is_the_fixed_schedules():
    process, _, schedule = learned("vpsde", "dpmpp_2m", 5, iterations=30, learn_ends=False)
    assert schedule.sigmas[-1] == pytest.approx(0.002, rel=1e-12) and schedule.objective["ends"] == "fixed"
    assert all(a > b for a, b in zip(schedule.sigmas, schedule.sigmas[1:]))
    assert schedule.objective["after"] < schedule.objective["before"]


def test_the_trimmed_distance_leaves_out_the_draws_farthest_from_the_teacher():
    """Per draw the mean squared distance per coordinate; the trimmed mean keeps the 95 % nearest
    (19 of 20: one draw in another mode does not count), the plain mean keeps all, at least one is kept."""
    target = torch.zeros(20, 3, 2, dtype=F64)
    student = torch.full_like(target, 0.1)
    student[7] = 10.0  # a draw that changed mode
    assert trimmed_squared(student, target) == pytest.approx(0.01, rel=1e-12)
    assert mean_squared(student, target) == pytest.approx((19 * 0.01 + 100.0) / 20, rel=1e-12)
    student[:10] *= torch.arange(1, 11, dtype=F64).reshape(10, 1, 1)  # per draw 0.01 k^2 (draw 7: 100 * 64)
    per_draw = sorted([0.01 * k**2 for k in range(1, 11) if k != 8] + [6400.0] + [0.01] * 10)
    assert trimmed_squared(student, target) == pytest.approx(sum(per_draw[:19]) / 19, rel=1e-12)
    assert trimmed_squared(student, target, keep=0.01) == pytest.approx(0.01, rel=1e-12)
    ten = torch.arange(1.0, 11.0, dtype=F64).reshape(10, 1)  # 10 draws: the 9 nearest kept, rounded down
    assert trimmed_squared(ten, torch.zeros_like(ten)) == pytest.approx(sum(k**2 for k in range(1, 10)) / 9, rel=1e-12)


def test_learning_by_the_trimmed_distance_lowers_it_from_the_best_fixed_grid_s():
    """objective="trimmed": the start is the fixed schedule with the smallest trimmed distance on the
    training draws (recomputed here from the same draws), the search lowers it, the file says which."""
    process, model, schedule = learned("vpsde", "lms", 5, iterations=60, objective="trimmed")
    o = schedule.objective
    assert o["kind"] == "trimmed" and "95%" in o["name"] and o["after"] < o["before"] == o["fixed"][o["start"]]
    noise = process.prior_std() * torch.randn(128, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    target = run(model, process, sampler=TEACHER["sampler"], steps=TEACHER["steps"], noise=noise).samples
    fixed = {name: trimmed_squared(run(model, process, sampler="lms", steps=schedule.steps, noise=noise,
                                       schedule=name).samples, target) for name in SCHEDULES}
    assert fixed == pytest.approx(o["fixed"], rel=1e-9) and o["start"] == min(fixed, key=fixed.get)
    student = run(model, process, sampler="lms", steps=schedule.steps, noise=noise, **schedule.options()).samples
    assert trimmed_squared(student, target) == pytest.approx(o["after"], rel=1e-9)


@pytest.mark.parametrize("process_name,sampler,nfe", [("ddpm", "dpmpp_2m", 5), ("vpsde", "unipc", 5),
                                                      ("vpsde", "heun", 5), ("ddpm", "lms", 10)])
def test_the_learned_grid_beats_every_fixed_schedule_on_held_out_noise(process_name, sampler, nfe):
    """Objective lowered on the training draws; on other prior draws the learned grid is closer to
    the teacher than logsnr, karras and time at the same steps, and stays strictly decreasing
    inside the path's range (times in [t_min, t_max], levels in [s(t_min), s(t_max)])."""
    process, model, schedule = learned(process_name, sampler, nfe)
    assert schedule.nfe <= nfe and schedule.objective["after"] < schedule.objective["before"]
    assert schedule.objective["before"] == min(schedule.objective["fixed"].values())
    times, s = schedule.times, schedule.sigmas
    assert times[0] == process.t_max and all(a > b for a, b in zip(times, times[1:])) and times[-1] >= process.t_min
    assert scaled_sigma(process, process.t_max) > s[0] and all(a > b for a, b in zip(s, s[1:]))
    assert s[-1] > scaled_sigma(process, process.t_min)
    x = held_out(process)
    target = run(model, process, sampler=TEACHER["sampler"], steps=TEACHER["steps"], noise=x).samples
    grids = {"learned": schedule.options(), **{name: {"schedule": name} for name in SCHEDULES}}
    samples = {name: run(model, process, sampler=sampler, steps=schedule.steps, noise=x, **options).samples
               for name, options in grids.items()}
    dist = {name: mean_squared(out, target) for name, out in samples.items()}
    assert all(dist["learned"] < 0.8 * dist[name] for name in SCHEDULES), dist
    if nfe == 5:  # and nearer the data: |nll_gap| (bench_samplers.py's metric) below every fixed grid's
        data = ring()
        entropy = -data.log_prob(data.sample(20_000, generator=torch.Generator().manual_seed(1))).mean().item()
        gap = {name: abs(-data.log_prob(out).mean().item() - entropy) for name, out in samples.items()}
        assert all(gap["learned"] < 0.7 * gap[name] for name in SCHEDULES), gap


def test_the_schedule_file_round_trips_and_runs_as_schedule_learned(ddpm_2m, tmp_path):
    process, model, schedule = ddpm_2m
    path = schedule.save(tmp_path / "s.json")
    data = json.loads(path.read_text())
    assert data["format"] == "genflow-schedule" and data["version"] == 1 and data["sampler"] == "dpmpp_2m"
    assert data["teacher"] == TEACHER and data["draws"] == 128 and data["seed"] == 0 and data["nfe"] == 5
    back = load_schedule(path)
    assert back == schedule
    x = held_out(process, n=16)
    by_levels = run(model, process, sampler="dpmpp_2m", steps=5, noise=x, sigmas=schedule.sigmas).samples
    by_file = run(model, process, sampler="dpmpp_2m", steps=5, noise=x, schedule_file=str(path)).samples
    named = run(model, process, sampler="dpmpp_2m", steps=5, noise=x, schedule="learned",
                schedule_file=str(path)).samples
    by_times = run(model, process, sampler="dpmpp_2m", steps=5, noise=x, times=schedule.times).samples
    assert torch.equal(by_file, by_levels) and torch.equal(named, by_levels)
    assert torch.allclose(by_times, by_levels, atol=1e-9)


def write(path, **changes):
    path.write_text(json.dumps(changes))
    return str(path)


def test_a_bad_schedule_file_is_refused_in_one_line(ddpm_2m, tmp_path):
    process, model, schedule = ddpm_2m
    good = json.loads(schedule.save(tmp_path / "good.json").read_text())
    (tmp_path / "text.json").write_text("not json {")
    cases = [
        (dict(schedule="learned"), process, "schedule 'learned' needs schedule_file=PATH"),
        (dict(schedule_file=str(tmp_path / "none.json")), process, "schedule file .*none.json does not exist"),
        (dict(schedule_file=str(tmp_path / "text.json")), process, "schedule file .*text.json is not JSON"),
        (dict(schedule_file=write(tmp_path / "a.json", format="other")), process, "is not a genflow schedule"),
        (dict(schedule_file=write(tmp_path / "b.json", **{**good, "version": 9})), process, "has format version 9"),
        (dict(schedule_file=write(tmp_path / "c.json", **{k: v for k, v in good.items() if k != "sigmas"})),
         process, "lacks sigmas$"),
        (dict(schedule_file=write(tmp_path / "d.json", **{**good, "sigmas": [1.0, "x"]})), process, "is malformed"),
        (dict(schedule_file=str(tmp_path / "good.json")), VPSDE(), "was learned for DDPM\\(timesteps=1000.* another "
                                                                   "noise schedule; it cannot run on VPSDE"),
        (dict(schedule_file=str(tmp_path / "good.json")), DDPM(timesteps=1000, beta_end=0.03), "another noise"),
        (dict(schedule_file=str(tmp_path / "good.json"), steps=6), process,
         "was learned for 5 steps \\(5 NFE\\); pass steps=5, not 6"),
        (dict(schedule_file=str(tmp_path / "good.json"), sampler="lms"), process,
         "was learned for sampler 'dpmpp_2m', not 'lms'"),
        (dict(schedule_file=str(tmp_path / "good.json"), denoise=False), process,
         "was learned with denoise=True; this sampler has denoise=False"),
        (dict(schedule_file=str(tmp_path / "good.json"), sigmas=[1.0]), process, "give one of schedule_file"),
        (dict(schedule_file=str(tmp_path / "good.json"), sigma_min=0.1), process, "sets its own ends"),
    ]
    for options, on, message in cases:
        options = {"sampler": "dpmpp_2m", "steps": 5, **options}
        with pytest.raises(ValueError, match=f"^sampler '{options['sampler']}': .*{message}") as err:
            run(lambda x, t: pytest.fail("no network call"), on, shape=(2, 2), **options)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("kw,message", [
    (dict(sampler="ddim"), "learn_schedule takes a sampler with a given grid \\(sigmas=\\): dpmpp_2m, .*got 'ddim'"),
    (dict(sampler="ode"), "learn_schedule takes .*got 'ode'"),
    (dict(nfe=1), "learn_schedule: nfe must be an integer >= 2; got 1"),
    (dict(draws=0), "learn_schedule: draws must be an integer >= 1; got 0"),
    (dict(objective="lpips"), "learn_schedule: objective must be one of mse, trimmed; got 'lpips'"),
    (dict(options={"sigmas": [1.0]}), "learn_schedule learns the grid; drop the grid option\\(s\\) sigmas"),
    (dict(options={"schedule": "karras"}), "learn_schedule learns the grid; drop the grid option\\(s\\) schedule$"),
    (dict(options={"order": 9}, sampler="lms"), "sampler 'lms': order must be an integer >= 1 and <= 4; got 9"),
    (dict(options={"eta": 1.0}), "sampler 'dpmpp_2m' takes no option\\(s\\) eta"),
])
def test_learn_schedule_refuses_bad_input_in_one_line(kw, message):
    process = VPSDE()
    with pytest.raises(ValueError, match=f"^{message}") as err:
        learn_schedule(lambda x, t: pytest.fail("no network call"), process, shape=(2,), progress=False, **kw)
    assert "\n" not in str(err.value)


def test_every_grid_sampler_can_be_learned_for():
    """Every sampler grid_samplers() offers learns a grid that lowers the objective (a few evaluations)."""
    from genflow.samplers import SAMPLERS
    assert set(grid_samplers()) >= {"dpmpp_2m", "dpmpp_3m", "heun", "lms", "ipndm", "unipc"}
    assert all("schedule_file" in SAMPLERS[name].options() for name in grid_samplers())
    process = VPSDE()
    model = ring().model(process)
    for name in grid_samplers():
        schedule = learn_schedule(model, process, sampler=name, nfe=4, shape=(2,), draws=8, teacher=TEACHER,
                                  iterations=6, progress=False)
        assert schedule.objective["after"] <= schedule.objective["before"], name


@pytest.mark.parametrize("grid,message", [
    (dict(times=[0.2, 0.5, 0.1], steps=4), "times must be strictly decreasing \\(from noise to data\\)"),
    (dict(sigmas=[8.0, 1.0, 1.0], steps=4), "sigmas must be strictly decreasing"),
    (dict(sigmas=[8.0, math.inf], steps=3), "sigmas must be a non-empty list of finite numbers > 0"),
    (dict(times=[1.5, 0.5], steps=3), "times must lie in \\[1e-05, 1\\] for VPSDE"),
    (dict(sigmas=[8.0, 1.0], steps=2), "the given sigmas make 3 steps"),
    (dict(sigmas=[8.0, 1.0], steps=3, schedule="nope"), "schedule must be one of logsnr, karras, time, learned"),
])
def test_a_bad_user_grid_is_refused_in_one_line(grid, message):
    with pytest.raises(ValueError, match=f"^sampler 'unipc': {message}") as err:
        run(lambda x, t: pytest.fail("no network call"), VPSDE(), sampler="unipc", shape=(2, 2), **grid)
    assert "\n" not in str(err.value)


def test_learn_a_schedule_for_a_checkpoint_and_sample_with_it(tmp_path, capsys):
    """genflow-learn-schedule writes a schedule file that genflow-sample --schedule-file runs; the
    samples are those of the same grid given as --sigmas."""
    from genflow.cli.learn import main as learn_main
    from genflow.cli.sample import main as sample_main
    from genflow.training import Trainer, compose

    run_dir = tmp_path / "run"
    Trainer(compose(["data=toy2d", "data.size=256", "model=mlp", "model.hidden=16", "model.depth=1", "process=ddpm",
                     "trainer.batch_size=32", "trainer.steps=1", "trainer.ckpt_every=1", "trainer.sample_every=0",
                     "trainer.num_samples=4", "trainer.progress=false", "trainer.device=cpu",
                     f"run_dir={run_dir}"])).fit()
    ckpt, path = str(run_dir / "checkpoints" / "last.pt"), tmp_path / "sched" / "lms-4.json"
    assert learn_main(["--ckpt", ckpt, "--out", str(path), "--sampler", "lms", "--order", "3", "--nfe", "4",
                       "--draws", "16", "--iterations", "20", "--teacher-steps", "20", "--objective", "trimmed",
                       "--no-progress"]) == 0
    assert f"wrote {path} (lms, 4 steps, 4 NFE" in capsys.readouterr().out
    schedule = load_schedule(path)
    assert schedule.settings["order"] == 3 and schedule.objective["after"] <= schedule.objective["before"]
    assert schedule.objective["kind"] == "trimmed"
    argv = ["--ckpt", ckpt, "--sampler", "lms", "--order", "3", "--steps", "4", "--num", "8", "--no-progress"]
    assert sample_main([*argv, "--schedule-file", str(path), "--out", str(tmp_path / "a")]) == 0
    assert sample_main([*argv, "--sigmas", ",".join(map(repr, schedule.sigmas)), "--out", str(tmp_path / "b")]) == 0
    a, b = (np.load(tmp_path / d / "samples.npz")["samples"] for d in "ab")
    assert np.array_equal(a, b) and json.loads((tmp_path / "a" / "info.json").read_text())["nfe_per_sample"] == 4
    assert sample_main([*argv[:4], "--order", "4", *argv[6:], "--schedule-file", str(path),
                        "--out", str(tmp_path / "c")]) == 2
    assert "was learned with order=3; this sampler has order=4" in capsys.readouterr().err
    # the shards' key holds the file's content: a file learned again under the same name is a new grid
    assert sample_main([*argv, "--schedule-file", str(path), "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "info.json").read_text())["shards_drawn"] == 0
    moved = json.loads(path.read_text())
    moved["sigmas"][1] = math.sqrt(moved["sigmas"][0] * moved["sigmas"][1])  # still strictly decreasing
    path.write_text(json.dumps(moved))
    assert sample_main([*argv, "--schedule-file", str(path), "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "info.json").read_text())["shards_reused"] == 0
    assert not np.array_equal(np.load(tmp_path / "a" / "samples.npz")["samples"], b)


@pytest.mark.parametrize("process_name", ["flow_matching", "vesde"])
def test_learning_on_a_flow_and_ve_keeps_the_range_and_round_trips_heuns_infinite_setting(process_name, tmp_path):
    """A flow's s(t_max) is infinite and VE's alpha is 1: the learned levels stay inside the log
    range, lower the objective, and heun's s_tmax = inf survives the JSON file."""
    from genflow.processes import PROCESSES as ALL
    process = ALL[process_name]()
    model = ring().model(process)
    schedule = learn_schedule(model, process, sampler="heun", nfe=5, shape=(2,), draws=32, teacher=TEACHER,
                              iterations=40, dtype=F64, progress=False)
    top, bottom = log_range(process)
    assert math.exp(top) > schedule.sigmas[0] and schedule.sigmas[-1] > math.exp(bottom)
    assert schedule.objective["after"] < schedule.objective["before"]
    back = load_schedule(schedule.save(tmp_path / "h.json"))
    assert back.settings["s_tmax"] == math.inf and back == schedule
    x = process.prior_std() * torch.randn(8, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    a = run(model, process, sampler="heun", steps=schedule.steps, noise=x, schedule_file=str(tmp_path / "h.json"))
    b = run(model, process, sampler="heun", steps=schedule.steps, noise=x, sigmas=schedule.sigmas)
    assert torch.equal(a.samples, b.samples) and a.nfe == schedule.nfe <= 5
