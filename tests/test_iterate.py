"""Iterative training on the REAL CarRacing at a tiny size: the agent's episodes are valid
episode files, a finished iteration is never redone, and a kill at any point then a rerun
ends exactly where an uninterrupted iteration does."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from fake_run import evolve_elsewhere_then_record_taus

import worldmodels.iterate as iterate_module
from worldmodels.atomic import write_bytes
from worldmodels.cli import main
from worldmodels.config import (
    EvaluateConfig,
    EvolveConfig,
    IterateConfig,
    MDNRNNConfig,
    PipelineConfig,
    VAEConfig,
    save_json,
)
from worldmodels.data.rollouts import encode_episode, episode_path, read_episode, validate_dir
from worldmodels.errors import UserError
from worldmodels.evaluate import evaluate
from worldmodels.evolve.cmaes import REAL_EVAL_SEED, evolve, load_es, load_state
from worldmodels.evolve.cmaes import restart as restart_es
from worldmodels.iterate import (
    AGENT_SEED,
    episode_plan,
    iterate,
    noiseless_plan,
    round_returns,
)
from worldmodels.logger import read_csv
from worldmodels.plot import iteration_starts
from worldmodels.run import RunPaths
from worldmodels.train.encode import encode
from worldmodels.train.mdnrnn import train_mdnrnn
from worldmodels.train.vae import train_vae

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = PipelineConfig(
    preset="tiny",
    vae=VAEConfig(epochs=1, batch_size=16, max_frames_per_epoch=32),
    mdnrnn=MDNRNNConfig(hidden_size=16, gaussians=2, epochs=1, seq_len=16, batch_size=4),
    evolve=EvolveConfig(generations=2, popsize=4, rollouts=1, max_steps=20, workers=0,
                        real_eval_every=1, real_eval_episodes=1, real_eval_max_steps=20),
    iterate=IterateConfig(iterations=1, episodes=2, max_steps=25, mdnrnn_epochs=1,
                          generations=1, workers=0),
)


@pytest.fixture(scope="module")
def base_run(real_rollouts, tmp_path_factory):
    """A tiny run with V, M, an evolved C, and its own copy of the data."""
    root = tmp_path_factory.mktemp("iterate_base")
    run, data = root / "run", root / "data"
    shutil.copytree(real_rollouts, data)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    RunPaths(run).root.mkdir()
    save_json(CONFIG, RunPaths(run).config)
    train_vae(data, run, CONFIG.vae, progress=False)
    encode(run, data, progress=False)
    train_mdnrnn(run, CONFIG.mdnrnn, progress=False)
    evolve(run, CONFIG.evolve, progress=False)
    torch.set_num_threads(before)
    return root


@pytest.fixture(scope="module")
def dream_only_run(base_run, tmp_path_factory):
    """base_run's V and M with C evolved only in the dream (no real checks), as on Take Cover."""
    root = tmp_path_factory.mktemp("iterate_dream_only")
    shutil.copytree(base_run, root, dirs_exist_ok=True)
    paths = RunPaths(root / "run")
    for stale in (paths.es_state, paths.controller, *paths.logs.glob("evolve*.csv")):
        stale.unlink()
    config = dataclasses.replace(
        CONFIG, evolve=dataclasses.replace(CONFIG.evolve, real_eval_every=0))
    save_json(config, paths.config)
    evolve(paths.root, config.evolve, progress=False)
    assert load_state(paths.es_state).selected_params is None
    return root


def _copy(base_run, tmp_path):
    shutil.copytree(base_run, tmp_path / "copy")
    return tmp_path / "copy" / "run", tmp_path / "copy" / "data"


def test_episode_plan_seeds_and_noise():
    plan = episode_plan(IterateConfig(episodes=4, noise=0.2, noisy_fraction=0.5), iteration=2)
    assert plan == [(AGENT_SEED + 20_000 + j, n) for j, n in enumerate([0.2, 0.2, 0.0, 0.0])]


