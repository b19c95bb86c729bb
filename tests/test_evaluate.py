"""Evaluation in the real CarRacing-v3 at a tiny size: serial and on Ray, baseline, video."""

from __future__ import annotations

import dataclasses
import json
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from fake_run import make_mdnrnn, make_run

from worldmodels import atomic, checkpoint
from worldmodels import evaluate as evaluate_module
from worldmodels.agent import WorldModel
from worldmodels.cli import main
from worldmodels.config import EvaluateConfig, VAEConfig
from worldmodels.evaluate import agent_digest, evaluate
from worldmodels.evolve.workers import SerialEvaluator
from worldmodels.models.controller import param_count
from worldmodels.models.vae import ConvVAE
from worldmodels.run import RunPaths


def _run_with_controller(tmp_path):
    run = make_run(tmp_path)
    params = np.random.default_rng(0).normal(0, 0.5, param_count(32, 16)).astype(np.float32)
    params[-2] = 2.0  # gas on, so the car moves and collects tiles
    np.save(RunPaths(run).controller, params)
    return run


def test_evaluate_real_env_serial_and_ray_agree(tmp_path, ray_session, capsys):
    run = _run_with_controller(tmp_path)
    config = EvaluateConfig(episodes=2, seed=5, max_steps=40, workers=0)
    serial = evaluate(run, config, progress=False)
    saved = json.loads(RunPaths(run).evaluation.read_text())
    assert saved["seeds"] == [5, 6] and len(saved["returns"]) == 2
    assert saved["steps"] == [40, 40]  # each episode's step count
    assert saved["mean"] == serial["mean"] == np.mean(saved["returns"])
    assert saved["min"] <= saved["mean"] <= saved["max"]
    # The car drives onto new tiles (+1000/N each) and pays 0.1 per frame.
    assert all(-4.0 - 1e-6 <= r for r in saved["returns"]) and saved["max"] > 0
    config.workers = 2
    capsys.readouterr()
    on_ray = evaluate(run, config, progress=True)
    np.testing.assert_allclose(on_ray["returns"], serial["returns"], rtol=1e-3, atol=1e-3)
    assert "2/2" in capsys.readouterr().err  # the bar counted each episode as it finished


def test_random_baseline_and_video_via_cli(tmp_path, capsys):
    run = _run_with_controller(tmp_path)
    video = tmp_path / "real.mp4"
    assert main(["evaluate", "--run", str(run), "--episodes", "1", "--max-steps", "12",
                 "--workers", "0", "--policy", "random", "--video", str(video)]) == 0
    out = capsys.readouterr().out
    assert "evaluate (random)" in out and "+-" in out
    baseline = json.loads((RunPaths(run).root / "evaluation_random.json").read_text())
    assert baseline["policy"] == "random" and baseline["episodes"] == 1
    assert not RunPaths(run).evaluation.exists()
    frames = iio.imread(video)
    assert frames.shape[:3] == (12, 256, 520)  # real | reconstruction, 4x upscaled


