"""Evaluation in the real CarRacing-v3 at a tiny size: serial and on Ray, baseline, video."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
from fake_run import make_run

from worldmodels.cli import main
from worldmodels.config import EvaluateConfig
from worldmodels.evaluate import evaluate
from worldmodels.models.controller import param_count
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


def test_missing_controller_is_a_one_line_error(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["evaluate", "--run", str(run), "--episodes", "1", "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "controller.npy: missing; run `worldmodels evolve` first" in err
    assert len(err.splitlines()) == 1
