"""Evolve C with CMA-ES (the `cma` package): ask, score each candidate as the mean return of R
rollouts (in the dream by default), tell cma the negated fitness (it minimises).

Common random numbers: every candidate of a generation dreams from the same R seeds, which
come from (seed, generation, rollout), so candidates are ranked on the same dreams and the
ranking compares controllers, not luck; fitness does not depend on how candidates are split
across workers.

Selection by real checks: every `real_eval_every` generations (and after the last) the
CMA-ES mean plays `real_eval_episodes` real episodes of `real_eval_max_steps` steps on
selection seeds (REAL_EVAL_SEED + i, disjoint from the evaluation seeds 1,000,000+).
RUN/controller.npy, the agent, is the mean with the best real check so far (before the first
check, the latest mean). The dream alone cannot tell when C starts to learn M's mistakes;
the real check can.

Reproducible and resumable:
- cma draws its samples from its own seeded numpy RandomState (its `randn` option), which
  is pickled with it, so a resumed run draws what an uninterrupted one would have;
- after every generation RUN/es.pickle (cma's `pickle_dumps()` plus generation, best
  parameters, the selected mean and the config) is replaced atomically, and so is
  RUN/controller.npy. The agent is a CMA-ES mean, never the best candidate: that is the
  maximum of `popsize` noisy fitness estimates, so its score is biased upwards by the luck of
  its rollouts (it stays in es.pickle as `best_params`). An interrupt loses at most the
  generation in flight.

Logs: RUN/logs/evolve.csv (best/mean/worst fitness, sigma, seconds per generation) and
RUN/logs/evolve_real.csv (the CMA-ES mean scored in the real env every N generations).
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from worldmodels import atomic
from worldmodels.agent import WorldModel
from worldmodels.config import EvolveConfig, check_fields, from_dict
from worldmodels.device import resolve_device
from worldmodels.errors import UserError
from worldmodels.evolve import safe_pickle
from worldmodels.evolve.workers import make_evaluator
from worldmodels.logger import RunLogger
from worldmodels.progress import progress_bar
from worldmodels.run import RunPaths, load_run_config

REAL_EVAL_SEED = 2_000_000  # the periodic real-env check uses the same episodes every time
# A generation whose candidates all score alike (within this fraction of the best |fitness|,
# at least 1) acts alike: C's outputs saturate (tanh near +-1), so sigma's steps change no
# action and nothing can be learned (a Take Cover run whose C always went right stayed so for
# six rounds). sigma grows by FLAT_GROWTH for the next generation, up to FLAT_CAP x sigma0,
# until the candidates differ; older pycma did so for exactly equal fitness.
FLAT_SPREAD, FLAT_GROWTH, FLAT_CAP = 1e-4, 2.0, 16.0


@dataclass
class EvolveState:
    es_bytes: bytes  # es.pickle_dumps()
    generation: int  # generations completed
    best_params: np.ndarray | None
    best_fitness: float
    config: dict
    selected_params: np.ndarray | None = None  # the mean with the best real check so far
    selected_real: float = -np.inf  # its real check
    selected_generation: int = 0

    @property
    def agent_real_check(self) -> float | None:
        """The real check of the agent (RUN/controller.npy); None where none was played and
        the agent is the last mean."""
        return self.selected_real if self.selected_params is not None else None


def validate(config: EvolveConfig) -> None:
    # Named as config keys too: the value may come from RUN/config.json, not from a flag.
    check_fields(config, "config.json or a flag", "evolve")


def rollout_seeds(seed: int, generation: int, popsize: int, rollouts: int) -> np.ndarray:
    """(popsize, rollouts) seeds: row r of every candidate is the same seed, a function of
    (seed, generation, r) (common random numbers)."""
    row = [np.random.SeedSequence([seed, generation, r]).generate_state(1)[0]
           for r in range(rollouts)]
    return np.tile(np.array(row, np.int64), (popsize, 1))


def acts_alike(fitness: np.ndarray) -> bool:
    """Whether a generation's candidates all scored alike (FLAT_SPREAD)."""
    return float(np.ptp(fitness)) <= FLAT_SPREAD * max(1.0, float(np.abs(fitness).max()))


def real_check_due(config: EvolveConfig, generation: int) -> bool:
    """After `generation` (1-based): every real_eval_every generations, and after the last."""
    every = config.real_eval_every
    return bool(every) and (generation % every == 0 or generation == config.generations)


