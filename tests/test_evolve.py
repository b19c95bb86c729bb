"""CMA-ES evolution: it climbs a seeded problem, resumes exactly, survives a killed worker."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time

import cma
import numpy as np
import pytest
from fake_run import make_run

from worldmodels.agent import WorldModel
from worldmodels.cli import main
from worldmodels.config import EvolveConfig, preset, save_json
from worldmodels.errors import UserError
from worldmodels.evolve import cmaes, safe_pickle
from worldmodels.evolve.cmaes import evolve, load_state, real_check_due, rollout_seeds
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
    # C is a CMA-ES mean, and it has learnt to push the gas: the lever of this problem.
    assert state.best_params[-2] > 0
    assert state.best_fitness == pytest.approx(max(r["best"] for r in rows))
    real = read_csv(RunPaths(run).logs / "evolve_real.csv")  # the mean, in real CarRacing
    assert [r["step"] for r in real] == [6, 12] and all(np.isfinite(r["real_mean"]) for r in real)
    # The agent is the mean with the best real check (selection seeds), not the last mean.
    best = max(real, key=lambda r: r["real_mean"])
    assert state.selected_generation == best["step"]
    assert state.selected_real == pytest.approx(best["real_mean"])
    controller = np.load(RunPaths(run).controller, allow_pickle=False)
    np.testing.assert_array_equal(controller, state.selected_params)
    assert controller.shape == (param_count(32, 16),)
    if best["step"] == 12:
        np.testing.assert_allclose(controller, pickle.loads(state.es_bytes).mean, rtol=1e-6)


def test_without_real_checks_the_agent_is_the_last_mean(tmp_path):
    run = make_run(tmp_path, gas_reward=True)
    state = evolve(run, _config(generations=5), progress=False)
    controller = np.load(RunPaths(run).controller, allow_pickle=False)
    np.testing.assert_allclose(controller, pickle.loads(state.es_bytes).mean, rtol=1e-6)
    assert controller[-2] > 0 and state.selected_params is None


def test_real_checks_every_n_generations_and_after_the_last():
    config = _config(generations=25, real_eval_every=10)
    assert [g for g in range(1, 26) if real_check_due(config, g)] == [10, 20, 25]
    assert not any(real_check_due(_config(real_eval_every=0), g) for g in range(1, 5))


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


def test_candidates_that_all_act_alike_grow_sigma_up_to_its_cap(tmp_path):
    # C restarted around saturated outputs (biases far beyond tanh's range): no step of sigma
    # changes an action, every candidate dreams the same return, and sigma doubles.
    run = make_run(tmp_path, gas_reward=True)
    paths = RunPaths(run)
    config = _config(generations=1, sigma0=0.05)
    evolve(run, config, progress=False)
    state = load_state(paths.es_state)
    x0 = np.zeros(param_count(32, 16))
    x0[-3:] = [100.0, 100.0, -100.0]  # full right, full gas, no brake
    cmaes.restart(state, x0)
    cmaes.save_state(paths.es_state, state)
    evolve(run, _config(generations=7, sigma0=0.05), resume=True, progress=False)
    rows = read_csv(paths.logs / "evolve.csv")[1:]
    assert all(r["best"] == r["worst"] for r in rows)
    sigmas = [r["sigma"] for r in rows]
    cap = cmaes.FLAT_CAP * 0.05
    assert 1.8 * 0.05 < sigmas[0] < 0.05 * cmaes.FLAT_GROWTH
    assert all(1.8 * a < b for a, b in zip(sigmas, sigmas[1:4], strict=False))
    assert sigmas[-2:] == [cap, cap]
    # A generation whose candidates differ leaves sigma to CMA-ES.
    assert cmaes.acts_alike(np.array([200.0, 200.0 + 1e-3]))
    assert not cmaes.acts_alike(np.array([200.0, 201.0]))
    assert not cmaes.acts_alike(np.array([0.0, 1e-3]))


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


def test_rollout_seeds_are_common_to_the_candidates_of_a_generation():
    s = rollout_seeds(0, 0, 3, 2)
    assert s.shape == (3, 2) and len(np.unique(s[0])) == 2
    assert (s == s[0]).all()  # every candidate dreams the same dreams
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
    (["--rollouts", "2", "--popsize", "0"], "evolve.popsize must be >= 2, got 0"),
    (["--popsize", "1"], "config.json or a flag: evolve.popsize must be >= 2, got 1"),
])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    run = make_run(tmp_path)
    assert main(["evolve", "--run", str(run), "--workers", "0", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_bad_tau_in_config_json_names_the_key(tmp_path, capsys):
    run = make_run(tmp_path)
    config = preset("tiny")
    config.evolve.tau = 0.0  # --tau 0 itself is refused by argparse
    save_json(config, RunPaths(run).config)
    assert main(["evolve", "--run", str(run), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{RunPaths(run).config}: evolve.tau must be a finite number > 0, got 0.0")


def test_an_unknown_done_rule_in_config_json_names_the_key(tmp_path, capsys):
    run = make_run(tmp_path)
    config = preset("tiny")
    config.evolve.done = "coin"
    save_json(config, RunPaths(run).config)
    assert main(["evolve", "--run", str(run), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("config.json: evolve.done must be one of threshold, likely, sample, "
                        'got "coin"')  # refused as the file is read, naming it
    # A config built in code is refused by the same check before any generation.
    for bad, named in (({"done": "coin"}, "evolve.done"), ({"where": "gym"}, "evolve.where")):
        with pytest.raises(UserError, match=f"{named} must be one of"):
            evolve(run, _config(**bad), progress=False)
    assert not RunPaths(run).es_state.exists()


def test_missing_models_are_one_line_errors(tmp_path, capsys):
    assert main(["evolve", "--run", str(tmp_path / "empty"), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "vae.pt: missing" in err and len(err.splitlines()) == 1
    run = make_run(tmp_path / "nom")
    RunPaths(run).mdnrnn.unlink()
    assert main(["evolve", "--run", str(run), "--workers", "0"]) == 2
    assert "mdnrnn.pt: missing" in capsys.readouterr().err


class RunsCode:
    """A pickle that would run a shell command when loaded (os.system via __reduce__)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_es_pickle_garbage_and_code_are_one_line_and_nothing_runs(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    es_state = RunPaths(run).es_state
    args = ["evolve", "--run", str(run), "--workers", "0", "--resume", "--generations", "2"]
    es_state.write_bytes(b"\x80\x04K\x01garbage, not a pickle")  # `invalid literal for int()`
    assert main(args) == 2
    assert "not a readable CMA-ES state" in capsys.readouterr().err

    marker = tmp_path / "pwned"
    es_state.write_bytes(pickle.dumps(RunsCode(marker)))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "refusing to load" in err and "system" in err and len(err.splitlines()) == 1
    assert not marker.exists()

    # The inner es_bytes (cma's pickle_dumps()) go through the same unpickler.
    es_state.unlink()
    evolve(run, _config(generations=1), progress=False)
    raw = pickle.loads(es_state.read_bytes())
    raw["es_bytes"] = pickle.dumps(RunsCode(marker))
    es_state.write_bytes(pickle.dumps(raw))
    assert main(args) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()



# cma adapts sigma by CSA, and by TPA >= 300 dimensions; it keeps no archive from popsize 33
@pytest.mark.parametrize("dimension,popsize", [(50, 8), (867, 8), (20, 64)])
def test_a_cma_state_of_any_size_loads_through_the_safe_unpickler(dimension, popsize):
    es = cma.CMAEvolutionStrategy(np.zeros(dimension), 0.1,
                                  {"popsize": popsize, "seed": 3, "verbose": -9})
    for _ in range(3):
        solutions = es.ask()
        es.tell(solutions, [float(np.sum(np.square(x))) for x in solutions])
    restored = safe_pickle.loads(es.pickle_dumps())
    np.testing.assert_array_equal(np.asarray(restored.ask()), np.asarray(es.ask()))


class GetsAttribute:
    def __reduce__(self):
        return (getattr, (1, "real"))


def test_getattr_is_allowed_only_on_a_random_state():
    # A general getattr reaches any module through a function's __globals__.
    with pytest.raises(safe_pickle.UnsafePickleError, match="getattr"):
        safe_pickle.loads(pickle.dumps(GetsAttribute()))
    rng = np.random.RandomState(0)
    assert safe_pickle.loads(pickle.dumps(rng.randn))(2).shape == (2,)


def test_a_kill_between_the_csv_row_and_the_checkpoint_leaves_no_duplicate(tmp_path,
                                                                              monkeypatch):
    run = make_run(tmp_path / "run")
    real_save = cmaes.save_state

    def killed_at_generation_2(path, state):
        if state.generation == 2:
            raise KeyboardInterrupt  # after generation 2's row, before its checkpoint
        real_save(path, state)

    monkeypatch.setattr(cmaes, "save_state", killed_at_generation_2)
    with pytest.raises(KeyboardInterrupt):
        evolve(run, _config(generations=3), progress=False)
    monkeypatch.setattr(cmaes, "save_state", real_save)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = RunPaths(run).root / f".tmp_{dead.pid}_x_es.pickle"  # a SIGKILLed write
    stale.write_bytes(b"half")
    evolve(run, _config(generations=3), resume=True, progress=False)
    assert [r["step"] for r in read_csv(RunPaths(run).logs / "evolve.csv")] == [1, 2, 3]
    assert not stale.exists()


def test_a_c_reading_the_cell_state_evolves_its_own_size_and_cannot_resume_a_plain_one(tmp_path):
    run = make_run(tmp_path, gas_reward=True)
    evolve(run, _config(generations=2), progress=False)
    config = preset("tiny")
    config.evolve.sees_cell = True
    save_json(config, RunPaths(run).config)
    needs = "over 147 parameters but the run's C \\(reading z, h and c\\) needs 195"
    with pytest.raises(UserError, match=needs):
        evolve(run, _config(generations=3), resume=True, progress=False)
    RunPaths(run).es_state.unlink()
    state = evolve(run, _config(generations=3), progress=False)
    assert np.load(RunPaths(run).controller).shape == (param_count(32, 16, sees_cell=True),)
    assert state.best_params[-2] > 0  # it learnt the gas, as the plain C does