def test_round_returns_split_the_agent_from_its_exploring_episodes(tmp_path):
    files = []
    for j, reward in enumerate(([1.0, 2.0], [10.0], [0.5, 0.5, 0.5], [7.0])):
        files.append(tmp_path / f"episode_{j}.npz")
        np.savez(files[-1], reward=np.array(reward, np.float32))
    plan = [(0, 0.3), (1, 0.3), (2, 0.0), (3, 0.0)]
    assert round_returns(files, plan) == pytest.approx((4.25, 6.5))
    assert np.isnan(round_returns(files[:2], plan[:2])[0])  # no noiseless episodes


def test_another_runs_episodes_under_the_seeds_are_refused(base_run, tmp_path):
    # A run given (or defaulting to) a data directory where another run has already played
    # iteration 1 must not take those episodes as its own.
    run, data = _copy(base_run, tmp_path / "a")
    iterate(run, CONFIG.iterate, data, progress=False)
    other, _ = _copy(base_run, tmp_path / "b")
    save_json(dataclasses.replace(CONFIG, run_id="0123abcd4567"), RunPaths(other).config)
    before = {f: f.read_bytes() for f in data.iterdir()}
    m_before = RunPaths(other).mdnrnn.read_bytes()
    with pytest.raises(UserError, match=r"episode_05.*made by 'agent:iteration=1:noise=0.1', "
                                        r"not by this run's iteration 1 \(agent:run=0123abcd4567"):
        iterate(other, CONFIG.iterate, data, progress=False)
    assert {f: f.read_bytes() for f in data.iterdir()} == before
    assert RunPaths(other).mdnrnn.read_bytes() == m_before


def test_one_iteration_end_to_end_then_nothing_redone(base_run, tmp_path):
    run, data = _copy(base_run, tmp_path)
    rows = iterate(run, CONFIG.iterate, data, progress=False)
    paths = RunPaths(run)
    assert [r["step"] for r in rows] == [1]
    assert rows[0]["episodes"] == 3 + 2 and np.isfinite(rows[0]["valid_z_nll"])
    new = sorted(data.glob(f"episode_{AGENT_SEED // 10**6:02d}*.npz"))
    assert len(new) == 2 and validate_dir(data)[1] == []
    first = read_episode(new[0])
    assert first.policy == "agent:iteration=1:noise=0.1" and len(first) <= 25
    assert read_episode(new[1]).policy.endswith("noise=0")
    # The row scores the agent the round began with (noiseless) apart from its exploring twin.
    assert rows[0]["agent_return"] == pytest.approx(read_episode(new[1]).reward.sum())
    assert rows[0]["exploring_return"] == pytest.approx(first.reward.sum())
    assert all((paths.latents / f.name).exists() for f in new)
    assert read_csv(paths.logs / "mdnrnn.csv")[-1]["epoch"] == 2  # M went on: 1 + 1 epochs
    assert read_csv(paths.logs / "evolve.csv")[-1]["step"] == 3  # C went on: 2 + 1 generations
    for it in (0, 1):
        assert (run / "iterations" / f"{it:02d}" / "controller.npy").exists()
    stamps = {p: p.stat().st_mtime_ns for p in (paths.mdnrnn, paths.controller, paths.es_state)}
    assert iterate(run, CONFIG.iterate, data, progress=False) == rows  # nothing redone
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def _epochs_and_generations(paths: RunPaths) -> tuple[int, int]:
    return (int(read_csv(paths.logs / "mdnrnn.csv")[-1]["epoch"]),
            int(read_csv(paths.logs / "evolve.csv")[-1]["step"]))


