"""The tiny pipeline end to end on the real CarRacing: every stage, then a rerun that skips."""

from __future__ import annotations

import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from fake_run import evolve_elsewhere_then_record_taus

from worldmodels import pipeline as pipeline_module
from worldmodels.cli import main
from worldmodels.config import load_json, preset, save_json
from worldmodels.errors import UserError
from worldmodels.evaluate import agent_digest
from worldmodels.logger import read_csv
from worldmodels.pipeline import pipeline
from worldmodels.run import RunPaths


def test_tiny_pipeline_end_to_end_then_skips(tmp_path, ray_session, monkeypatch):
    run, data = tmp_path / "run", tmp_path / "data"
    tiny = preset("tiny")
    results = pipeline(run, "tiny", data=data, progress=False)
    paths = RunPaths(run)
    episodes = tiny.collect.episodes + tiny.iterate.episodes
    assert len(list(data.glob("episode_*.npz"))) == episodes
    assert len(list(paths.latents.glob("episode_*.npz"))) == episodes
    for made in (paths.vae, paths.mdnrnn, paths.es_state, paths.controller, paths.evaluation):
        assert made.exists(), made
    rows = read_csv(paths.logs / "evolve.csv")
    generations = tiny.evolve.generations + tiny.iterate.iterations * tiny.iterate.generations
    assert [r["step"] for r in rows] == list(range(1, generations + 1))
    iterations = read_csv(paths.logs / "iterate.csv")  # the agent's own episodes, then M and C
    assert [r["step"] for r in iterations] == [1]
    assert iterations[0]["episodes"] == tiny.collect.episodes + tiny.iterate.episodes
    # The random baseline barely varies: the preset may give it fewer episodes.
    for policy, count in (("controller", tiny.evaluate.episodes),
                          ("random", tiny.evaluate.random_episodes)):
        assert results[policy]["episodes"] == len(results[policy]["returns"]) == count
    svg = (run / "fitness.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<circle") == 2  # real checks: gens 3 and 4
    assert svg.count(">it ") == 1  # where iteration 1 retrained M
    dream = iio.imread(paths.videos / "dream.mp4")
    assert dream.shape[1:] == (256, 256, 3)
    # M's done head starts at the data's done rate (none here), so the dream is not ended
    # by an untrained head: it drives the whole requested length (the start frame + steps).
    assert len(dream) == tiny.evolve.max_steps + 1
    real = iio.imread(paths.videos / "real.mp4")
    assert real.shape[1:] == (256, 520, 3) and len(real) <= tiny.evaluate.max_steps

    # Everything is there: a rerun skips every stage and changes nothing. Its evolve stage
    # keeps the dream evolution ran in (as after `evolve --tau 2.5`), not config.json's.
    taus = evolve_elsewhere_then_record_taus(run, pipeline_module, monkeypatch)
    stamps = {p: p.stat().st_mtime_ns for p in (paths.vae, paths.mdnrnn, paths.controller,
                                                paths.evaluation, paths.videos / "real.mp4")}
    start = time.perf_counter()
    again = pipeline(run, "tiny", data=data, progress=False)
    assert time.perf_counter() - start < 30
    assert again["controller"]["returns"] == results["controller"]["returns"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert taus == [2.5] and tiny.evolve.tau != 2.5

    # The first evolution's agent now checks best. The pipeline keeps the agent chosen when
    # the rounds ended; `iterate --choose check` chooses again and makes it the run's agent,
    # and then the pipeline makes the evaluation and videos of the new agent.
    first = run / "iterations" / "00"
    save_json({**load_json(first / "agent.json"), "real_check": 1e9}, first / "agent.json")
    last = paths.controller.read_bytes()
    pipeline(run, "tiny", data=data, progress=False)
    assert paths.controller.read_bytes() == last
    assert main(["iterate", "--run", str(run), "--data", str(data), "--choose", "check"]) == 0
    assert last != paths.controller.read_bytes() == (first / "controller.npy").read_bytes()
    videos = {v: (paths.videos / v).stat().st_mtime_ns for v in ("dream.mp4", "real.mp4")}
    pipeline(run, "tiny", data=data, progress=False)
    m_weights = torch.load(paths.mdnrnn, weights_only=True)["model"]
    assert load_json(paths.evaluation)["agent"] == agent_digest(np.load(paths.controller),
                                                                m_weights)
    assert all((paths.videos / v).stat().st_mtime_ns > t for v, t in videos.items())

    with pytest.raises(UserError, match="made with --preset tiny"):
        pipeline(run, "small", data=data, progress=False)


def test_run_seed_derives_every_stage_seed_and_is_kept(tmp_path):
    from worldmodels.pipeline import run_config

    paths = RunPaths(tmp_path / "run")
    config = run_config(paths, "tiny", seed=3)
    assert (config.seed, config.collect.seed) == (3, 30_000)
    assert config.vae.seed == config.mdnrnn.seed == config.evolve.seed == 3
    assert config.evaluate.seed == preset("tiny").evaluate.seed  # same evaluation episodes
    assert run_config(paths, "tiny").seed == 3  # saved with the run
    with pytest.raises(UserError, match="--seed 3, not 4"):
        run_config(paths, "tiny", seed=4)
    with pytest.raises(UserError, match="--seed"):
        run_config(RunPaths(tmp_path / "other"), "tiny", seed=100)


def test_a_set_is_kept_with_the_run_and_a_different_one_refused(tmp_path):
    from worldmodels.pipeline import run_config

    paths = RunPaths(tmp_path / "run")
    assert run_config(paths, "tiny", settings=["vae.epochs=5"]).vae.epochs == 5
    assert run_config(paths, "tiny").vae.epochs == 5  # resumed without --set: as made
    assert run_config(paths, "tiny", settings=["vae.epochs=5"]).vae.epochs == 5
    with pytest.raises(UserError, match="made with vae.epochs=5, not 6"):
        run_config(paths, "tiny", settings=["vae.epochs=6"])
    with pytest.raises(UserError, match='made with mdnrnn.mixture="factorised", not "joint"'):
        run_config(paths, "tiny", settings=["mdnrnn.mixture=joint"])