def save_state(path: Path, state: EvolveState) -> None:
    atomic.write_bytes(path, pickle.dumps(asdict(state)))


def _unpickle(path: Path, data: bytes) -> Any:
    """Restricted unpickling (safe_pickle): a run directory from elsewhere runs no code."""
    try:
        return safe_pickle.loads(data)
    except safe_pickle.UnsafePickleError as err:
        raise UserError(f"{path}: not loaded, it is not a plain CMA-ES state ({err})") from None
    except Exception as err:  # garbage raises anything: ValueError, EOFError, KeyError, ...
        raise UserError(f"{path}: not a readable CMA-ES state ({type(err).__name__})") from None


def load_state(path: Path) -> EvolveState:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None
    raw = _unpickle(path, data)
    names = {f.name for f in dataclasses.fields(EvolveState)}
    if not isinstance(raw, dict) or set(raw) != names:
        raise UserError(f"{path}: not a CMA-ES state of this package (expected keys "
                        f"{sorted(names)})")
    state = EvolveState(**raw)
    if (not isinstance(state.es_bytes, bytes) or not isinstance(state.generation, int)
            or not isinstance(state.config, dict)):
        raise UserError(f"{path}: not a CMA-ES state of this package (fields of the wrong type)")
    return state


def load_es(path: Path, state: EvolveState) -> Any:
    """cma's CMAEvolutionStrategy from the state's `pickle_dumps()` bytes."""
    es = _unpickle(path, state.es_bytes)
    if type(es).__name__ != "CMAEvolutionStrategy":
        raise UserError(f"{path}: es_bytes hold a {type(es).__name__}, not a CMA-ES state")
    return es


def save_params(path: Path, params: np.ndarray) -> None:
    with atomic.replacing(path) as tmp, tmp.open("wb") as f:
        np.save(f, np.asarray(params, np.float32))


def new_es(x0: np.ndarray, config: EvolveConfig, seed: int) -> Any:
    """A fresh CMA-ES around x0 with step size sigma0; its samples come from `seed`."""
    with warnings.catch_warnings():  # cma warns when matplotlib (for its plots) is absent
        warnings.simplefilter("ignore")
        import cma

    return cma.CMAEvolutionStrategy(np.asarray(x0, np.float64), config.sigma0, {
        "popsize": config.popsize, "seed": seed + 1, "verbose": -9,
        # cma's own RNG, pickled with it (numpy's global one would not be).
        "randn": np.random.RandomState(seed).randn,
    })


def restart(state: EvolveState, x0: np.ndarray) -> None:
    """Give the state a fresh CMA-ES around x0 (sigma0 again), keeping the generation count, so
    later generations still draw their own dream seeds. Its sampling seed derives from
    (seed, generation): a restart is reproducible and differs from the first start."""
    config = from_dict(EvolveConfig, state.config)
    seed = int(np.random.SeedSequence([config.seed, state.generation]).generate_state(1)[0]
               % 2**31)
    state.es_bytes = new_es(x0, config, seed).pickle_dumps()