def test_the_run_s_evaluation_is_not_replaced_by_other_episodes(tmp_path, capsys):
    run = _run_with_controller(tmp_path)
    paths = RunPaths(run)
    play = ["evaluate", "--run", str(run), "--workers", "0", "--max-steps", "12"]
    assert main([*play, "--episodes", "2"]) == 0
    kept = paths.evaluation.read_text()
    assert json.loads(kept)["max_steps"] == 12
    for other in (["--episodes", "1"], ["--episodes", "2", "--seed", "9"],
                  ["--episodes", "2", "--max-steps", "11"]):
        capsys.readouterr()
        assert main([*play, *other]) == 2
        err = capsys.readouterr().err.strip()
        assert "evaluation.json holds 2 other episodes (from seed 1000000, up to 12 steps)" in err
        assert err.endswith("give --out FILE") and len(err.splitlines()) == 1
        assert paths.evaluation.read_text() == kept
    elsewhere = tmp_path / "one.json"
    assert main([*play, "--episodes", "1", "--out", str(elsewhere)]) == 0
    assert str(elsewhere) in capsys.readouterr().out
    assert json.loads(elsewhere.read_text())["episodes"] == 1
    assert paths.evaluation.read_text() == kept
    assert main([*play, "--episodes", "2"]) == 0  # the same episodes (say for a new C) replace it
    paths.evaluation.write_text("[1, 2]")
    capsys.readouterr()
    assert main([*play, "--episodes", "2"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "evaluation.json: not an evaluation summary; move it away or give --out FILE")


def test_a_snapshot_is_scored_as_the_run_would_be_holding_its_m_and_c(tmp_path, capsys):
    run = _run_with_controller(tmp_path / "a")
    paths = RunPaths(run)
    snap = paths.snapshot(3)
    snap.mkdir(parents=True)
    params = np.random.default_rng(1).normal(0, 0.5, param_count(32, 16)).astype(np.float32)
    params[-2] = 2.0
    np.save(snap / "controller.npy", params)
    m = make_mdnrnn(seed=7)
    checkpoint.save(snap / "mdnrnn.pt", m, m.config, {"kind": "mdnrnn", "epoch": 1})
    play = ["evaluate", "--run", str(run), "--workers", "0", "--max-steps", "30",
            "--episodes", "2"]
    assert main([*play, "--iteration", "3"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(snap / "evaluation.json"))
    scored = json.loads((snap / "evaluation.json").read_text())
    assert not paths.evaluation.exists()  # the run's own record is not touched
    holding = shutil.copytree(run, tmp_path / "b")  # the run with the snapshot's M and C
    for name in ("controller.npy", "mdnrnn.pt"):
        shutil.copy(snap / name, holding / name)
    assert main([*play[:2], str(holding), *play[3:]]) == 0
    held = json.loads(RunPaths(holding).evaluation.read_text())
    assert held["returns"] == scored["returns"] and held["agent"] == scored["agent"]
    assert main(play) == 0
    assert json.loads(paths.evaluation.read_text())["agent"] != scored["agent"]
    for bad, says in ((["--iteration", "4"], "iterations/04/mdnrnn.pt: missing; run "
                                             "`worldmodels iterate` first"),
                      (["--iteration", "3", "--policy", "random"],
                       "--iteration 3 names an agent; the random policy has none")):
        capsys.readouterr()
        assert main([*play, *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(says) and len(err.splitlines()) == 1


def test_missing_controller_is_a_one_line_error(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["evaluate", "--run", str(run), "--episodes", "1", "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "controller.npy: missing; run `worldmodels evolve` first" in err
    assert len(err.splitlines()) == 1


class InterruptAfter:
    """A serial evaluator whose run is interrupted (Ctrl-C) after `n` finished episodes."""

    def __init__(self, run, n: int):
        # One env: a task per episode, so the interrupt can fall between two episodes.
        self.inner = SerialEvaluator(WorldModel.from_run(run), envs=1)
        self.n, self.played = n, []

    def run(self, where, params, seeds, tau=1.0, max_steps=1000, bar=None, on_rows=None):
        def counted(lo, hi, values):
            on_rows(lo, hi, values)
            self.played.extend(np.asarray(seeds).ravel()[lo:hi].tolist())
            if len(self.played) == self.n:
                raise KeyboardInterrupt
        return self.inner.run(where, params, seeds, tau, max_steps, bar, counted)

    def close(self):
        pass


def test_an_interrupted_evaluation_keeps_its_finished_episodes(tmp_path):
    config = EvaluateConfig(episodes=3, seed=7, max_steps=8, workers=0)
    straight = _run_with_controller(tmp_path / "straight")
    want = evaluate(straight, config, progress=False)
    run = _run_with_controller(tmp_path / "broken")
    first = InterruptAfter(run, 2)
    with pytest.raises(KeyboardInterrupt):
        evaluate(run, config, progress=False, evaluator=first)
    assert first.played == [7, 8] and not RunPaths(run).evaluation.exists()
    second = InterruptAfter(run, 99)
    got = evaluate(run, config, progress=False, evaluator=second)
    assert second.played == [9]  # only the episode that had not finished
    assert {k: v for k, v in got.items() if k != "seconds"} == {
        k: v for k, v in want.items() if k != "seconds"}
    assert not list(RunPaths(run).root.glob("*.partial.json"))
    # Another controller does not reuse those returns.
    np.save(RunPaths(run).controller, np.zeros(param_count(32, 16), np.float32))
    third = InterruptAfter(run, 99)
    evaluate(run, config, progress=False, evaluator=third)
    assert third.played == [7, 8, 9]


def test_more_episodes_into_the_same_file_play_only_the_new_ones(tmp_path, monkeypatch):
    run = _run_with_controller(tmp_path)
    out = tmp_path / "more.json"
    two = EvaluateConfig(episodes=2, seed=7, max_steps=8, workers=0)
    three = dataclasses.replace(two, episodes=3)
    fewer = evaluate(run, two, progress=False, out=out)
    marked = {**fewer, "returns": [-123.0, fewer["returns"][1]]}  # shows which returns are kept

    def played(config: EvaluateConfig) -> tuple[list[int], dict]:
        out.write_text(json.dumps(marked))
        evaluator = InterruptAfter(run, 99)
        summary = evaluate(run, config, progress=False, evaluator=evaluator, out=out)
        return evaluator.played, summary

    seeds, got = played(three)
    assert seeds == [9] and got["seeds"] == [7, 8, 9]
    assert got["returns"][:2] == marked["returns"] and got["steps"][:2] == fewer["steps"]
    assert played(dataclasses.replace(three, max_steps=9))[0] == [7, 8, 9]  # another limit
    np.save(RunPaths(run).controller, np.zeros(param_count(32, 16), np.float32))
    assert played(three)[0] == [7, 8, 9]  # another agent
    # Nothing left to play starts no workers.
    monkeypatch.setattr(evaluate_module, "make_evaluator", lambda *args: pytest.fail("started"))
    held = json.loads(out.read_text())
    again = evaluate(run, three, progress=False, out=out)
    assert again["seeds"] == held["seeds"] and again["returns"] == held["returns"]


def test_garbage_controller_and_mismatched_z_sizes_are_one_line(tmp_path, capsys):
    run = _run_with_controller(tmp_path)
    args = ["evaluate", "--run", str(run), "--episodes", "1", "--workers", "0"]
    RunPaths(run).controller.write_bytes(b"not numpy at all" * 10)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("controller.npy: not a valid .npy file") and "allow_pickle" not in err
    # V retrained with another z size under an existing M: a matmul error mid-run before.
    vae = ConvVAE(VAEConfig(z_size=16))
    checkpoint.save(RunPaths(run).vae, vae, vae.config, {"kind": "vae", "epoch": 1})
    for command in (args, ["dream-video", "--run", str(run), "--out", str(tmp_path / "d.gif")]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert "V has z size 16 but mdnrnn.pt was trained on z size 32" in err
        assert len(err.splitlines()) == 1


def test_a_controller_of_another_size_is_one_line_wherever_it_is_read(tmp_path, capsys):
    run = _run_with_controller(tmp_path)
    np.save(RunPaths(run).controller, np.zeros(param_count(32, 16) + 1, np.float32))
    for command in (["evaluate", "--episodes", "1", "--workers", "0"],
                    ["dream-rank", "--workers", "0"],
                    ["dream-video", "--out", str(tmp_path / "d.gif")]):
        assert main([*command[:1], "--run", str(run), *command[1:]]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"parameters, the run's C needs ({param_count(32, 16)},)"), command
        assert len(err.splitlines()) == 1


def test_evaluate_on_a_read_only_run_fails_before_playing(tmp_path, capsys, monkeypatch):
    run = _run_with_controller(tmp_path)
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: False)  # root ignores modes
    assert main(["evaluate", "--run", str(run), "--episodes", "1", "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--run {run}: directory is not writable")


def test_the_agent_digest_names_c_and_the_weights_of_m():
    params, m = np.ones(3, np.float32), {"w": torch.zeros(2)}
    assert agent_digest(params, m) == agent_digest(params.copy(), {"w": torch.zeros(2)})
    assert agent_digest(params, {"w": torch.ones(2)}) != agent_digest(params, m)
    assert agent_digest(2 * params, m) != agent_digest(params, m)
    assert agent_digest(None, m) == "random"
    assert agent_digest(params, m, "sample") == agent_digest(params, m)  # as before the choice
    assert agent_digest(params, m, "mean") != agent_digest(params, m)
