"""Evolve C with CMA-ES (the `cma` package): ask, score each candidate as the mean return of R
rollouts (in the dream by default), tell cma the negated fitness (it minimises).

Reproducible and resumable:
- rollout seeds come from (seed, generation, candidate, rollout), so fitness does not depend
  on how candidates are split across workers;
- cma draws its samples from its own seeded numpy RandomState (its `randn` option), which
  is pickled with it, so a resumed run draws what an uninterrupted one would have;
- after every generation RUN/es.pickle (cma's `pickle_dumps()` plus generation, best
  parameters and the config) is replaced atomically, and so is RUN/controller.npy, the
  agent: the CMA-ES mean. Not the best candidate: that is the maximum of `popsize` noisy
  fitness estimates, so its score is biased upwards by the luck of its rollouts (it stays
  in es.pickle as `best_params`). An interrupt loses at most the generation in flight.

Logs: RUN/logs/evolve.csv (best/mean/worst fitness, sigma, seconds per generation) and
RUN/logs/evolve_real.csv (the CMA-ES mean scored in the real env every N generations).
"""

from __future__ import annotations

import argparse
import pickle
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldmodels import atomic
from worldmodels.agent import WorldModel
from worldmodels.config import EvolveConfig, from_dict
from worldmodels.device import resolve_device
from worldmodels.errors import UserError
from worldmodels.evolve.workers import make_evaluator
from worldmodels.logger import RunLogger
from worldmodels.models.mdn import check_tau
from worldmodels.run import RunPaths, load_run_config

REAL_EVAL_SEED = 2_000_000  # the periodic real-env check uses the same episodes every time


@dataclass
class EvolveState:
    es_bytes: bytes  # es.pickle_dumps()
    generation: int  # generations completed
    best_params: np.ndarray | None
    best_fitness: float
    config: dict


def validate(config: EvolveConfig) -> None:
    if config.where not in ("dream", "real"):
        raise UserError(f"--in must be dream or real, got {config.where!r}")
    check_tau(config.tau)
    if config.popsize < 2:
        raise UserError(f"--popsize must be >= 2 (CMA-ES needs a population), got "
                        f"{config.popsize}")
    if config.rollouts < 1 or config.generations < 1 or config.max_steps < 1:
        raise UserError("--rollouts, --generations and max_steps must be >= 1")
    if not config.sigma0 > 0:
        raise UserError(f"sigma0 must be > 0, got {config.sigma0}")


def rollout_seeds(seed: int, generation: int, popsize: int, rollouts: int) -> np.ndarray:
    """(popsize, rollouts) seeds, each a function of (seed, generation, candidate, rollout)."""
    return np.array([[np.random.SeedSequence([seed, generation, c, r]).generate_state(1)[0]
                      for r in range(rollouts)] for c in range(popsize)], np.int64)


def save_state(path: Path, state: EvolveState) -> None:
    atomic.write_bytes(path, pickle.dumps(asdict(state)))


def load_state(path: Path) -> EvolveState:
    # Unpickling: cma's own state is a pickle (DESIGN.md); this file is written by us, in the run.
    try:
        with path.open("rb") as f:
            return EvolveState(**pickle.load(f))
    except (OSError, EOFError, pickle.UnpicklingError, TypeError, AttributeError) as err:
        raise UserError(f"{path}: not a readable CMA-ES state ({type(err).__name__})") from None


def save_params(path: Path, params: np.ndarray) -> None:
    with atomic.replacing(path) as tmp, tmp.open("wb") as f:
        np.save(f, np.asarray(params, np.float32))


