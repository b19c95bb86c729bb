"""Every stage in order: collect -> train-vae -> encode -> train-mdnrnn -> evolve -> iterate
(when the preset has iterations) -> evaluate (agent and random baseline) -> RUN/fitness.svg
and videos.

A stage whose outputs exist is skipped; one that was interrupted resumes (each stage saves
after every epoch or generation), so rerunning the same command after Ctrl-C or a crash
continues where it stopped. The run keeps the preset it was made with in RUN/config.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from tqdm import tqdm

from worldmodels.agent import WorldModel, load_controller
from worldmodels.config import (
    PipelineConfig,
    preset,
    preset_for,
    setting_key,
    with_seed,
    with_settings,
)
from worldmodels.data.collect import collect
from worldmodels.device import resolve_device
from worldmodels.env.games import get_game
from worldmodels.errors import UserError
from worldmodels.evaluate import evaluate, held_summary, record_real_video, summary_path
from worldmodels.evolve.cmaes import evolve, evolved_config
from worldmodels.evolve.workers import make_evaluator
from worldmodels.iterate import check_choice, iterate
from worldmodels.plot import fitness_svg
from worldmodels.run import RunPaths, load_run_config
from worldmodels.train.encode import encode
from worldmodels.train.mdnrnn import train_mdnrnn
from worldmodels.train.vae import train_vae
from worldmodels.video import dream_frames, write_video


def _say(progress: bool, text: str) -> None:
    if progress:
        tqdm.write(f"pipeline: {text}")


def run_config(paths: RunPaths, preset_name: str, seed: int | None = None,
               settings: list[str] | None = None) -> PipelineConfig:
    """The run's saved config, made from the preset (with `seed` and `--set` `settings`) on
    first use; refuses a run of another preset, seed or setting (its stages would silently
    mix them)."""
    settings = settings or []
    made = with_settings(with_seed(preset(preset_name), seed or 0), settings)
    if paths.config.exists():
        saved = load_run_config(paths)  # checks the file's keys and types first
        if saved.preset != preset_name:
            raise UserError(f"{paths.config}: this run was made with --preset {saved.preset}, "
                            f"not {preset_name}; choose another --run")
        if seed is not None and saved.seed != seed:
            raise UserError(f"{paths.config}: this run was made with --seed {saved.seed}, "
                            f"not {seed}; choose another --run")
        for section, name in map(setting_key, settings):
            had, asked = (getattr(getattr(c, section), name) for c in (saved, made))
            if had != asked:
                raise UserError(f"{paths.config}: this run was made with {section}.{name}="
                                f"{json.dumps(had)}, not {json.dumps(asked)}; choose another "
                                f"--run")
    return load_run_config(paths, default=made)


def latents_fresh(paths: RunPaths, episodes: list[Path]) -> bool:
    """Every episode encoded, and after V was last saved."""
    files = [paths.latents / e.name for e in episodes]
    if not all(f.exists() for f in files):
        return False
    return min(f.stat().st_mtime for f in files) >= paths.vae.stat().st_mtime


def pipeline(run: Path, preset_name: str, data: Path | None = None, workers: int | None = None,
             address: str | None = None, progress: bool = True, device: str = "cpu",
             seed: int | None = None, settings: list[str] | None = None) -> dict:
    """Run (or continue) every stage; returns the agent's evaluation and the baseline's.
    Networks run on `device` (a resolved name: cpu, cuda, cuda:N); `seed` (a new run's;
    default 0) makes an independent run of the same preset, and `settings` (`--set
    section.field=value`) a variant of it."""
    paths = RunPaths(Path(run))
    paths.writable()
    config = run_config(paths, preset_name, seed, settings)
    if config.iterate.iterations:  # now, not when the rounds end hours later
        check_choice(config.iterate, evolved_config(paths).real_eval_every)
    data = Path(data) if data is not None else paths.root / "data"
    if workers is not None:  # for this invocation only; the saved config keeps the preset's
        config.collect.workers = config.evolve.workers = config.evaluate.workers = workers
        config.iterate.workers = workers
    start = time.perf_counter()

    game = get_game(config.env)
    _say(progress, f"collect {config.collect.episodes} episodes of {game.title} -> {data}")
    episodes = collect(data, config.collect, address=address, progress=progress,
                       env=game.name)

    _say(progress, "train-vae")
    train_vae(data, paths.root, config.vae, resume=True, progress=progress, device=device)

    if latents_fresh(paths, episodes):
        _say(progress, "encode: done already")
    else:
        _say(progress, "encode")
        encode(paths.root, data, progress=progress, device=device)

    _say(progress, "train-mdnrnn")
    if paths.mdnrnn.exists() and paths.mdnrnn.stat().st_mtime < paths.vae.stat().st_mtime:
        raise UserError(f"{paths.mdnrnn} is older than {paths.vae} (V changed under it); "
                        "move it away to retrain M")
    train_mdnrnn(paths.root, config.mdnrnn, resume=True, progress=progress, device=device)

    # One set of workers (each holding V and M) for evolution and both evaluations.
    world = WorldModel.from_run(paths.root)
    evaluator = make_evaluator(world, config.evolve.workers, address, device,
                               config.evaluate.envs_per_worker)
    results = {}
    try:
        _say(progress, f"evolve {config.evolve.generations} generations in the "
                       f"{config.evolve.where}")
        # Once evolution has started, its dream is es.pickle's (evolve --tau/--done included).
        evolve_config = dataclasses.replace(evolved_config(paths), workers=config.evolve.workers,
                                            generations=config.evolve.generations)
        evolve(paths.root, evolve_config, resume=True, progress=progress, evaluator=evaluator)
        if config.iterate.iterations:  # M and C change: the evaluations need fresh workers
            evaluator.close()
            _say(progress, f"iterate {config.iterate.iterations} times")
            iterate(paths.root, config.iterate, data, address=address, progress=progress,
                    device=device)
            world = WorldModel.from_run(paths.root)
            evaluator = make_evaluator(world, config.evaluate.workers, address, device,
                                       config.evaluate.envs_per_worker)
        random_eval = dataclasses.replace(
            config.evaluate, episodes=config.evaluate.random_episodes or config.evaluate.episodes)
        for policy, eval_config in (("controller", config.evaluate), ("random", random_eval)):
            # The run's agent may have changed since (iterate chose another snapshot).
            held = held_summary(paths, summary_path(paths, policy), eval_config, policy)
            if held is not None:
                _say(progress, f"evaluate ({policy}): done already")
                results[policy] = held
                continue
            _say(progress, f"evaluate ({policy}): {eval_config.episodes} real episodes")
            results[policy] = evaluate(paths.root, eval_config, policy, progress=progress,
                                       evaluator=evaluator)
    finally:
        evaluator.close()

    fitness_svg(paths.root)  # RUN/fitness.svg: dream and real fitness per generation
    dream_video, real_video = paths.videos / "dream.mp4", paths.videos / "real.mp4"
    agent_made = max(paths.controller.stat().st_mtime, paths.mdnrnn.stat().st_mtime)
    for video in (dream_video, real_video):  # of an agent the run no longer has
        if video.exists() and video.stat().st_mtime < agent_made:
            video.unlink()
    if not dream_video.exists():
        _say(progress, f"dream video -> {dream_video}")
        write_video(dream_video, dream_frames(paths.root, steps=config.evolve.max_steps,
                                              device=device), fps=game.fps)
    if not real_video.exists():
        _say(progress, f"real video -> {real_video}")
        record_real_video(paths.root, real_video, load_controller(paths), config.evaluate.seed,
                          config.evaluate.max_steps, device)

    agent, baseline = results["controller"], results["random"]
    _say(progress, f"done in {time.perf_counter() - start:.0f} s. Real {game.title} over "
                   f"{agent['episodes']} episodes: agent {agent['mean']:.1f} +- "
                   f"{agent['std']:.1f}, random policy {baseline['mean']:.1f} +- "
                   f"{baseline['std']:.1f} ({baseline['episodes']} episodes)")
    return results


def cli_pipeline(args: argparse.Namespace) -> int:
    results = pipeline(args.run, preset_for(args.preset, args.env), args.data, args.workers,
                       args.address,
                       device=str(resolve_device(args.device)), seed=args.seed,
                       settings=args.set)
    agent, baseline = results["controller"], results["random"]
    print(f"pipeline: agent {agent['mean']:.1f} +- {agent['std']:.1f} over "
          f"{agent['episodes']} real episodes, random {baseline['mean']:.1f} +- "
          f"{baseline['std']:.1f} over {baseline['episodes']}; {RunPaths(args.run).root}")
    return 0
