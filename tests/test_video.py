"""Videos read back with the frame count and size they were written with."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
from fake_run import make_run

from worldmodels.cli import main
from worldmodels.config import EvolveConfig, PipelineConfig, save_json
from worldmodels.errors import UserError
from worldmodels.models.controller import param_count
from worldmodels.run import RunPaths, load_run_config
from worldmodels.video import dream_frames, side_by_side, write_video


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_written_video_reads_back(tmp_path, suffix):
    path = write_video(tmp_path / f"x{suffix}", _frames(7), fps=25, scale=2)
    frames = iio.imread(path)
    assert frames.shape[:3] == (7, 128, 128)
    assert not list(tmp_path.glob(".tmp_*"))


def test_side_by_side_frames_keep_even_sizes(tmp_path):
    pairs = [side_by_side(a, b) for a, b in zip(_frames(3), _frames(3)[::-1], strict=True)]
    assert pairs[0].shape == (64, 130, 3)
    frames = iio.imread(write_video(tmp_path / "pair.mp4", pairs, scale=3))
    assert frames.shape[:3] == (3, 192, 390)


def test_bad_suffix_or_no_frames_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=".mp4 or .gif"):
        write_video(tmp_path / "x.avi", _frames(2))
    with pytest.raises(UserError, match="no frames"):
        write_video(tmp_path / "x.gif", [])


def test_dream_video_cli(tmp_path, capsys):
    run = make_run(tmp_path, gas_reward=True)  # never done: the dream runs all its steps
    np.save(RunPaths(run).controller, np.zeros(param_count(32, 16), np.float32))
    out = tmp_path / "dream.gif"
    assert main(["dream-video", "--run", str(run), "--out", str(out), "--steps", "9",
                 "--tau", "1.0"]) == 0
    frames = iio.imread(out)
    assert frames.shape[:3] == (10, 256, 256)  # the start frame and 9 steps, 4x upscaled
    assert "10 frames" in capsys.readouterr().out


def test_dream_video_plays_the_dream_evolve_ran_in(tmp_path):
    # `evolve --tau 3` keeps its settings in es.pickle, not in config.json (tau 1.15 here):
    # the video's default is the temperature C evolved at.
    run = make_run(tmp_path)
    save_json(PipelineConfig(evolve=EvolveConfig(real_eval_every=0)), RunPaths(run).config)
    assert main(["evolve", "--run", str(run), "--workers", "0", "--generations", "1",
                 "--popsize", "4", "--rollouts", "1", "--max-steps", "5", "--tau", "3"]) == 0
    assert load_run_config(RunPaths(run)).evolve.tau != 3.0
    default = dream_frames(run, steps=6)
    assert all(np.array_equal(a, b) for a, b in zip(default, dream_frames(run, 6, tau=3.0),
                                                     strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(
        default, dream_frames(run, 6, tau=load_run_config(RunPaths(run)).evolve.tau),
        strict=False))
