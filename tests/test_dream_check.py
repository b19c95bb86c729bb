"""dream-check: the data policy in M's dream, each dream as it would run alone, beside the
same policy's real episodes in the run's data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fake_run import make_mdnrnn, make_run

from worldmodels import checkpoint
from worldmodels.agent import WorldModel
from worldmodels.cli import main
from worldmodels.config import preset, save_json
from worldmodels.data.policies import make_policy
from worldmodels.data.rollouts import Episode, episode_path, write_episode
from worldmodels.dream_check import dream_episodes
from worldmodels.env.dream import DreamEnv
from worldmodels.run import RunPaths


def _run_with_a_mortal_m(tmp_path) -> RunPaths:
    """A fake run whose M ends dreams by a coin after 2 to 50+ steps."""
    paths = RunPaths(make_run(tmp_path / "run"))
    mdnrnn = make_mdnrnn(seed=4)
    with torch.no_grad():
        mdnrnn.done.weight.mul_(0.1)
        mdnrnn.done.bias.fill_(-3.0)
    checkpoint.save(paths.mdnrnn, mdnrnn, mdnrnn.config, {"kind": "mdnrnn", "epoch": 1})
    return paths


def _episode(steps: int, policy: str, died: bool = False) -> Episode:
    done = np.zeros(steps, bool)
    done[-1] = died
    return Episode(obs=np.zeros((steps, 64, 64, 3), np.uint8),
                   action=np.zeros((steps, 3), np.float32),
                   reward=np.ones(steps, np.float32), done=done, seed=0, policy=policy)


def test_each_dream_runs_as_it_would_alone_with_its_seeded_policy(tmp_path):
    paths = _run_with_a_mortal_m(tmp_path)
    world = WorldModel.from_run(paths.root, with_vae=False)
    seed, dreams, max_steps = 500, 16, 40
    steps, returns, ended = dream_episodes(world, "brownian", 1.15, "sample", dreams, max_steps,
                                           seed=seed)
    assert steps.min() < 10 and steps.max() == max_steps  # the batch shrank and some lived
    env = DreamEnv(world.mdnrnn(), world.starts(), tau=1.15, max_steps=max_steps, done="sample")
    for i in range(dreams):
        policy = make_policy("brownian", seed + i)
        obs, _ = env.reset(seed=seed + i)
        total, n, terminated, truncated = 0.0, 0, False, False
        while not (terminated or truncated):
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total, n = total + reward, n + 1
        assert (steps[i], ended[i]) == (n, terminated)
        assert returns[i] == pytest.approx(total, rel=1e-4, abs=1e-5)


def test_cli_compares_the_data_policys_real_and_dream_lifetimes(tmp_path, capsys):
    paths = _run_with_a_mortal_m(tmp_path)
    config = preset("tiny")  # data policy: brownian
    save_json(config, paths.config)
    data = tmp_path / "data"
    for i, (steps, died) in enumerate([(10, True), (20, False), (30, True)]):
        write_episode(episode_path(data, i), _episode(steps, "brownian", died))
    # An agent's episode (as iterate adds) is another policy: left out.
    write_episode(episode_path(data, 9), _episode(400, "agent iteration 1 noise 0.1"))
    assert main(["dream-check", "--run", str(paths.root), "--data", str(data), "--tau", "1",
                 "1.5", "--dreams", "8", "--max-steps", "40"]) == 0
    lines = capsys.readouterr().out.splitlines()
    real = next(line for line in lines if line.startswith("real (3)")).split()
    assert real[2:] == ["20.0", "+-", "5.8", "20.0", "67%"]
    dream_lines = [line for line in lines if line.startswith("dream tau")]
    assert [line.split()[2] for line in dream_lines] == ["1", "1.5"]
    for line in dream_lines:
        assert 1 <= float(line.split()[3]) <= 40


def test_no_episodes_of_the_data_policy_is_one_line(tmp_path, capsys):
    paths = _run_with_a_mortal_m(tmp_path)
    save_json(preset("tiny"), paths.config)
    data = tmp_path / "data"
    write_episode(episode_path(data, 0), _episode(5, "random"))
    assert main(["dream-check", "--run", str(paths.root), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no episodes of the data policy 'brownian'" in err and len(err.splitlines()) == 1
