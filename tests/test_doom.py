"""The second game, VizDoom's Take Cover: its module on the real VizDoom, the generic stages
with a 1-action game, a run of one game refused by the other, and doom-tiny end to end."""

from __future__ import annotations

import builtins
import json
from dataclasses import asdict

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from tests.fake_run import make_run
from worldmodels.agent import WorldModel
from worldmodels.cli import main
from worldmodels.config import CollectConfig, preset, preset_for
from worldmodels.data.collect import collect, run_episode
from worldmodels.data.policies import make_policy
from worldmodels.data.rollouts import read_episode
from worldmodels.env import doom
from worldmodels.env.games import get_game
from worldmodels.errors import UserError
from worldmodels.models.controller import Controllers, param_count
from worldmodels.pipeline import pipeline
from worldmodels.run import RunPaths

DOOM = get_game("doom-takecover")


def test_the_continuous_action_is_thresholded_into_left_stay_right():
    assert [doom.button(np.array([a], np.float32)) for a in (-1, -0.34, -0.33, 0, 0.33, 0.34, 1)] \
        == [doom.LEFT, doom.LEFT, doom.STAY, doom.STAY, doom.STAY, doom.RIGHT, doom.RIGHT]
    raw = torch.tensor([[-30.0], [0.0], [30.0]])
    np.testing.assert_allclose(DOOM.actions.squash(raw).numpy().ravel(), [-1, 0, 1])


def test_take_cover_gives_64x64_frames_one_action_and_plus_one_per_step():
    env = DOOM.make_env(max_steps=20)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and obs.std() > 5
    assert env.observation_space.shape == (64, 64, 3) and env.action_space.shape == (1,)
    total, steps, truncated = 0.0, 0, False
    while not truncated:
        obs, reward, terminated, truncated, _ = env.step(np.array([0.9], np.float32))
        total, steps = total + reward, steps + 1
        assert not terminated  # 20 steps are too short to die
    assert steps == 20 and total == 20.0
    env.close()


def test_dying_ends_a_collected_episode_with_done_and_the_time_limit_does_not():
    env = DOOM.make_env()  # the paper's 2100-step limit
    episode = run_episode(env, "random", 3, DOOM)
    env.close()
    assert len(episode) < doom.MAX_STEPS and episode.done[-1] and episode.done.sum() == 1
    assert episode.action.shape == (len(episode), 1) and episode.policy == "random"
    np.testing.assert_array_equal(episode.reward, 1.0)  # Take Cover pays +1 per tic survived
    assert {doom.button(a) for a in episode.action} == {doom.LEFT, doom.STAY, doom.RIGHT}
    cut = DOOM.make_env(max_steps=15)
    short = run_episode(cut, "random", 3, DOOM)
    cut.close()
    assert len(short) == 15 and not short.done.any()
    np.testing.assert_array_equal(short.action, episode.action[:15])  # seeded