def test_each_iteration_adds_its_own_epochs_and_generations(base_run, tmp_path):
    # Settings changed between iterations (a run continued with cheaper rounds): the new
    # iteration still adds its epochs and generations to where the last one ended, where
    # targets implied by the settings (1 + 2 x 1 epochs) would lie behind M and train nothing.
    run, data = _copy(base_run, tmp_path)
    paths = RunPaths(run)
    iterate(run, dataclasses.replace(CONFIG.iterate, mdnrnn_epochs=3, generations=2), data,
            progress=False)
    assert _epochs_and_generations(paths) == (1 + 3, 2 + 2)
    iterate(run, dataclasses.replace(CONFIG.iterate, iterations=2), data, progress=False)
    assert _epochs_and_generations(paths) == (4 + 1, 4 + 1)
    # The fitness plot marks where each iteration's evolution really began, not where the
    # run's settings would put it (2 + 1 for the second).
    assert iteration_starts(paths) == [2, 4]


def test_killed_in_m_resumes_to_the_last_snapshot_plus_its_epochs(base_run, tmp_path):
    # Killed during M's epochs (M past the last snapshot's 3), with a snapshot from before
    # generations were recorded: M ends 2 epochs past the snapshot's, not 2 past where it was
    # killed, and CMA-ES where the settings put it (2 + 1 + 1 generations).
    run, data = _copy(base_run, tmp_path)
    paths = RunPaths(run)
    config = dataclasses.replace(CONFIG.iterate, mdnrnn_epochs=2)
    iterate(run, config, data, progress=False)
    train_mdnrnn(run, dataclasses.replace(CONFIG.mdnrnn, epochs=4), resume=True, progress=False)
    old_snapshot = run / "iterations" / "01" / "agent.json"
    old_snapshot.write_text(json.dumps({k: v for k, v in json.loads(old_snapshot.read_text())
                                        .items() if k != "generation"}))
    iterate(run, dataclasses.replace(config, iterations=2), data, progress=False)
    assert _epochs_and_generations(paths) == (3 + 2, 2 + 1 + 1)


RATCHET = dataclasses.replace(CONFIG.iterate, choose="episodes", ratchet=True)


@pytest.mark.parametrize("base, kill_after, config", [
    ("base_run", "collect_one", CONFIG.iterate), ("base_run", "train_mdnrnn", CONFIG.iterate),
    ("base_run", "evolve", CONFIG.iterate), ("dream_only_run", "evolve", CONFIG.iterate),
    # between the noiseless and exploring episodes; the final choice replays two finalists
    ("dream_only_run", "collect_one", dataclasses.replace(RATCHET, finalists=2,
                                                          finalist_episodes=2))])
