"""dream-rank: the agent and perturbations of it, scored in the dream (as evolution scores
them) and in the real CarRacing, and the rank correlation between the two."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fake_run import make_run

from worldmodels.agent import WorldModel
from worldmodels.cli import main
from worldmodels.config import EvaluateConfig, EvolveConfig, PipelineConfig, save_json
from worldmodels.dream_rank import DREAM_SEED, RANK_SEED, dream_rank, perturbations, ranks, spearman
from worldmodels.env.dream import BatchedDream
from worldmodels.evaluate import evaluate
from worldmodels.models.controller import param_count
from worldmodels.run import RunPaths

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ranks_share_ties_and_spearman_reads_order_only():
    np.testing.assert_array_equal(ranks([3.0, 1.0, 2.0]), [2, 0, 1])
    np.testing.assert_array_equal(ranks([1.0, 1.0, 2.0]), [0.5, 0.5, 2])
    assert spearman([1, 2, 3, 4], [10, 200, 3000, 40000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [5, 5, 5]) == 0.0


def _run(tmp_path):
    # M's dream reward rises with the gas action (fake_run), so candidates differ in the dream.
    run = make_run(tmp_path, gas_reward=True)
    save_json(PipelineConfig(evolve=EvolveConfig(tau=1.0, max_steps=30),
                             evaluate=EvaluateConfig(max_steps=20)), RunPaths(run).config)
    params = np.random.default_rng(0).normal(0, 0.5, param_count(32, 16)).astype(np.float32)
    params[-2] = 2.0  # gas on: the car moves and collects tiles
    np.save(RunPaths(run).controller, params)
    return run, params


def test_dream_rank_scores_the_agent_and_its_perturbations_in_both(tmp_path):
    run, agent = _run(tmp_path)
    result = dream_rank(run, candidates=4, sigma=0.5, rollouts=3, episodes=2, workers=0, seed=7,
                        progress=False)
    params = perturbations(agent, 4, 0.5, seed=7)
    np.testing.assert_array_equal(params[0], agent)  # candidate 0 is the agent itself
    assert not np.allclose(params[1], params[2])
    # The dream: each candidate on the same dreams, as evolution scores it.
    world = WorldModel.from_run(run)
    dream = BatchedDream(world.mdnrnn(), world.starts(), 1.0, 30)
    reference = np.mean([dream.rollout(params, np.full(4, DREAM_SEED + r)) for r in range(3)], 0)
    np.testing.assert_allclose(result.dream, reference, rtol=1e-5)
    assert len(set(np.round(result.dream, 4))) > 1  # the gas differs, so does the dream
    # The game: the agent's score is what `evaluate` gives on the same seeds and length.
    agent_real = evaluate(run, EvaluateConfig(episodes=2, seed=RANK_SEED, max_steps=20,
                                              workers=0), progress=False, out=tmp_path / "e.json")
    assert result.real[0] == pytest.approx(agent_real["mean"], abs=1e-4)
    assert all(s >= 0 for s in result.real_sem) and len(result.real) == 4
    assert result.spearman == pytest.approx(spearman(result.dream, result.real))
    assert -1 <= result.real_split_half <= 1
    real = np.array(result.real_returns)
    np.testing.assert_allclose(real.mean(1), result.real)
    assert result.agent_minus_others == pytest.approx(real[0].mean() - real[1:].mean())


def test_cli_writes_the_report_and_refuses_bad_input_in_one_line(tmp_path, capsys):
    run, _ = _run(tmp_path)
    assert main(["dream-rank", "--run", str(run), "--candidates", "3", "--rollouts", "1",
                 "--episodes", "2", "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert "Spearman, dream against real" in captured.out and "agent" in captured.out
    assert "dream-rank: real episodes" in captured.err  # a bar on the long part
    saved = json.loads((run / "dream_rank.json").read_text())
    assert len(saved["dream"]) == 3 and saved["episodes"] == 2 and saved["sigma"] == 0.1
    for flags, named in ((["--candidates", "2"], "--candidates"), (["--sigma", "nan"], "--sigma"),
                         (["--sigma", "-1"], "--sigma")):
        assert main(["dream-rank", "--run", str(run), "--workers", "0", *flags]) == 2
        err = capsys.readouterr().err
        assert named in err and err.count("\n") == 1
    RunPaths(run).controller.unlink()
    assert main(["dream-rank", "--run", str(run), "--workers", "0"]) == 2
    assert "worldmodels evolve" in capsys.readouterr().err