@pytest.mark.parametrize("tics", [4, 8])
def test_a_skip_game_holds_each_action_its_tics_and_still_scores_tics(tics):
    skip = get_game(f"doom-takecover-skip{tics}")
    assert skip.max_steps == doom.MAX_STEPS // tics and skip.actions == DOOM.actions

    def stand(game):  # a player who never moves, until death
        env = game.make_env()
        env.reset(seed=3)
        rewards, terminated = [], False
        while not terminated:
            _, reward, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
            rewards.append(reward)
            assert not truncated
        env.close()
        return rewards

    per_tic, per_skip = stand(DOOM), stand(skip)
    # The same death at the same tic: `tics` a step, +1 each, the last step cut short.
    assert sum(per_skip) == sum(per_tic) == len(per_tic)
    assert len(per_skip) == -(-len(per_tic) // tics) and set(per_skip[:-1]) == {float(tics)}
    cut = skip.make_env(max_steps=5)
    cut.reset(seed=3)
    steps = [cut.step(np.array([0.9], np.float32)) for _ in range(5)]
    cut.close()
    assert steps[-1][3] and sum(s[1] for s in steps) == 5.0 * tics  # 5 steps, truncated


def test_a_hit_that_does_not_kill_flashes_the_screen_red():
    # vizdoom's own take_cover.cfg hides the flash; without it a hit leaves no trace on screen.
    env = DOOM.make_env()
    episode = run_episode(env, "random", 0, DOOM)  # this player is hit and lives on
    env.close()
    frames = episode.obs.astype(np.float32)
    red_excess = frames[..., 0].mean((1, 2)) - frames[..., 1].mean((1, 2))
    assert red_excess[:20].max() < 10 and red_excess.max() > 100


def test_collect_env_doom_writes_valid_one_action_episodes(tmp_path):
    paths = collect(tmp_path, CollectConfig(
        episodes=2, max_steps=12, policy="random", workers=0), progress=False,
        env="doom-takecover")
    for path in paths:
        episode = read_episode(path)
        assert episode.obs.shape == (12, 64, 64, 3) and episode.action.shape == (12, 1)
    with pytest.raises(UserError, match="unknown policy 'brownian' for --env doom-takecover"):
        collect(tmp_path / "b", CollectConfig(policy="brownian"),
                env="doom-takecover")
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("brownian", 0, DOOM)


def test_a_missing_vizdoom_is_one_line_with_the_install_command(monkeypatch):
    real_import = builtins.__import__

    def no_vizdoom(name, *args, **kwargs):
        if name.startswith("vizdoom"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vizdoom)
    with pytest.raises(UserError, match=r"pip install 'worldmodels\[doom\]'"):
        DOOM.make_env()


def test_unknown_env_and_a_preset_of_another_game_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["collect", "--out", str(tmp_path), "--episodes", "1", "--env", "pong"])
    assert exit_info.value.code == 2 and "invalid choice: 'pong'" in capsys.readouterr().err
    assert preset_for(None, "doom-takecover") == "doom-small"
    assert preset_for(None, "doom-takecover-skip8") == "doom-skip8"
    for name in ("doom-small", "doom-skip4", "doom-skip8"):  # episodes end at the game's limit
        config = preset(name)
        limits = {s.max_steps for s in (config.collect, config.evaluate, config.iterate)}
        assert limits == {get_game(config.env).max_steps}, name
    assert preset_for("doom-tiny", None) == "doom-tiny" and preset_for(None, None) == "small"
    with pytest.raises(UserError, match="--preset tiny is for --env carracing, not "
                                        "doom-takecover; the doom-takecover presets: doom-tiny"):
        preset_for("tiny", "doom-takecover")
    with pytest.raises(UserError, match="unknown --env 'pong'"):
        get_game("pong")


def test_a_run_of_one_game_is_refused_by_the_other(tmp_path, capsys):
    run = make_run(tmp_path)  # a CarRacing run: M takes 3 actions
    config = asdict(preset("small"))
    config["env"] = "doom-takecover"
    RunPaths(run).config.write_text(json.dumps(config))
    with pytest.raises(UserError, match="M was trained on 3 actions but the run's --env "
                                        "doom-takecover has 1"):
        WorldModel.from_run(run)
    data = tmp_path / "doomdata"
    collect(data, CollectConfig(episodes=1, max_steps=5, policy="random", workers=0),
            progress=False, env="doom-takecover")
    config["env"] = "carracing"
    RunPaths(run).config.write_text(json.dumps(config))
    code = main(["train-vae", "--data", str(data), "--run", str(run), "--env", "doom-takecover"])
    err = capsys.readouterr().err
    assert code == 2 and "this run learns --env carracing, not doom-takecover" in err
    assert err.count("\n") == 1


def test_controllers_of_a_one_action_game():
    params = np.random.default_rng(0).normal(0, 1, (4, param_count(8, 16, 1)))
    assert params.shape[1] == (8 + 16) + 1
    actions = Controllers(params, 8, 16, actions=DOOM.actions).act(torch.randn(4, 24))
    assert actions.shape == (4, 1) and actions.abs().max() <= 1
    with pytest.raises(ValueError, match="-> 1 actions"):
        Controllers(params[:, :-1], 8, 16, actions=DOOM.actions)