def test_killed_and_rerun_equals_uninterrupted(request, tmp_path, monkeypatch, base, kill_after,
                                               config):
    base_run = request.getfixturevalue(base)
    straight, straight_data = _copy(base_run, tmp_path / "a")
    iterate(straight, config, straight_data, progress=False)

    run, data = _copy(base_run, tmp_path / "b")
    real = {name: getattr(iterate_module, name) for name in ("train_mdnrnn", "evolve")}
    real_write = iterate_module.write_bytes

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    if kill_after == "collect_one":  # the second episode's write is killed
        calls = []

        def write_then_kill(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real_write(*args, **kwargs)
        monkeypatch.setattr(iterate_module, "write_bytes", write_then_kill)
    else:
        def run_then_kill(*args, **kwargs):
            real[kill_after](*args, **kwargs)
            raise KeyboardInterrupt
        monkeypatch.setattr(iterate_module, kill_after, run_then_kill)
    with pytest.raises(KeyboardInterrupt):
        iterate(run, config, data, progress=False)
    monkeypatch.undo()
    iterate(run, config, data, progress=False)

    a, b = RunPaths(straight), RunPaths(run)
    for name in ("controller.npy", "iterations/01/controller.npy"):
        np.testing.assert_array_equal(np.load(a.root / name), np.load(b.root / name))
    wa, wb = torch.load(a.mdnrnn, weights_only=True), torch.load(b.mdnrnn, weights_only=True)
    for key, tensor in wa["model"].items():
        assert torch.equal(tensor, wb["model"][key]), key
    ra, rb = read_csv(a.logs / "iterate.csv"), read_csv(b.logs / "iterate.csv")
    assert [{k: v for k, v in r.items() if k not in ("minutes", "real_check")} for r in ra] == \
        [{k: v for k, v in r.items() if k not in ("minutes", "real_check")} for r in rb]
    np.testing.assert_array_equal([r["real_check"] for r in ra], [r["real_check"] for r in rb])


def test_bad_input_is_one_line(base_run, tmp_path, capsys):
    run, data = _copy(base_run, tmp_path)
    bound = "iterate.noise must be a finite number >= 0, got"
    for flags, named in ((["--noise", "-1"], f"{bound} -1.0"), (["--noise", "nan"], f"{bound} nan"),
                         (["--noise", "inf"], f"{bound} inf")):
        assert main(["iterate", "--run", str(run), "--data", str(data), *flags]) == 2
        assert named in capsys.readouterr().err
    (run / "es.pickle").unlink()
    assert main(["iterate", "--run", str(run)]) == 2
    assert "worldmodels evolve" in capsys.readouterr().err


@pytest.mark.parametrize("restart", [True, False])
def test_restart_starts_cma_es_around_the_agent(base_run, tmp_path, monkeypatch, restart):
    run, data = _copy(base_run, tmp_path)
    paths = RunPaths(run)
    before = load_state(paths.es_state)
    old_mean = load_es(paths.es_state, before).mean.copy()
    agent = np.load(paths.controller)
    seen = []

    def look_then_evolve(*args, **kwargs):
        state = load_state(paths.es_state)
        seen.append((state.generation, load_es(paths.es_state, state)))
        return evolve(*args, **kwargs)
    monkeypatch.setattr(iterate_module, "evolve", look_then_evolve)
    iterate(run, dataclasses.replace(CONFIG.iterate, restart=restart), data, progress=False)
    (generation, es), = seen
    assert generation == before.generation  # the count goes on: new generations, new seeds
    if restart:
        np.testing.assert_allclose(es.mean, agent, rtol=1e-6)
        assert es.sigma == CONFIG.evolve.sigma0
        again = load_state(base_run / "run" / "es.pickle")  # a restart is reproducible
        restart_es(again, agent)
        np.testing.assert_array_equal(load_es(paths.es_state, again).ask(), es.ask())
    else:
        np.testing.assert_array_equal(es.mean, old_mean)


def test_iterations_evolve_in_the_dream_evolve_ran_in(base_run, tmp_path, monkeypatch):
    # As after `evolve --tau 2.5`: es.pickle, not config.json, holds the dream's settings.
    run, data = _copy(base_run, tmp_path)
    paths = RunPaths(run)
    taus = evolve_elsewhere_then_record_taus(run, iterate_module, monkeypatch)
    iterate(run, CONFIG.iterate, data, progress=False)
    assert CONFIG.evolve.tau != 2.5
    assert taus == [2.5] and load_state(paths.es_state).config["tau"] == 2.5


@pytest.mark.parametrize("every, checked", [(0, [1, 2, 3, 4]), (2, [1, 2, 4])])
def test_real_checks_within_an_iteration_as_often_as_asked(base_run, tmp_path, every, checked):
    # The first evolution checked every generation (evolve.real_eval_every 1); iterate's own
    # setting replaces it for the iteration's generations, 0 keeps it; the last is checked.
    run, data = _copy(base_run, tmp_path)
    config = dataclasses.replace(CONFIG.iterate, generations=2, real_eval_every=every)
    iterate(run, config, data, progress=False)
    assert [r["step"] for r in read_csv(RunPaths(run).logs / "evolve_real.csv")] == checked


def test_negative_real_eval_every_is_one_line(base_run, tmp_path, capsys):
    run, data = _copy(base_run, tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["iterate", "--run", str(run), "--data", str(data), "--real-eval-every", "-1"])
    assert exit_.value.code == 2 and "--real-eval-every" in capsys.readouterr().err
    with pytest.raises(UserError, match="real_eval_every"):
        iterate(run, dataclasses.replace(CONFIG.iterate, real_eval_every=-1), data,
                progress=False)


def _record_agents(monkeypatch, paths: RunPaths) -> tuple[list, list]:
    """Lists that fill as iterate runs: the C each iteration plays, and the CMA-ES mean before
    and after each evolution (two entries per iteration)."""
    played, means = [], []
    real_params, real_evolve = iterate_module.exploring_params, iterate_module.evolve

    def record_params(params, plan):
        played.append(params.copy())
        return real_params(params, plan)

    def record_means(*args, **kwargs):
        means.append(load_es(paths.es_state, load_state(paths.es_state)).mean.copy())
        state = real_evolve(*args, **kwargs)
        means.append(load_es(paths.es_state, state).mean.copy())
        return state
    monkeypatch.setattr(iterate_module, "exploring_params", record_params)
    monkeypatch.setattr(iterate_module, "evolve", record_means)
    return played, means


def test_an_iteration_starts_from_the_best_agent_so_far(base_run, tmp_path, monkeypatch):
    # Iteration 1 checked worse than the first evolution's agent: iteration 2 plays and
    # restarts CMA-ES around the first agent's C, not iteration 1's.
    run, data = _copy(base_run, tmp_path)
    paths = RunPaths(run)
    iterate(run, CONFIG.iterate, data, progress=False)
    first = np.load(run / "iterations" / "00" / "controller.npy")
    assert not np.array_equal(first, np.load(run / "iterations" / "01" / "controller.npy"))
    save_json({"iteration": 0, "real_check": 1e9}, run / "iterations" / "00" / "agent.json")
    shutil.copy(run / "iterations" / "01" / "controller.npy", paths.controller)
    played, means = _record_agents(monkeypatch, paths)
    iterate(run, dataclasses.replace(CONFIG.iterate, iterations=2), data, progress=False)
    np.testing.assert_array_equal(played[0], first)
    np.testing.assert_allclose(means[0], first, rtol=1e-6)


def test_without_real_checks_each_iteration_builds_on_the_last_mean(dream_only_run, tmp_path,
                                                                    monkeypatch, capsys):
    # C learns only in the dream: no real episode scores it, each iteration plays and restarts
    # CMA-ES around the latest mean, and the last iteration's agent is the run's.
    run, data = _copy(dream_only_run, tmp_path)
    paths = RunPaths(run)
    first = np.load(paths.controller)
    played, means = _record_agents(monkeypatch, paths)
    rows = iterate(run, dataclasses.replace(CONFIG.iterate, iterations=2), data, progress=False)
    assert [r["step"] for r in rows] == [1, 2] and all(np.isnan(r["real_check"]) for r in rows)
    assert not (paths.logs / "evolve_real.csv").exists()  # no real check was played
    snaps = [run / "iterations" / f"{it:02d}" for it in (0, 1, 2)]
    assert [json.loads((s / "agent.json").read_text())["real_check"] for s in snaps] == [None] * 3
    np.testing.assert_array_equal(played[0], first)
    # controller.npy holds the float64 mean in float32.
    np.testing.assert_allclose(np.load(snaps[1] / "controller.npy"), means[1], rtol=1e-6)
    np.testing.assert_allclose(played[1], means[1], rtol=1e-6)  # iteration 2 plays iteration 1's C
    np.testing.assert_allclose(means[2], means[1], rtol=1e-6)  # and restarts around it
    for name in ("controller.npy", "mdnrnn.pt"):  # the last agent is the run's
        assert (snaps[2] / name).read_bytes() == (paths.root / name).read_bytes()
    np.testing.assert_allclose(np.load(paths.controller), means[3], rtol=1e-6)
    capsys.readouterr()
    assert main(["iterate", "--run", str(run), "--data", str(data)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("real check none")


def _live_longest(path, by: float = 1e6) -> None:
    """Give an agent episode a return no other has."""
    episode = read_episode(path)
    episode.reward[-1] += by
    write_bytes(path, encode_episode(episode))


def test_choose_by_episodes_keeps_the_longest_lived_snapshot(dream_only_run, tmp_path,
                                                             monkeypatch, capsys):
    run, data = _copy(dream_only_run, tmp_path)
    paths = RunPaths(run)
    config = dataclasses.replace(CONFIG.iterate, iterations=2, choose="episodes")
    iterate(run, config, data, progress=False)
    snaps = [run / "iterations" / f"{it:02d}" for it in (0, 1, 2)]
    # The last agent played the next round's noiseless episode, labelled as that round's.
    (seed, noise), = [(s, n) for s, n in episode_plan(config, 3) if n == 0]
    final = read_episode(episode_path(data, seed))
    assert final.policy == "agent:iteration=3:noise=0"
    rounds = {it: read_episode(episode_path(data, episode_plan(config, it + 1)[-1][0]))
              for it in (0, 1, 2)}
    returns = {it: float(e.reward.sum()) for it, e in rounds.items()}
    best = max(returns, key=lambda it: (returns[it], it))
    assert json.loads((run / "iterate.json").read_text())["chosen"] == best
    assert (snaps[best] / "controller.npy").read_bytes() == paths.controller.read_bytes()

    def chosen_after_living_longest(it: int) -> int:
        _live_longest(episode_path(data, episode_plan(config, it + 1)[-1][0]))
        files = sorted(data.iterdir())
        capsys.readouterr()
        assert main(["iterate", "--run", str(run), "--data", str(data), "--choose",
                     "episodes", "--iterations", "2"]) == 0
        assert sorted(data.iterdir()) == files  # nothing played again
        assert f"the agent of iteration {it} (its noiseless real episodes: " in \
            capsys.readouterr().out
        for name in ("controller.npy", "mdnrnn.pt"):
            assert (snaps[it] / name).read_bytes() == (paths.root / name).read_bytes()
        return json.loads((run / "iterate.json").read_text())["chosen"]

    assert chosen_after_living_longest(1) == 1  # an earlier agent: M and C put back
    # A call that runs no new round (the pipeline's, after the iterate --choose above) keeps
    # the choice, whatever the run's own setting.
    iterate(run, dataclasses.replace(config, choose="check"), data, progress=False)
    assert paths.controller.read_bytes() == (snaps[1] / "controller.npy").read_bytes()
    # More rounds go on from the last M, not the chosen one's, and play only the noisy half
    # of round 3 (its noiseless half is the last agent's episodes above).
    trained_from = []
    real_train = iterate_module.train_mdnrnn

    def record(run_dir, *args, **kwargs):
        trained_from.append(RunPaths(run_dir).mdnrnn.read_bytes())
        return real_train(run_dir, *args, **kwargs)
    monkeypatch.setattr(iterate_module, "train_mdnrnn", record)
    before = set(data.iterdir())
    iterate(run, dataclasses.replace(config, iterations=3, choose="check"), data,
            progress=False)
    assert trained_from == [(snaps[2] / "mdnrnn.pt").read_bytes()]
    assert [read_episode(f).policy for f in set(data.iterdir()) - before] == \
        ["agent:iteration=3:noise=0.1"]
    assert (run / "iterations" / "03" / "controller.npy").read_bytes() == \
        paths.controller.read_bytes()  # choose check, no real checks: the last


def test_finalists_replay_on_the_same_seeds_and_the_best_replay_is_chosen(
        dream_only_run, tmp_path, capsys):
    run, data = _copy(dream_only_run, tmp_path)
    paths = RunPaths(run)
    config = dataclasses.replace(CONFIG.iterate, iterations=2, choose="episodes", finalists=2,
                                 finalist_episodes=2)
    iterate(run, config, data, progress=False)
    snaps = [run / "iterations" / f"{it:02d}" for it in (0, 1, 2)]
    returns = {it: float(read_episode(episode_path(data, noiseless_plan(config, it + 1)[0][0]))
                         .reward.sum()) for it in (0, 1, 2)}
    ranked = sorted(returns, key=lambda it: (returns[it], it))
    finalists = sorted(ranked[1:])
    assert not (snaps[ranked[0]] / "finalist.json").exists()  # not a finalist: not replayed
    replays = {it: json.loads((snaps[it] / "finalist.json").read_text()) for it in finalists}
    for replay in replays.values():
        assert replay["seeds"] == [REAL_EVAL_SEED, REAL_EVAL_SEED + 1]
        assert replay["max_steps"] == config.max_steps
    again = evaluate(run, EvaluateConfig(episodes=2, seed=REAL_EVAL_SEED, max_steps=25,
                                         workers=0), out=tmp_path / "again.json",
                     iteration=finalists[0], progress=False)
    assert again["returns"] == replays[finalists[0]]["returns"]  # the snapshot's own agent
    best = max(finalists, key=lambda it: (replays[it]["mean"], it))
    assert json.loads((run / "iterate.json").read_text())["chosen"] == best
    assert paths.controller.read_bytes() == (snaps[best] / "controller.npy").read_bytes()

    # The other finalist's kept replay made the best: chosen by it, nothing played again.
    other, = set(finalists) - {best}
    replays[other]["mean"] = 1e9
    save_json(replays[other], snaps[other] / "finalist.json")
    files = sorted(data.iterdir())
    kept = {it: (snaps[it] / "finalist.json").stat().st_mtime_ns for it in finalists}
    choose = ["iterate", "--run", str(run), "--data", str(data), "--iterations", "2",
              "--choose", "episodes", "--finalist-episodes", "2", "--finalists"]
    capsys.readouterr()
    assert main([*choose, "2"]) == 0
    assert f"the agent of iteration {other} (the best of finalists {finalists} over 2 more " \
        f"noiseless episodes: 1000000000.0; its round's " in capsys.readouterr().out
    assert json.loads((run / "iterate.json").read_text())["chosen"] == other
    assert sorted(data.iterdir()) == files
    assert {it: (snaps[it] / "finalist.json").stat().st_mtime_ns for it in finalists} == kept
    (snaps[other] / "finalist.json").write_text("{not json")  # a broken cache is replayed
    assert main([*choose, "2"]) == 0
    assert json.loads((run / "iterate.json").read_text())["chosen"] == best
    assert json.loads((snaps[other] / "finalist.json").read_text())["returns"] == \
        replays[other]["returns"]
    assert main([*choose, "0"]) == 0  # by the round's episodes alone
    assert json.loads((run / "iterate.json").read_text())["chosen"] == ranked[-1]


def test_ratchet_starts_each_round_from_the_longest_lived_snapshot(dream_only_run, tmp_path,
                                                                   monkeypatch):
    run, data = _copy(dream_only_run, tmp_path)
    paths = RunPaths(run)
    iterate(run, RATCHET, data, progress=False)
    (zeroth, _), = noiseless_plan(RATCHET, 1)
    (first, _), = noiseless_plan(RATCHET, 2)  # played by the choice above; played again below
    _live_longest(episode_path(data, zeroth))  # the agent round 1 began with lived longest
    episode_path(data, first).unlink()
    played, means = _record_agents(monkeypatch, paths)
    iterate(run, dataclasses.replace(RATCHET, iterations=2), data, progress=False)
    snaps = [np.load(run / "iterations" / f"{it:02d}" / "controller.npy") for it in (0, 1, 2)]
    np.testing.assert_array_equal(played[0], snaps[1])  # the last agent's noiseless episode,
    np.testing.assert_array_equal(played[1], snaps[0])  # then exploring around the longest-lived,
    np.testing.assert_allclose(means[0], snaps[0], rtol=1e-6)  # and CMA-ES restarted there
    assert [read_episode(episode_path(data, seed)).policy
            for seed, _ in episode_plan(RATCHET, 2)] == \
        ["agent:iteration=2:noise=0.1", "agent:iteration=2:noise=0"]
    np.testing.assert_array_equal(played[2], snaps[2])  # the last plays for the final choice
    assert json.loads((run / "iterate.json").read_text())["chosen"] == 0
    np.testing.assert_array_equal(np.load(paths.controller), snaps[0])


def test_lost_episodes_are_replayed_with_the_m_their_round_began_with(
        dream_only_run, tmp_path, monkeypatch):
    # Killed after round 2's epochs of M, before its evolution; then the round's episodes
    # are lost. The rerun plays them again with the M the round began with (snapshot 1's),
    # not RUN's, and RUN's M keeps its round-2 epochs.
    run, data = _copy(dream_only_run, tmp_path)
    paths = RunPaths(run)
    iterate(run, RATCHET, data, progress=False)
    real_train = iterate_module.train_mdnrnn

    def train_then_kill(*args, **kwargs):
        real_train(*args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(iterate_module, "train_mdnrnn", train_then_kill)
    with pytest.raises(KeyboardInterrupt):
        iterate(run, dataclasses.replace(RATCHET, iterations=2), data, progress=False)
    trained = paths.mdnrnn.read_bytes()
    assert trained != (run / "iterations" / "01" / "mdnrnn.pt").read_bytes()
    files = [episode_path(data, seed) for seed, _ in episode_plan(RATCHET, 2)]
    played = [read_episode(f) for f in files]  # exploring, then snapshot 1's noiseless
    for f in files:
        f.unlink()
    m_at_training = []

    def record(*args, **kwargs):
        m_at_training.append(paths.mdnrnn.read_bytes())
        return real_train(*args, **kwargs)
    monkeypatch.setattr(iterate_module, "train_mdnrnn", record)
    iterate(run, dataclasses.replace(RATCHET, iterations=2), data, progress=False)
    for before, f in zip(played, files, strict=True):
        again = read_episode(f)
        np.testing.assert_array_equal(again.action, before.action)
        np.testing.assert_array_equal(again.reward, before.reward)
    assert m_at_training == [trained]


def test_choose_by_episodes_needs_noiseless_episodes_and_no_real_checks(
        dream_only_run, base_run, tmp_path, capsys):
    run, data = _copy(dream_only_run, tmp_path / "a")
    before = sorted(f.name for f in data.iterdir())
    config = dataclasses.replace(CONFIG.iterate, choose="episodes", noisy_fraction=1.0)
    with pytest.raises(UserError, match="iterate.choose episodes needs noiseless episodes: "
                                        "iterate.noisy_fraction 1 leaves none of 2"):
        iterate(run, config, data, progress=False)
    checked, checked_data = _copy(base_run, tmp_path / "b")  # its rounds play the best check
    assert main(["iterate", "--run", str(checked), "--data", str(checked_data), "--choose",
                 "episodes"]) == 2
    assert capsys.readouterr().err.strip().endswith("with real checks (evolve.real_eval_every "
                                                    "or iterate.real_eval_every above 0) "
                                                    "choose check")
    assert main(["iterate", "--run", str(run), "--data", str(data), "--ratchet"]) == 2
    assert capsys.readouterr().err.strip().endswith("iterate.ratchet needs iterate.choose "
                                                    "episodes: the rounds' noiseless episodes "
                                                    "choose where each round starts")
    assert main(["iterate", "--run", str(run), "--data", str(data), "--finalists", "3"]) == 2
    assert capsys.readouterr().err.strip().endswith("iterate.finalists 3 needs iterate.choose "
                                                    "episodes: the finalists are the snapshots "
                                                    "their round episodes rank best")
    for root in (data, checked_data):  # refused before any round
        assert sorted(f.name for f in root.iterdir()) == before