def evolve(run: Path, config: EvolveConfig, resume: bool = False, address: str | None = None,
           progress: bool = True, evaluator=None, device: str = "cpu") -> EvolveState:
    """Run (or with `resume`, continue) CMA-ES up to `config.generations`; returns the final
    state. `evaluator` (optional) replaces the one made from `config.workers`."""
    validate(config)
    paths = RunPaths(Path(run))
    paths.writable()
    world = WorldModel.from_run(paths.root)  # one line if V, M or latents are missing
    n_params = world.param_count
    if paths.es_state.exists() and not resume:
        raise UserError(f"{paths.es_state} exists; pass --resume to continue it or choose "
                        "another --run")
    if resume and paths.es_state.exists():
        state = load_state(paths.es_state)
        saved = from_dict(EvolveConfig, state.config, str(paths.es_state))
        if config.popsize != saved.popsize:
            raise UserError(f"{paths.es_state}: this run evolves a population of "
                            f"{saved.popsize}; it cannot resume with --popsize {config.popsize}")
        config.seed, config.sigma0 = saved.seed, saved.sigma0  # they belong to the CMA-ES state
        state.config = asdict(config)
        es = load_es(paths.es_state, state)
    else:
        es = new_es(np.zeros(n_params), config, config.seed)
        state = EvolveState(es.pickle_dumps(), 0, None, -np.inf, asdict(config))
    if es.N != n_params:
        sees = "z, h and c" if world.sees_cell else "z and h"
        raise UserError(f"{paths.es_state}: CMA-ES over {es.N} parameters but the run's C "
                        f"(reading {sees}) needs {n_params}")
    if state.generation >= config.generations:
        if progress:
            tqdm.write(f"evolve: {paths.es_state} already has {state.generation} generations")
        return state

    own_evaluator = evaluator is None
    if own_evaluator:
        evaluator = make_evaluator(world, config.workers, address, device,
                                   config.envs_per_worker)
    logger = RunLogger(paths.logs, "evolve", keep_through=state.generation)
    real_logger = RunLogger(paths.logs, "evolve_real", keep_through=state.generation)
    bar = progress_bar(total=config.generations, initial=state.generation, unit="gen",
                       desc=f"evolve ({config.where})", disable=not progress)
    try:
        for gen in range(state.generation, config.generations):
            t0 = time.perf_counter()
            solutions = es.ask()
            candidates = np.asarray(solutions, np.float32)
            seeds = rollout_seeds(config.seed, gen, len(candidates), config.rollouts)
            # Each candidate once, with its row of seeds: not one copy per rollout.
            fitness = evaluator.run(config.where, candidates, seeds, config.tau,
                                    config.max_steps, done=config.done).returns.mean(1)
            es.tell(solutions, (-fitness).tolist())
            if acts_alike(fitness):
                es.sigma = min(es.sigma * FLAT_GROWTH, FLAT_CAP * config.sigma0)
            best = int(fitness.argmax())
            if fitness[best] > state.best_fitness:
                state.best_fitness, state.best_params = float(fitness[best]), candidates[best]
            mean = np.asarray(es.mean, np.float32)
            real_mean = None
            if real_check_due(config, gen + 1):
                real_seeds = REAL_EVAL_SEED + np.arange(config.real_eval_episodes)
                real_mean = float(evaluator.run(
                    "real", mean[None], real_seeds[None], config.tau,
                    config.real_eval_max_steps).returns.mean())
                if real_mean > state.selected_real:
                    state.selected_params, state.selected_real = mean, real_mean
                    state.selected_generation = gen + 1
            # Rows first, then the state: a kill in between leaves rows past the saved
            # generation, which the resumed run's loggers drop (keep_through), then redoes.
            seconds = time.perf_counter() - t0
            logger.log(gen + 1, best=fitness.max(), mean=fitness.mean(), worst=fitness.min(),
                       sigma=es.sigma, best_ever=state.best_fitness, seconds=seconds)
            if real_mean is not None:
                real_logger.log(gen + 1, real_mean=real_mean, selected=state.selected_real)
            state.generation, state.es_bytes = gen + 1, es.pickle_dumps()
            save_params(paths.controller,
                        mean if state.selected_params is None else state.selected_params)
            save_state(paths.es_state, state)
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


def evolved_config(paths: RunPaths) -> EvolveConfig:
    """The settings of the run's evolution: those RUN/es.pickle was started with (command-line
    overrides such as --tau and --done included) once it exists, else the run config's."""
    if paths.es_state.exists():
        return from_dict(EvolveConfig, load_state(paths.es_state).config, str(paths.es_state))
    return load_run_config(paths).evolve


def cli_evolve(args: argparse.Namespace) -> int:
    paths = RunPaths(args.run)
    paths.require(paths.vae, "train-vae")
    paths.require(paths.mdnrnn, "train-mdnrnn")
    # Resuming keeps the settings it was started with.
    config = evolved_config(paths) if args.resume else load_run_config(paths).evolve
    for flag, name in (("where", "where"), ("generations", "generations"),
                       ("popsize", "popsize"), ("rollouts", "rollouts"), ("tau", "tau"),
                       ("done", "done"),
                       ("workers", "workers"), ("max_steps", "max_steps")):
        if getattr(args, flag) is not None:
            setattr(config, name, getattr(args, flag))
    if args.envs_per_worker is not None:
        config.envs_per_worker = args.envs_per_worker
    state = evolve(args.run, config, resume=args.resume, address=args.address,
                   device=str(resolve_device(args.device)))
    real = state.agent_real_check
    chosen = (f"the mean of generation {state.selected_generation} (real check {real:.1f})"
              if real is not None else "the last CMA-ES mean")
    print(f"evolve: {state.generation} generations, best fitness {state.best_fitness:.1f}; "
          f"C ({chosen}) -> {paths.controller}")
    return 0
