"""Collection on real CarRacing at tiny sizes: serial and Ray, determinism, resume after a
kill, bad input. Also the data policies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from worldmodels.cli import main
from worldmodels.config import CollectConfig
from worldmodels.data.collect import collect, run_episode
from worldmodels.data.policies import ACTION_HIGH, ACTION_LOW, make_policy
from worldmodels.data.rollouts import episode_path, read_episode
from worldmodels.env.carracing import make_env
from worldmodels.env.games import get_game
from worldmodels.errors import UserError

CLI = [sys.executable, "-m", "worldmodels.cli"]


def _check_episode_file(path: Path, seed: int, policy: str, steps: int):
    episode = read_episode(path)
    assert path == episode_path(path.parent, seed)
    assert (episode.seed, episode.policy) == (seed, policy)
    assert episode.obs.shape == (steps, 64, 64, 3) and episode.obs.dtype == np.uint8
    assert episode.action.shape == (steps, 3) and episode.action.dtype == np.float32
    assert episode.reward.shape == (steps,) and episode.reward.dtype == np.float32
    # Cut by the time limit, not terminated: no step is done.
    assert episode.done.dtype == np.bool_ and not episode.done.any()
    assert np.all(episode.action >= ACTION_LOW) and np.all(episode.action <= ACTION_HIGH)
    assert np.all(episode.reward < 20)  # -0.1 per step, plus ~3.4 per new tile
    assert episode.obs.std() > 5  # real pictures
    return episode


@pytest.mark.parametrize("name", ["random", "brownian"])
def test_policies_are_seeded_bounded_float32(name):
    obs = np.zeros((64, 64, 3), np.uint8)
    first, second, other = make_policy(name, 7), make_policy(name, 7), make_policy(name, 8)
    a = np.stack([first(obs) for _ in range(200)])
    b = np.stack([second(obs) for _ in range(200)])
    c = np.stack([other(obs) for _ in range(200)])
    assert a.dtype == np.float32 and a.shape == (200, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.all(a >= ACTION_LOW) and np.all(a <= ACTION_HIGH)
    assert a[:, 0].min() < -0.2 and a[:, 0].max() > 0.2  # steers both ways


def test_brownian_actions_vary_smoothly_random_ones_do_not():
    obs = np.zeros((64, 64, 3), np.uint8)
    jumps = {}
    for name in ("random", "brownian"):
        policy = make_policy(name, 0)
        actions = np.stack([policy(obs) for _ in range(500)])
        jumps[name] = np.abs(np.diff(actions, axis=0)).mean()
    assert jumps["brownian"] < 0.15 < jumps["random"]
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("greedy", 0)


def test_repeat_holds_each_random_action_for_one_to_ten_steps():
    obs = np.zeros((64, 64, 3), np.uint8)
    doom = get_game("doom-takecover")
    policy, again = make_policy("repeat", 3, doom), make_policy("repeat", 3, doom)
    actions = np.stack([policy(obs) for _ in range(2000)])[:, 0]
    np.testing.assert_array_equal(actions, [again(obs)[0] for _ in range(2000)])  # seeded
    assert actions.dtype == np.float32 and actions.min() >= -1 and actions.max() <= 1
    changes = np.flatnonzero(np.diff(actions)) + 1
    holds = np.diff(np.concatenate([[0], changes]))
    assert holds.min() >= 1 and holds.max() == 10 and 4 < holds.mean() < 7  # uniform 1..10
    assert actions.min() < -0.9 and actions.max() > 0.9


class TerminatesAt(gym.Wrapper):
    """Ends the episode as terminated (as CarRacing does off the playfield) at step `n`."""

    def __init__(self, env, n: int):
        super().__init__(env)
        self.n, self.t = n, 0

    def reset(self, **kwargs):
        self.t = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, _, truncated, info = self.env.step(action)
        self.t += 1
        return obs, reward, self.t >= self.n, truncated, info


def test_done_marks_termination_not_the_time_limit(fake_env):
    truncated = run_episode(fake_env, "random", 0)  # the fake env truncates at 50
    assert len(truncated.done) == 50 and not truncated.done.any()
    terminated = run_episode(TerminatesAt(fake_env, 20), "random", 0)
    assert len(terminated.done) == 20 and terminated.done[-1] and not terminated.done[:-1].any()


def test_serial_collection_files(real_rollouts):
    # The shared fixture was made by collect(..., workers=0): 3 episodes, seeds 0..2, 60 steps.
    paths = sorted(real_rollouts.glob("episode_*.npz"))
    assert [p.name for p in paths] == [episode_path(real_rollouts, s).name for s in range(3)]
    episodes = [_check_episode_file(p, s, "brownian", 60) for s, p in enumerate(paths)]
    assert not np.array_equal(episodes[0].obs, episodes[1].obs)  # other seed, other track


def test_same_seed_same_episode_and_rerun_fills_in_only_missing(real_rollouts, tmp_path):
    config = CollectConfig(episodes=2, max_steps=60, policy="brownian", seed=1, workers=0)
    (tmp_path / ".tmp_stale.npz").write_bytes(b"left by a killed run")
    paths = collect(tmp_path, config, progress=False)
    assert paths == [episode_path(tmp_path, 1), episode_path(tmp_path, 2)]
    assert not list(tmp_path.glob(".tmp_*"))
    for seed, path in zip([1, 2], paths, strict=True):
        ours, shared = read_episode(path), read_episode(episode_path(real_rollouts, seed))
        for key in ("obs", "action", "reward", "done"):
            np.testing.assert_array_equal(getattr(ours, key), getattr(shared, key))

    kept = paths[0].stat().st_mtime_ns
    paths[1].unlink()
    assert collect(tmp_path, config, progress=False) == paths
    assert paths[0].stat().st_mtime_ns == kept and paths[1].exists()


def test_two_ray_workers_match_serial(ray_session, tmp_path):
    config = CollectConfig(episodes=3, max_steps=40, policy="random", seed=5, workers=2)
    paths = collect(tmp_path, config, progress=False)
    assert paths == [episode_path(tmp_path, s) for s in (5, 6, 7)]
    episodes = [_check_episode_file(p, s, "random", 40) for s, p in zip((5, 6, 7), paths,
                                                                         strict=True)]
    # A worker process makes exactly the episode the driver would have made for that seed.
    serial = run_episode(make_env(max_steps=40), "random", 7)
    np.testing.assert_array_equal(serial.obs, episodes[2].obs)
    np.testing.assert_array_equal(serial.reward, episodes[2].reward)
    # The actors are gone: the shared session has its CPUs back for the next test.
    deadline = time.time() + 10
    while ray_session.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.1)
    assert ray_session.available_resources().get("CPU", 0) >= 2


def test_killed_collection_leaves_whole_files_and_resumes(tmp_path):
    out = tmp_path / "data"
    args = ["collect", "--out", str(out), "--episodes", "3", "--max-steps", "80",
            "--workers", "0", "--seed", "10"]
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(out.glob("episode_*.npz")) and time.time() < deadline:
        assert proc.poll() is None, "collect ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("episode_*.npz")}
    assert 1 <= len(before) < 3
    for path in before:  # every file under an episode name is whole
        _check_episode_file(path, int(path.stem.split("_")[1]), "brownian", 80)

    assert main(args) == 0
    assert sorted(out.glob("episode_*.npz")) == [episode_path(out, s) for s in (10, 11, 12)]
    assert not list(out.glob(".tmp_*"))
    for path, (mtime, data) in before.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data
    for seed in (10, 11, 12):
        _check_episode_file(episode_path(out, seed), seed, "brownian", 80)


def test_bad_out_is_one_line_error(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    config = CollectConfig(episodes=1, max_steps=5, workers=0)
    with pytest.raises(UserError, match="not a directory"):
        collect(a_file, config, progress=False)
    assert main(["collect", "--out", str(a_file / "sub"), "--episodes", "1",
                 "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot create directory" in err
    assert a_file.read_text() == "x"


@pytest.mark.parametrize("bad", [["--episodes", "-1"], ["--episodes", "1", "--policy", "greedy"]])
def test_bad_flags_exit_2(tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["collect", "--out", str(tmp_path), *bad])
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_unreachable_ray_address_is_one_line_exit_2(tmp_path):
    with socket.socket() as sock:  # a localhost port that nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run(
        [*CLI, "collect", "--out", str(tmp_path), "--episodes", "1", "--workers", "1",
         "--address", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "Ray" in lines[0]
    assert not list(tmp_path.glob("episode_*"))
