"""Does the dream rank controllers as the game does? Evolution only works as far as it does:
CMA-ES keeps the candidates the dream scores highest, so near the agent, where an evolution
searches, the dream's order of candidates must follow the game's.

Candidates: the run's agent and `candidates - 1` Gaussian perturbations of it with std `sigma`
(the spread of a CMA-ES restarted around it). Each plays `rollouts` dreams (every candidate the
same dreams, as in evolution, with the run's evolution settings) and `episodes` real episodes
(every candidate the same seeds, RANK_SEED + i, away from the evaluation and selection seeds).
The report: both scores per candidate; the agent's lead over its perturbations in the game,
paired by episode (an agent the dream made truly good is a local optimum of the game too);
the Spearman rank correlation between the two orders; and the game's own split-half
correlation (candidates ranked on half the real episodes against the other half), which
bounds what any dream could reach with this many episodes.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from worldmodels.agent import WorldModel
from worldmodels.atomic import write_bytes
from worldmodels.device import resolve_device
from worldmodels.errors import UserError, require_finite
from worldmodels.evolve.cmaes import evolved_config
from worldmodels.evolve.workers import make_evaluator
from worldmodels.progress import progress_bar
from worldmodels.run import RunPaths, load_run_config

RANK_SEED = 4_000_000  # real episodes: not evaluation (1M+), selection (2M+) or comparison (3M+)
DREAM_SEED = 8_000_000  # dreams


@dataclass
class DreamRank:
    dream: list[float]  # per candidate: mean dream return (candidate 0 is the agent)
    real: list[float]  # per candidate: mean real return
    real_sem: list[float]  # its standard error
    real_returns: list[list[float]]  # per candidate, per episode
    agent_minus_others: float  # the agent's return minus the perturbations' mean, per episode
    agent_minus_others_sem: float  # its standard error over the episodes
    spearman: float  # dream order against real order
    real_split_half: float  # real order on even episodes against odd ones
    sigma: float
    rollouts: int
    episodes: int
    tau: float
    max_steps: int  # of a dream
    real_max_steps: int  # of a real episode


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their mean rank."""
    values = np.asarray(values, np.float64)
    order = values.argsort(kind="stable")
    out = np.empty(len(values))
    out[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):
        tied = values == value
        out[tied] = out[tied].mean()
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation; 0 when either side has no spread."""
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def perturbations(agent: np.ndarray, candidates: int, sigma: float, seed: int) -> np.ndarray:
    """(candidates, P): the agent, then candidates - 1 perturbations N(agent, sigma^2 I)."""
    noise = np.random.default_rng(seed).standard_normal((candidates - 1, len(agent)))
    return np.concatenate([agent[None], agent + sigma * noise]).astype(np.float32)


def dream_rank(run: Path, candidates: int = 16, sigma: float = 0.1, rollouts: int = 64,
               episodes: int = 16, workers: int = 2, address: str | None = None,
               device: str = "cpu", seed: int = 0, progress: bool = True) -> DreamRank:
    if candidates < 3 or rollouts < 1 or episodes < 2:
        raise UserError(f"dream-rank needs --candidates >= 3, --rollouts >= 1 and --episodes "
                        f">= 2, got {candidates}, {rollouts} and {episodes}")
    require_finite("--sigma", sigma, above=0)
    paths = RunPaths(Path(run))
    rules = evolved_config(paths)  # the dream (tau, done, length) C evolved in
    real_steps = load_run_config(paths).evaluate.max_steps  # the game as the agent is scored
    world = WorldModel.from_run(paths.root)
    params = perturbations(world.load_controller(paths), candidates, sigma, seed)
    dream_seeds = np.tile(DREAM_SEED + np.arange(rollouts), (candidates, 1))
    real_seeds = np.tile(RANK_SEED + np.arange(episodes), (candidates, 1))
    evaluator = make_evaluator(world, workers, address, device, rules.envs_per_worker)
    try:
        with progress_bar(total=dream_seeds.size, desc="dream-rank: dreams", unit="dream",
                          disable=not progress) as bar:
            dream = evaluator.run("dream", params, dream_seeds, rules.tau, rules.max_steps,
                                  bar=bar, done=rules.done).returns.mean(1)
        with progress_bar(total=real_seeds.size, desc="dream-rank: real episodes", unit="ep",
                          disable=not progress) as bar:
            real = evaluator.run("real", params, real_seeds, rules.tau, real_steps,
                                 bar=bar).returns
    finally:
        evaluator.close()
    real_mean = real.mean(1)
    # Paired by episode (all candidates play the same seeds): is the agent a local optimum?
    lead = real[0] - real[1:].mean(0)
    return DreamRank(
        dream=dream.tolist(), real=real_mean.tolist(),
        real_sem=(real.std(1, ddof=1) / np.sqrt(episodes)).tolist(), real_returns=real.tolist(),
        agent_minus_others=float(lead.mean()),
        agent_minus_others_sem=float(lead.std(ddof=1) / np.sqrt(episodes)),
        spearman=spearman(dream, real_mean),
        real_split_half=spearman(real[:, 0::2].mean(1), real[:, 1::2].mean(1)),
        sigma=sigma, rollouts=rollouts, episodes=episodes, tau=rules.tau,
        max_steps=rules.max_steps, real_max_steps=real_steps)


def cli_dream_rank(args: argparse.Namespace) -> int:
    result = dream_rank(args.run, args.candidates, args.sigma, args.rollouts, args.episodes,
                        args.workers, args.address, str(resolve_device(args.device)), args.seed)
    print(f"dream-rank: the agent and {len(result.dream) - 1} perturbations (sigma "
          f"{result.sigma:g}); {result.rollouts} dreams of {result.max_steps} steps at tau "
          f"{result.tau:g}, {result.episodes} real episodes of {result.real_max_steps} steps each")
    print(f"{'candidate':<10} {'dream':>8} {'real':>8} {'+- sem':>8}")
    for i, (d, r, s) in enumerate(zip(result.dream, result.real, result.real_sem, strict=True)):
        print(f"{'agent' if i == 0 else i:<10} {d:8.1f} {r:8.1f} {s:8.1f}")
    print(f"the agent minus the perturbations in the game, paired by episode: "
          f"{result.agent_minus_others:+.1f} +- {result.agent_minus_others_sem:.1f}")
    print(f"Spearman, dream against real: {result.spearman:+.2f}; real against itself "
          f"(even against odd episodes): {result.real_split_half:+.2f}")
    out = args.out or RunPaths(args.run).root / "dream_rank.json"
    write_bytes(out, json.dumps(asdict(result), indent=1).encode())
    print(f"dream-rank -> {out}")
    return 0
