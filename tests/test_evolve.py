"""CMA-ES evolution: it climbs a seeded problem, resumes exactly, survives a killed worker."""

from __future__ import annotations

import pickle
import threading
import time

import numpy as np
import pytest
from fake_run import make_run

from worldmodels.agent import WorldModel
from worldmodels.cli import main
from worldmodels.config import EvolveConfig
from worldmodels.errors import UserError
from worldmodels.evolve.cmaes import evolve, load_state, rollout_seeds
from worldmodels.evolve.workers import RayEvaluator, SerialEvaluator
from worldmodels.logger import read_csv
from worldmodels.models.controller import param_count
from worldmodels.run import RunPaths


def _config(**kw) -> EvolveConfig:
    base = dict(generations=4, popsize=8, rollouts=2, sigma0=0.5, tau=1.0, max_steps=15,
                workers=0, real_eval_every=0, seed=3)
    return EvolveConfig(**{**base, **kw})


def test_evolve_in_dream_raises_fitness_on_seeded_problem(tmp_path):
    run = make_run(tmp_path, gas_reward=True)
    config = _config(generations=12, real_eval_every=6, real_eval_episodes=1)
    state = evolve(run, config, progress=False)
    rows = read_csv(RunPaths(run).logs / "evolve.csv")
    assert [r["step"] for r in rows] == list(range(1, 13))
    means = [r["mean"] for r in rows]
    assert np.mean(means[-3:]) > np.mean(means[:3]) + 1.0  # of at most 15 * 0.76
    assert all(r["best"] >= r["mean"] >= r["worst"] for r in rows)
    # C is the CMA-ES mean, and it has learnt to push the gas: the lever of this problem.
    controller = np.load(RunPaths(run).controller, allow_pickle=False)
    np.testing.assert_allclose(controller, pickle.loads(state.es_bytes).mean, rtol=1e-6)
    assert controller.shape == (param_count(32, 16),) and controller[-2] > 0
    assert state.best_params[-2] > 0
    assert state.best_fitness == pytest.approx(max(r["best"] for r in rows))
    real = read_csv(RunPaths(run).logs / "evolve_real.csv")  # the mean, in real CarRacing
    assert [r["step"] for r in real] == [6, 12] and all(np.isfinite(r["real_mean"]) for r in real)


class InterruptAt:
    """Serial evaluator that raises KeyboardInterrupt on call `n` (a generation in flight)."""

    def __init__(self, world: WorldModel, n: int):
        self.inner, self.calls, self.n = SerialEvaluator(world), 0, n

    def run(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.inner.run(*args, **kwargs)

    def close(self):
        pass


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    straight = make_run(tmp_path / "a", gas_reward=True)
    evolve(straight, _config(), progress=False)

    broken = make_run(tmp_path / "b", gas_reward=True)
    evaluator = InterruptAt(WorldModel.from_run(broken), n=3)
    with pytest.raises(KeyboardInterrupt):
        evolve(broken, _config(), progress=False, evaluator=evaluator)
    assert load_state(RunPaths(broken).es_state).generation == 2  # only gen 3 was lost
    with pytest.raises(Exception, match="--resume"):
        evolve(broken, _config(), progress=False)
    evolve(broken, _config(), resume=True, progress=False)

    with pytest.raises(UserError, match="population of 8"):
        evolve(broken, _config(popsize=6), resume=True, progress=False)

    a, b = load_state(RunPaths(straight).es_state), load_state(RunPaths(broken).es_state)
    assert a.generation == b.generation == 4
    np.testing.assert_array_equal(pickle.loads(a.es_bytes).mean, pickle.loads(b.es_bytes).mean)
    np.testing.assert_array_equal(a.best_params, b.best_params)
    for name in ("best", "mean", "worst", "sigma"):
        assert ([r[name] for r in read_csv(RunPaths(straight).logs / "evolve.csv")]
                == [r[name] for r in read_csv(RunPaths(broken).logs / "evolve.csv")])


def test_each_candidate_is_sent_once_with_its_row_of_seeds(tmp_path):
    world = WorldModel.from_run(make_run(tmp_path, gas_reward=True))
    evaluator = SerialEvaluator(world)
    params = np.zeros((2, world.param_count), np.float32)
    params[:, -2] = [-1.0, 1.0]
    seeds = np.array([[1, 2, 3], [4, 5, 6]])
    scores = evaluator.run("dream", params, seeds, 1.0, 10)
    assert scores.returns.shape == scores.steps.shape == (2, 3)
    np.testing.assert_array_equal(scores.steps, 10)  # never done
    for c in range(2):
        for r in range(3):
            one = evaluator.run("dream", params[c:c + 1], seeds[c:c + 1, r:r + 1], 1.0, 10)
            assert one.returns[0, 0] == pytest.approx(scores.returns[c, r], abs=1e-5)
    assert scores.returns[1].mean() > scores.returns[0].mean()  # the gas pays


def test_rollout_seeds_depend_on_all_four_indices():
    s = rollout_seeds(0, 0, 3, 2)
    assert s.shape == (3, 2) and len(np.unique(s)) == 6
    assert not np.array_equal(s, rollout_seeds(0, 1, 3, 2))
    assert not np.array_equal(s, rollout_seeds(1, 0, 3, 2))
    np.testing.assert_array_equal(s[:2], rollout_seeds(0, 0, 2, 2))  # not the popsize


def test_killed_ray_worker_does_not_stop_a_generation(tmp_path, ray_session):
    ray = ray_session
    world = WorldModel.from_run(make_run(tmp_path, gas_reward=True))
    evaluator = RayEvaluator(world, workers=2)
    try:
        ray.get([a.ping.remote() for a in evaluator.pool.actors])
        # Constant controllers (bias only) on the never-done gas problem: known returns.
        gas = np.linspace(-1.0, 1.0, 6)
        params = np.zeros((6, world.param_count), np.float32)
        params[:, -2] = gas
        steps = 8_000  # long enough to be killed while it runs
        result = {}
        thread = threading.Thread(target=lambda: result.update(
            r=evaluator.run("dream", params, np.arange(6)[:, None], 1.0, steps).returns[:, 0]))
        thread.start()
        time.sleep(0.5)
        victim = evaluator.pool.actors[0]
        ray.kill(victim)
        thread.join(timeout=120)
        assert not thread.is_alive()
        per_step = np.tanh(np.tanh(2 * (np.tanh(gas) + 1) / 2 - 1))
        np.testing.assert_allclose(result["r"], steps * per_step, rtol=1e-3, atol=1e-2)
        assert evaluator.pool.actors[0] is not victim  # replaced
    finally:
        evaluator.close()


@pytest.mark.parametrize("flags, message", [
    (["--tau", "0"], "--tau must be > 0"),
    (["--popsize", "1"], "--popsize must be >= 2"),
])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    run = make_run(tmp_path)
    assert main(["evolve", "--run", str(run), "--workers", "0", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_missing_models_are_one_line_errors(tmp_path, capsys):
    assert main(["evolve", "--run", str(tmp_path / "empty"), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "vae.pt: missing" in err and len(err.splitlines()) == 1
    run = make_run(tmp_path / "nom")
    RunPaths(run).mdnrnn.unlink()
    assert main(["evolve", "--run", str(run), "--workers", "0"]) == 2
    assert "mdnrnn.pt: missing" in capsys.readouterr().err
