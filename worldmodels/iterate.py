"""Iterative training (the paper's "Iterative Training Procedure"): the agent improves its own
world model. M first learns from a random-walk policy that is rarely on the road at speed,
which is exactly where an evolved C drives; so the agent plays, M learns what it saw, and C
evolves again in the better dream.

One iteration i (1-based) starts from the best agent so far: the C of the snapshot with the
best real check (below) is put back in RUN, so an iteration that scored worse than an
earlier one is not built on; M stays the latest, trained on all the data. Without real
checks (evolve.real_eval_every 0: C learns only in the dream, as for Take Cover) the best
agent is the latest one, or with `ratchet` the best by the noiseless episodes (below) so far:
the latest plays the round's noiseless episodes first, and the rest go around the winner.
1. collect: `episodes` real episodes with the run's agent (V + M + C), the first
   `noisy_fraction` of them with Gaussian noise of std `noise` on C's parameters (drawn per
   episode from its seed), as episode files next to the first rollouts (V's data directory),
   seeds AGENT_SEED + 10,000 i + j; each file's `policy` names the run (its `run_id`),
   iteration and noise, so an episode another run left under one of these seeds (a shared or
   borrowed data directory) is refused rather than taken as its own;
2. encode only those new episodes with the same V;
3. continue M from its checkpoint on all the data for `mdnrnn_epochs` more epochs than the
   last snapshot's M had (so a run continued with other settings still adds them once);
4. evolve `generations` more generations than the last snapshot recorded, in the new dream:
   with `restart`, from a fresh CMA-ES around the agent (the mean the real checks chose, not
   the latest mean, which may have drifted into M's mistakes since), else from the CMA-ES
   state as it is. The real checks choose this iteration's agent (C means are only
   comparable under one M); without them it is the last mean;
5. snapshot the iteration's agent (M and C, with its real check, or none) in
   RUN/iterations/NN/ and log a row to RUN/logs/iterate.csv: data, the real returns of the
   round's noiseless and exploring episodes, M's held-out NLL, dream fitness, real check (nan
   without one).
When every iteration is done, one snapshot (iteration 0 is the agent iterate started from)
is the run's agent, its M and C put back in RUN (`choose`): with `check`, the one with the
best real check, or the last where none was checked; with `episodes`, the one whose
noiseless round episodes (those of the round after it) had the best mean return, the last
first playing the next round's noiseless episodes (only without real checks: with them a
round plays the best-checked C); with `finalists`, the best few of those then play more
noiseless episodes, the same seeds for each (kept in their snapshots), and the best wins.
C still learns only in the dream: these real episodes, on the agent and selection seeds
(never evaluation seeds), choose among the dream's agents, as a held-out set chooses an
epoch. Rounds continued later go on from the last snapshot.

Resumable: every step saves as it goes (episodes, epochs, generations), and RUN/iterate.json
records the finished iterations, so a kill loses at most the episode, epoch or generation in
flight, and a finished iteration is never redone.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from worldmodels.agent import Agent, WorldModel, load_controller, run_episodes
from worldmodels.atomic import write_bytes
from worldmodels.checkpoint import load_payload
from worldmodels.config import (
    SEED_BLOCK,
    EvaluateConfig,
    EvolveConfig,
    IterateConfig,
    check_fields,
    from_dict,
    load_json,
    save_json,
)
from worldmodels.data.rollouts import encode_episode, episode_path, list_episodes
from worldmodels.device import resolve_device
from worldmodels.errors import UserError
from worldmodels.evaluate import evaluate, held_summary
from worldmodels.evolve.cmaes import (
    REAL_EVAL_SEED,
    evolve,
    evolved_config,
    load_state,
    restart,
    save_state,
)
from worldmodels.logger import RunLogger, read_csv
from worldmodels.npfiles import read_npz
from worldmodels.progress import progress_bar
from worldmodels.ray_session import ActorPool
from worldmodels.run import RunPaths, load_run_config, snapshot_generation
from worldmodels.train.encode import default_data, encode
from worldmodels.train.mdnrnn import train_mdnrnn

AGENT_SEED = 5_000_000  # agent episodes: away from the data (0+), evaluation and selection seeds
FILES = ("mdnrnn.pt", "mdnrnn.json", "controller.npy")  # one snapshot of the agent


@dataclass
class IterateState:
    completed: int = 0  # iterations finished
    evolving: bool = False  # the iteration in progress has started its evolution
    chosen: int = -1  # the snapshot made the run's agent when the rounds last ended (-1: none)


def episode_plan(config: IterateConfig, iteration: int) -> list[tuple[int, float]]:
    """(seed, noise) of each episode of an iteration."""
    noisy = round(config.episodes * config.noisy_fraction)
    return [(AGENT_SEED + SEED_BLOCK * iteration + j, config.noise if j < noisy else 0.0)
            for j in range(config.episodes)]


def agent_label(run_id: str, iteration: int, noise: float | None = None) -> str:
    """An agent episode's `policy`: which run, iteration and noise made it (without `noise`:
    the part that says whose it is)."""
    run = f"run={run_id}:" if run_id else ""  # runs made before run ids had none
    return f"agent:{run}iteration={iteration}:" + ("" if noise is None else f"noise={noise:g}")


def check_own(path: Path, run_id: str, iteration: int, noise: float | None = None) -> None:
    """Refuse an episode file under one of the iteration's seeds that this run did not make
    (given `noise`: with that noise)."""
    label = str(read_npz(path, ["policy"])["policy"])
    own = agent_label(run_id, iteration, noise)
    if not (label.startswith(own) if noise is None else label == own):
        raise UserError(f"{path}: this episode was made by {label!r}, not by this run's "
                        f"iteration {iteration} ({own}...); give the run a data directory of "
                        f"its own with --data")


def round_returns(files: list[Path], plan: list[tuple[int, float]]) -> tuple[float, float]:
    """Mean real return of a round's noiseless episodes (the agent the round began with, as
    it plays) and of its exploring ones; NaN where a round has none of a kind."""
    returns = np.array([read_npz(f, ["reward"])["reward"].sum() for f in files])
    noiseless = np.array([noise == 0 for _, noise in plan])
    return tuple(float(returns[mask].mean()) if mask.any() else float("nan")
                 for mask in (noiseless, ~noiseless))


def exploring_params(params: np.ndarray, plan: list[tuple[int, float]]) -> np.ndarray:
    """(len(plan), P): C's parameters plus each episode's own Gaussian noise, drawn from its
    seed (so an episode is the same whichever worker plays it, and after a resume)."""
    return np.stack([params + noise * np.random.default_rng(seed).standard_normal(
        params.shape).astype(np.float32) for seed, noise in plan])


class AgentPlayer:
    """Holds V, M and `envs` envs of the game; plays episodes of the agent in batches and
    returns them compressed (workers compress; the driver only writes)."""

    def __init__(self, world: WorldModel, max_steps: int, envs: int, device: str = "cpu",
                 threads: int = 0):
        if threads:
            torch.set_num_threads(threads)
        self.world, self.max_steps = world, max_steps
        self.agent = Agent.from_world(world, device)
        self.envs = [world.game.make_env(max_steps=max_steps) for _ in range(envs)]

    def play(self, params: np.ndarray, seeds: list[int], labels: list[str]):
        controllers = self.world.controllers(params, self.agent.device)
        results = run_episodes(self.envs[:len(seeds)], seeds, self.max_steps, self.agent,
                               controllers, record=True)
        out = []
        for result, label in zip(results, labels, strict=True):
            result.episode.policy = label
            out.append((result.seed, encode_episode(result.episode), result.steps))
        return out


def collect_agent(run: Path, data: Path, config: IterateConfig, iteration: int,
                  address: str | None, progress: bool, device: str = "cpu",
                  plan: list[tuple[int, float]] | None = None,
                  controller: int | None = None) -> list[Path]:
    """Play the missing episodes of the iteration's plan (or of `plan`, a part of it) into
    `data` with RUN's C (or snapshot `controller`'s) and the M the iteration began with (the
    last snapshot's: RUN's may be further on, killed in the iteration's epochs); returns all
    their episode files."""
    run_config = load_run_config(RunPaths(run))
    plan = episode_plan(config, iteration) if plan is None else plan
    files = [episode_path(data, seed) for seed, _ in plan]
    todo = []
    for (seed, noise), path in zip(plan, files, strict=True):
        if path.exists():
            check_own(path, run_config.run_id, iteration)
        else:
            todo.append((seed, noise))
    if not todo:
        return files
    world = WorldModel.from_run(run, iteration=iteration - 1)
    params = exploring_params(world.load_controller(RunPaths(run), controller), todo)
    labels = [agent_label(run_config.run_id, iteration, noise) for _, noise in todo]
    envs = config.envs_per_worker
    tasks = [(params[i:i + envs], [s for s, _ in todo[i:i + envs]], labels[i:i + envs])
             for i in range(0, len(todo), envs)]
    bar = progress_bar(total=len(todo), desc=f"iterate {iteration}: collect", unit="ep",
                       disable=not progress)
    pool = None
    try:
        if config.workers == 0:
            player = AgentPlayer(world, config.max_steps, envs, device)
            finished = ((i, player.play(*task)) for i, task in enumerate(tasks))
        else:
            pool = ActorPool(AgentPlayer, (world, config.max_steps, envs, device, 1),
                             min(config.workers, len(tasks)), address)
            finished = pool.run("play", tasks)
        for _, episodes in finished:
            for seed, data_bytes, _ in episodes:
                write_bytes(episode_path(data, seed), data_bytes)
                bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
    return files


def _epoch(checkpoint: Path) -> int:
    return int(load_payload(checkpoint).get("epoch", 0))


def _steps(path: Path) -> int:
    return len(read_npz(path, ["reward"])["reward"])


def snapshot(paths: RunPaths, iteration: int, real: float | None) -> None:
    """Copy the agent's files atomically; agent.json, written last, marks a whole snapshot
    and records CMA-ES's generations so far."""
    out = paths.snapshot(iteration)
    for name in FILES:
        write_bytes(out / name, (paths.root / name).read_bytes())
    save_json({"iteration": iteration, "real_check": real,
               "generation": load_state(paths.es_state).generation}, out / "agent.json")


def snapshot_progress(paths: RunPaths, iteration: int, evolve: EvolveConfig,
                      config: IterateConfig) -> tuple[int, int]:
    """M's epochs and CMA-ES's generations at snapshot `iteration`: where the next iteration
    begins."""
    return (_epoch(paths.snapshot(iteration) / "mdnrnn.pt"),
            snapshot_generation(paths, iteration, evolve, config))


def best_snapshot(paths: RunPaths) -> tuple[int, float | None]:
    """(iteration, real check) of the snapshot with the best real check (the later of a tie);
    where no snapshot was checked (C learns only in the dream), the latest."""
    scores = [(load_json(d / "agent.json")["real_check"], int(d.name))
              for d in sorted((paths.root / "iterations").iterdir()) if (d / "agent.json").exists()]
    checked = [s for s in scores if s[0] is not None]
    real, iteration = max(checked) if checked else scores[-1]
    return iteration, real


def noiseless_plan(config: IterateConfig, iteration: int) -> list[tuple[int, float]]:
    """The iteration's episodes of the agent it began with as it is (no noise)."""
    return [(seed, noise) for seed, noise in episode_plan(config, iteration) if noise == 0]


def episode_scores(data: Path, config: IterateConfig, run_id: str,
                   last: int) -> dict[int, float]:
    """Mean real return of each snapshot's noiseless episodes (those of the round after it)
    that `data` holds in full; each must be this run's, played without noise."""
    scores = {}
    for it in range(last + 1):
        plan = noiseless_plan(config, it + 1)
        files = [episode_path(data, seed) for seed, _ in plan]
        if files and all(f.exists() for f in files):
            for f in files:
                check_own(f, run_id, it + 1, noise=0.0)
            scores[it] = round_returns(files, plan)[0]
    return scores


def check_choice(config: IterateConfig, evolve_real_eval_every: int,
                 checked: bool = False) -> None:
    """Refuse (before any round) the ratchet or finalists without `choose` episodes, and
    `choose` episodes without noiseless episodes to choose by,
    or with real checks (now, or `checked` in earlier rounds): a round then plays the
    best-checked C, not the last snapshot's, so its episodes would not score the snapshot
    before it."""
    if config.ratchet and config.choose != "episodes":
        raise UserError("iterate.ratchet needs iterate.choose episodes: the rounds' noiseless "
                        "episodes choose where each round starts")
    if config.finalists > 1 and config.choose != "episodes":
        raise UserError(f"iterate.finalists {config.finalists} needs iterate.choose episodes: "
                        "the finalists are the snapshots their round episodes rank best")
    if config.choose != "episodes":
        return
    if not noiseless_plan(config, 1):
        raise UserError(f"iterate.choose episodes needs noiseless episodes: iterate."
                        f"noisy_fraction {config.noisy_fraction:g} leaves none of "
                        f"{config.episodes}")
    if config.real_eval_every or evolve_real_eval_every or checked:
        raise UserError("iterate.choose episodes is for C evolved only in the dream; with real "
                        "checks (evolve.real_eval_every or iterate.real_eval_every above 0) "
                        "choose check")


def finalist_return(paths: RunPaths, iteration: int, config: IterateConfig,
                    address: str | None, progress: bool, device: str) -> float:
    """Mean real return of snapshot `iteration`'s agent over the finalists' noiseless episodes
    (the same selection seeds for every finalist, so they are compared pair by pair), played
    once and kept in the snapshot as finalist.json."""
    e_config = EvaluateConfig(episodes=config.finalist_episodes, seed=REAL_EVAL_SEED,
                              max_steps=config.max_steps, workers=config.workers,
                              envs_per_worker=config.envs_per_worker)
    out = paths.snapshot(iteration) / "finalist.json"
    try:
        held = held_summary(paths, out, e_config, iteration=iteration)
    except UserError:  # not a summary: a cache, so played again
        held = None
    if held is None:
        held = evaluate(paths.root, e_config, address=address, progress=progress,
                        device=device, out=out, iteration=iteration)
    return float(held["mean"])


def choose_by_episodes(paths: RunPaths, data: Path, config: IterateConfig, last: int,
                       address: str | None, progress: bool, device: str) -> tuple[int, str]:
    """(iteration, why) of the snapshot whose noiseless episodes had the best mean return
    (the later of a tie), or with `finalists`, of the best of those over the finalists'
    episodes. The last snapshot first plays its own: the next round's noiseless episodes, so
    a run continued later collects only the rest of that round."""
    final = noiseless_plan(config, last + 1)
    collect_agent(paths.root, data, config, last + 1, address, progress, device, final,
                  controller=last)
    scores = episode_scores(data, config, load_run_config(paths).run_id, last)
    unscored = [it for it in range(last + 1) if it not in scores]
    if unscored and progress:  # their episodes are not all in `data` (another --data?)
        print(f"iterate: snapshots {unscored} have no noiseless episodes in {data}; not chosen")
    ranked = sorted(scores, key=lambda it: (scores[it], it))  # the best (the later of a tie) last
    # A round's 100 episodes cannot split agents a few percent apart; the best few replay on
    # more episodes, the same for each.
    finalists = sorted(ranked[-config.finalists:]) if config.finalists > 1 else []
    if len(finalists) < 2:
        return ranked[-1], f"its noiseless real episodes: {scores[ranked[-1]]:.1f}"
    replays = {it: finalist_return(paths, it, config, address, progress, device)
               for it in finalists}
    best = max(replays, key=lambda it: (replays[it], it))
    return best, (f"the best of finalists {finalists} over {config.finalist_episodes} more "
                  f"noiseless episodes: {replays[best]:.1f}; its round's {scores[best]:.1f}")


def put_back(paths: RunPaths, iteration: int, names: tuple[str, ...]) -> None:
    """Make RUN's `names` those of snapshot `iteration` (files already equal are not
    rewritten, so a resumed run touches nothing it does not change)."""
    for name in names:
        chosen = (paths.snapshot(iteration) / name).read_bytes()
        if chosen != (paths.root / name).read_bytes():
            write_bytes(paths.root / name, chosen)


def iterate(run: Path, config: IterateConfig, data: Path | None = None,
            address: str | None = None, progress: bool = True,
            device: str = "cpu", choose_again: bool = False) -> list[dict]:
    """Run (or continue) `config.iterations` iterations, writing the agent's episodes into
    `data` (default: the directory V was trained on); returns the iterate.csv rows. A call
    that runs no new iteration keeps the agent chosen when they ended, unless
    `choose_again` (iterate --choose, --finalists or --finalist-episodes)."""
    check_fields(config, "config.json or a flag", "iterate")
    paths = RunPaths(Path(run))
    paths.writable()
    for path, made_by in ((paths.vae, "train-vae"), (paths.mdnrnn, "train-mdnrnn"),
                          (paths.es_state, "evolve"), (paths.controller, "evolve")):
        paths.require(path, made_by)
    run_config = load_run_config(paths)
    data = Path(data) if data is not None else default_data(paths.root)
    state_path = paths.root / "iterate.json"
    state = from_dict(IterateState, load_json(state_path)) if state_path.exists() \
        else IterateState()
    if not (paths.snapshot(0) / "agent.json").exists():
        snapshot(paths, 0, load_state(paths.es_state).agent_real_check)
    check_choice(config, evolved_config(paths).real_eval_every,
                 checked=best_snapshot(paths)[1] is not None)
    completed_before = state.completed
    # A kill between an iteration's row and iterate.json redoes nothing but drops the row.
    logger = RunLogger(paths.logs, "iterate", keep_through=state.completed)
    try:
        for it in range(state.completed + 1, config.iterations + 1):
            t0 = time.perf_counter()
            if not state.evolving:  # until the iteration's evolution starts, RUN's C is the best
                put_back(paths, best_snapshot(paths)[0], ("controller.npy",))
                # and M the latest, or further on in this round's epochs (not the older M of
                # an agent chosen when the rounds last ended).
                if _epoch(paths.mdnrnn) < _epoch(paths.snapshot(it - 1) / "mdnrnn.pt"):
                    put_back(paths, it - 1, ("mdnrnn.pt", "mdnrnn.json"))
                if config.ratchet:  # the last agent plays the round's noiseless episodes first
                    base, why = choose_by_episodes(paths, data, config, it - 1, address,
                                                   progress, device)
                    put_back(paths, base, ("controller.npy",))
                    if progress:
                        print(f"iterate {it}: starts from the agent of iteration {base} ({why})")
            files = collect_agent(paths.root, data, config, it, address, progress, device)
            unencoded = [f for f in files if not (paths.latents / f.name).exists()]
            if unencoded:
                encode(paths.root, data, progress=progress, device=device, files=unencoded)
            start_epochs, start_generations = snapshot_progress(paths, it - 1, run_config.evolve,
                                                                 config)
            m_config = dataclasses.replace(run_config.mdnrnn,
                                           epochs=start_epochs + config.mdnrnn_epochs)
            train_mdnrnn(paths.root, m_config, resume=True, progress=progress, device=device)
            if not state.evolving:  # M changed: earlier real checks were of other agents
                es_state = load_state(paths.es_state)
                if config.restart:
                    restart(es_state, load_controller(paths))
                es_state.selected_params, es_state.selected_real = None, -np.inf
                save_state(paths.es_state, es_state)
                state.evolving = True
                save_json(asdict(state), state_path)
            # The dream C evolved in (evolve --tau/--done included), longer by this round.
            e_config = dataclasses.replace(
                evolved_config(paths), workers=config.workers,
                generations=start_generations + config.generations)
            if config.real_eval_every:
                e_config.real_eval_every = config.real_eval_every
            es_state = evolve(paths.root, e_config, resume=True, address=address,
                              progress=progress, device=device)
            real = es_state.agent_real_check
            snapshot(paths, it, real)
            m_row = read_csv(paths.logs / "mdnrnn.csv")[-1]
            e_row = read_csv(paths.logs / "evolve.csv")[-1]
            episodes = list_episodes(data)
            agent_return, exploring_return = round_returns(files, episode_plan(config, it))
            logger.log(it, episodes=len(episodes), frames=sum(_steps(f) for f in episodes),
                       agent_return=agent_return, exploring_return=exploring_return,
                       valid_z_nll=m_row["valid_z_nll"], dream_fitness=e_row["mean"],
                       real_check=np.nan if real is None else real,
                       minutes=(time.perf_counter() - t0) / 60)
            state = IterateState(completed=it)
            save_json(asdict(state), state_path)
    finally:
        logger.close()
    if state.completed == completed_before and state.chosen != -1 and not choose_again:
        best, why = state.chosen, "chosen when the rounds ended"  # say, by iterate --choose
    elif config.choose == "episodes":
        best, why = choose_by_episodes(paths, data, config, state.completed, address,
                                       progress, device)
    else:
        best, real = best_snapshot(paths)
        why = "no real checks: the last" if real is None else f"real check {real:.1f}"
    if state.chosen != best:  # recorded first: a kill mid-put-back is mended by a rerun
        state.chosen = best
        save_json(asdict(state), state_path)
    put_back(paths, best, FILES)  # the run's agent
    if progress:
        print(f"iterate: the agent of iteration {best} ({why}) is the run's agent")
    return read_csv(paths.logs / "iterate.csv") if (paths.logs / "iterate.csv").exists() else []


def cli_iterate(args: argparse.Namespace) -> int:
    paths = RunPaths(args.run)
    paths.require(paths.es_state, "evolve")
    config = load_run_config(paths).iterate
    for name in ("iterations", "episodes", "noise", "choose", "finalists", "finalist_episodes",
                 "ratchet", "restart", "real_eval_every", "workers"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    choose_again = any(getattr(args, name) is not None
                       for name in ("choose", "finalists", "finalist_episodes"))
    rows = iterate(args.run, config, args.data, address=args.address,
                   device=str(resolve_device(args.device)), choose_again=choose_again)
    for row in rows:
        real = "none" if np.isnan(row["real_check"]) else f"{row['real_check']:.1f}"
        print(f"iteration {int(row['step'])}: {int(row['episodes'])} episodes, the agent it "
              f"began with {row.get('agent_return', np.nan):.1f} (exploring "
              f"{row.get('exploring_return', np.nan):.1f}), M held-out NLL "
              f"{row['valid_z_nll']:.2f}, dream fitness {row['dream_fitness']:.1f}, real check "
              f"{real}")
    return 0