def evolve(run: Path, config: EvolveConfig, resume: bool = False, address: str | None = None,
           progress: bool = True, evaluator=None, device: str = "cpu") -> EvolveState:
    """Run (or with `resume`, continue) CMA-ES up to `config.generations`; returns the final
    state. `evaluator` (optional) replaces the one made from `config.workers`."""
    with warnings.catch_warnings():  # cma warns when matplotlib (for its plots) is absent
        warnings.simplefilter("ignore")
        import cma

    validate(config)
    paths = RunPaths(Path(run))
    world = WorldModel.from_run(paths.root)  # one line if V, M or latents are missing
    n_params = world.param_count
    if paths.es_state.exists() and not resume:
        raise UserError(f"{paths.es_state} exists; pass --resume to continue it or choose "
                        "another --run")
    if resume and paths.es_state.exists():
        state = load_state(paths.es_state)
        saved = from_dict(EvolveConfig, state.config)
        if config.popsize != saved.popsize:
            raise UserError(f"{paths.es_state}: this run evolves a population of "
                            f"{saved.popsize}; it cannot resume with --popsize {config.popsize}")
        config.seed, config.sigma0 = saved.seed, saved.sigma0  # they belong to the CMA-ES state
        state.config = asdict(config)
        es = pickle.loads(state.es_bytes)
    else:
        es = cma.CMAEvolutionStrategy(np.zeros(n_params), config.sigma0, {
            "popsize": config.popsize, "seed": config.seed + 1, "verbose": -9,
            # cma's own RNG, pickled with it (numpy's global one would not be).
            "randn": np.random.RandomState(config.seed).randn,
        })
        state = EvolveState(es.pickle_dumps(), 0, None, -np.inf, asdict(config))
    if es.N != n_params:
        raise UserError(f"{paths.es_state}: CMA-ES over {es.N} parameters but the run's M "
                        f"needs {n_params}")
    if state.generation >= config.generations:
        if progress:
            tqdm.write(f"evolve: {paths.es_state} already has {state.generation} generations")
        return state

    own_evaluator = evaluator is None
    if own_evaluator:
        evaluator = make_evaluator(world, config.workers, address, device,
                                   config.envs_per_worker)
    logger = RunLogger(paths.logs, "evolve")
    real_logger = RunLogger(paths.logs, "evolve_real")
    bar = tqdm(total=config.generations, initial=state.generation, desc=f"evolve ({config.where})",
               unit="gen", disable=not progress)
    try:
        for gen in range(state.generation, config.generations):
            t0 = time.perf_counter()
            solutions = es.ask()
            candidates = np.asarray(solutions, np.float32)
            seeds = rollout_seeds(config.seed, gen, len(candidates), config.rollouts)
            # Each candidate once, with its row of seeds: not one copy per rollout.
            fitness = evaluator.run(config.where, candidates, seeds, config.tau,
                                    config.max_steps).returns.mean(1)
            es.tell(solutions, (-fitness).tolist())
            best = int(fitness.argmax())
            if fitness[best] > state.best_fitness:
                state.best_fitness, state.best_params = float(fitness[best]), candidates[best]
            real_mean = None
            if config.real_eval_every and (gen + 1) % config.real_eval_every == 0:
                real_seeds = REAL_EVAL_SEED + np.arange(config.real_eval_episodes)
                mean_params = np.asarray(es.mean, np.float32)[None]
                real_mean = float(evaluator.run("real", mean_params, real_seeds[None],
                                                config.tau, config.max_steps).returns.mean())
            state.generation, state.es_bytes = gen + 1, es.pickle_dumps()
            save_params(paths.controller, np.asarray(es.mean))
            save_state(paths.es_state, state)
            seconds = time.perf_counter() - t0
            logger.log(gen + 1, best=fitness.max(), mean=fitness.mean(), worst=fitness.min(),
                       sigma=es.sigma, best_ever=state.best_fitness, seconds=seconds)
            if real_mean is not None:
                real_logger.log(gen + 1, real_mean=real_mean)
            bar.update(1)
            bar.set_postfix(best=f"{fitness.max():.1f}", mean=f"{fitness.mean():.1f}",
                            sigma=f"{es.sigma:.3f}",
                            **({} if real_mean is None else {"real": f"{real_mean:.1f}"}))
    finally:
        bar.close()
        logger.close()
        real_logger.close()
        if own_evaluator:
            evaluator.close()
    return state


def cli_evolve(args: argparse.Namespace) -> int:
    paths = RunPaths(args.run)
    paths.require(paths.vae, "train-vae")
    paths.require(paths.mdnrnn, "train-mdnrnn")
    if args.resume and paths.es_state.exists():  # resume with the settings it was started with
        config = from_dict(EvolveConfig, load_state(paths.es_state).config)
    else:
        config = load_run_config(paths).evolve
    for flag, name in (("where", "where"), ("generations", "generations"),
                       ("popsize", "popsize"), ("rollouts", "rollouts"), ("tau", "tau"),
                       ("workers", "workers"), ("max_steps", "max_steps")):
        if getattr(args, flag) is not None:
            setattr(config, name, getattr(args, flag))
    if args.envs_per_worker is not None:
        config.envs_per_worker = args.envs_per_worker
    state = evolve(args.run, config, resume=args.resume, address=args.address,
                   device=str(resolve_device(args.device)))
    print(f"evolve: {state.generation} generations, best fitness {state.best_fitness:.1f}; "
          f"C (the CMA-ES mean) -> {paths.controller}")
    return 0