@pytest.mark.slow
def test_doom_tiny_pipeline_end_to_end_on_the_real_vizdoom(tmp_path, ray_session, capsys):
    run, data = tmp_path / "run", tmp_path / "data"
    tiny = preset("doom-tiny")
    results = pipeline(run, "doom-tiny", data=data, progress=False)
    paths = RunPaths(run)
    saved = json.loads(paths.config.read_text())
    assert saved["env"] == "doom-takecover" and saved["mdnrnn"]["action_size"] == 1
    assert saved["vae"]["z_size"] == saved["mdnrnn"]["z_size"] == 64
    episodes = sorted(data.glob("episode_*.npz"))
    # The round's episodes, then the last agent's noiseless one (the next round's) that
    # scores it for the choice of the run's agent.
    assert len(episodes) == tiny.collect.episodes + tiny.iterate.episodes + 1
    assert read_episode(episodes[0]).action.shape[1] == 1
    # An iteration in the dream alone: the agent's episodes teach M, no real check chooses C.
    played = [read_episode(e) for e in episodes[tiny.collect.episodes:]]
    own = f"agent:run={saved['run_id']}:iteration="
    assert [e.policy for e in played[-1:]] == [f"{own}2:noise=0"]
    assert all(e.policy.startswith(f"{own}1") for e in played[:-1])
    assert all(e.action.shape[1] == 1 for e in played)
    assert json.loads((run / "iterations" / "01" / "agent.json").read_text())["real_check"] \
        is None
    # Each snapshot scored by its noiseless episode (the round after it), then both, the
    # finalists, on the same selection episodes; the longer-lived there (the later of a tie)
    # is the run's agent.
    assert len([e for e in played if e.policy.endswith("noise=0")]) == 2
    replays = [json.loads((run / "iterations" / f"{k:02d}" / "finalist.json").read_text())
               for k in (0, 1)]
    assert replays[0]["seeds"] == replays[1]["seeds"] and len(replays[0]["seeds"]) == 2
    chosen = 1 if replays[1]["mean"] >= replays[0]["mean"] else 0
    assert json.loads((run / "iterate.json").read_text())["chosen"] == chosen
    assert (run / "iterations" / f"{chosen:02d}" / "controller.npy").read_bytes() == \
        paths.controller.read_bytes()
    world = WorldModel.from_run(run)
    assert world.env == "doom-takecover" and world.param_count == 64 + 64 + 1
    assert world.real_z == "mean"  # as doom-skip8's agent reads frames
    assert np.load(paths.controller).shape == (world.param_count,)
    for policy in ("controller", "random"):
        summary = results[policy]
        assert summary["episodes"] == tiny.evaluate.episodes
        # +1 per step survived: a return is the episode's length.
        assert summary["returns"] == [float(n) for n in summary["steps"]]
    dream = iio.imread(paths.videos / "dream.mp4")
    assert dream.shape[1:] == (256, 256, 3) and len(dream) >= 2
    real = iio.imread(paths.videos / "real.mp4")
    assert real.shape[1:] == (256, 520, 3)
    video = tmp_path / "seed7.mp4"
    assert main(["real-video", "--run", str(run), "--out", str(video), "--max-steps", "12",
                 "--seed", "7", "--scale", "2"]) == 0
    assert iio.imread(video).shape == (12, 128, 260, 3)
    assert iio.immeta(video)["fps"] == 35  # the game's
    # The random data policy in the dream beside its real episodes.
    capsys.readouterr()
    assert main(["dream-check", "--run", str(run), "--data", str(data), "--tau", "1", "1.5",
                 "--dreams", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "the data policy 'random'" in lines[0]
    assert lines[2].startswith(f"real ({tiny.collect.episodes})")
    assert [line.split()[:3] for line in lines[3:]] == [["dream", "tau", "1"],
                                                        ["dream", "tau", "1.5"]]
    assert all(1 <= float(line.split()[3]) <= tiny.collect.max_steps for line in lines[3:])


def test_latents_of_two_games_are_not_mixed_into_one_sampler():
    from worldmodels.data.latents import Latents, SequenceSampler

    def latents(actions: int) -> Latents:
        t = 4
        return Latents(mu=np.zeros((t, 8), np.float16), logvar=np.zeros((t, 8), np.float16),
                       action=np.zeros((t, actions), np.float32),
                       reward=np.zeros(t, np.float32), done=np.zeros(t, bool))

    assert SequenceSampler([latents(1), latents(1)], 2).action.shape == (8, 1)
    with pytest.raises(UserError, match=r"action sizes \[1, 3\]"):
        SequenceSampler([latents(1), latents(3)], 2)

