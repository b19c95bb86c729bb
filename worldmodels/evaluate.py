"""Score a run's agent (V + M + C) in the real game (the run's `env`), or the random-policy
baseline.

Each step: V encodes the frame to (mu, logvar), z is sampled from them, C acts on [z, h],
the env steps, and M updates h with (z, action) (`worldmodels.agent`); each worker steps
`envs_per_worker` envs at once. Episode i uses seed `seed + i` (for the track and for z's
noise), so a result is reproducible. Writes RUN/evaluation.json (RUN/evaluation_random.json
for `--policy random`), with each episode's return and step count; it never replaces them
with a summary of other episodes (`--out` writes one elsewhere). `--iteration N` scores the
agent (M and C) iterate kept in RUN/iterations/NN instead, into that snapshot's
evaluation.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from worldmodels import atomic
from worldmodels.agent import Agent, WorldModel, load_controller, run_episodes
from worldmodels.config import EvaluateConfig, check_fields, load_json, save_json
from worldmodels.device import resolve_device
from worldmodels.errors import UserError
from worldmodels.evolve.workers import make_evaluator
from worldmodels.progress import progress_bar
from worldmodels.run import RunPaths, load_run_config
from worldmodels.video import SCALE, side_by_side, write_video

POLICIES = ("controller", "random")


def summarize(returns: np.ndarray, steps: np.ndarray, seeds: list[int], policy: str) -> dict:
    return {"policy": policy, "episodes": len(returns), "mean": float(returns.mean()),
            "std": float(returns.std()), "min": float(returns.min()),
            "max": float(returns.max()), "returns": [float(r) for r in returns],
            "steps": [int(n) for n in steps], "seeds": seeds}


def episode_seeds(config: EvaluateConfig) -> list[int]:
    return [config.seed + i for i in range(config.episodes)]


def holds_episodes(summary: dict | None, seeds: list[int], max_steps: int,
                   agent: str | None = None) -> bool:
    """Whether a saved summary (None: none saved) scored these episodes (older summaries
    lack max_steps) and, given `agent` (`agent_digest`), of that agent (older summaries,
    which do not say, are not taken for it)."""
    return (isinstance(summary, dict) and summary.get("seeds") == seeds
            and summary.get("max_steps", max_steps) == max_steps
            and (agent is None or summary.get("agent") == agent))


def held_summary(paths: RunPaths, out: Path, config: EvaluateConfig,
                 policy: str = "controller", iteration: int | None = None) -> dict | None:
    """The summary at `out` if it already scores `config`'s episodes of `policy` (RUN's agent,
    or snapshot `iteration`'s), else None."""
    held = load_json(out) if out.exists() else None
    agent = None
    if policy == "controller":
        world = WorldModel.from_run(paths.root, with_vae=False, iteration=iteration)
        agent = agent_digest(world.load_controller(paths, iteration), world.mdnrnn_state,
                             world.real_z)
    return held if holds_episodes(held, episode_seeds(config), config.max_steps, agent) else None


def summary_path(paths: RunPaths, policy: str, iteration: int | None = None) -> Path:
    """Where a run keeps its evaluation of `policy` (the pipeline's and `evaluate`'s default),
    or of snapshot `iteration`'s agent."""
    if iteration is not None:
        return paths.snapshot(iteration) / paths.evaluation.name
    return paths.evaluation if policy == "controller" else paths.root / "evaluation_random.json"


def agent_digest(params: np.ndarray | None, mdnrnn_state: dict, real_z: str = "sample") -> str:
    """Names the agent a summary scored: C, the weights of the M whose state C reads, and how
    it reads z from a frame (a sampling agent's digest is as before that was a choice)
    ("random": random play)."""
    if params is None:
        return "random"
    digest = hashlib.sha256(np.ascontiguousarray(params, np.float32).tobytes())
    for name in sorted(mdnrnn_state):
        digest.update(name.encode() + mdnrnn_state[name].cpu().numpy().tobytes())
    if real_z != "sample":
        digest.update(f"real_z={real_z}".encode())
    return digest.hexdigest()[:16]


def episodes_key(agent: str, max_steps: int) -> str:
    """What a finished episode's return depends on besides its seed: the agent and the step
    limit."""
    return f"{agent}/max_steps={max_steps}"


def load_finished(path: Path, key: str) -> dict[int, list]:
    """[return, steps] by seed kept by an interrupted evaluation of the same C and step
    limit."""
    try:
        data = json.loads(path.read_text())
        if data.get("key") != key:
            return {}
        return {int(seed): [float(r), int(n)] for seed, (r, n) in data["returns"].items()}
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return {}  # none, or not ours: play every episode


def summary_finished(path: Path, key: str) -> dict[int, list]:
    """[return, steps] by seed in a finished summary of the same agent and step limit, so
    an evaluation of more episodes into the same file plays only the new ones."""
    try:
        held = json.loads(path.read_text())
        if episodes_key(held["agent"], held["max_steps"]) != key:
            return {}
        return {int(seed): [float(r), int(n)]
                for seed, r, n in zip(held["seeds"], held["returns"], held["steps"], strict=True)}
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return {}  # none, an older summary that does not name its agent, or not ours


def evaluate(run: Path, config: EvaluateConfig, policy: str = "controller",
             address: str | None = None, video: Path | None = None,
             progress: bool = True, evaluator=None, device: str = "cpu",
             out: Path | None = None, iteration: int | None = None) -> dict:
    """Run `config.episodes` real episodes; returns the summary and writes it to `out`
    (default: the run's, `summary_path`). `evaluator` (optional, e.g. the pipeline's)
    replaces the one made from `config.workers`. `iteration` scores the agent (M and C) of
    that iterate snapshot instead of RUN's (default out: the snapshot's evaluation.json)."""
    if policy not in POLICIES:
        raise UserError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if iteration is not None and policy != "controller":
        raise UserError(f"--iteration {iteration} names an agent; the random policy has none")
    check_fields(config, "config.json or a flag", "evaluate")
    paths = RunPaths(Path(run))
    paths.writable()  # before the episodes: their scores must not be lost to a failed write
    world = WorldModel.from_run(paths.root, iteration=iteration)
    params = world.load_controller(paths, iteration) if policy == "controller" else None
    seeds = episode_seeds(config)
    if out is None:
        out = summary_path(paths, policy, iteration)
        # The run's record of other episodes (say the pipeline's 100) is not replaced by a
        # quick look at a few.
        held = load_json(out) if out.exists() else None
        if held is not None and not isinstance(held, dict):
            raise UserError(f"{out}: not an evaluation summary; move it away or give --out FILE")
        if held is not None and not holds_episodes(held, seeds, config.max_steps):
            raise UserError(
                f"{out} holds {held.get('episodes')} other episodes (from seed "
                f"{(held.get('seeds') or ['?'])[0]}, up to {held.get('max_steps', '?')} steps); "
                f"this evaluation ({len(seeds)} from seed {seeds[0]}, up to {config.max_steps} "
                f"steps) would replace them: give --out FILE")
    # Finished episodes survive an interrupt: their returns and steps are kept in a partial
    # file (rewritten atomically after each task), and a rerun plays only the rest; those of
    # a summary of the same agent already at `out` are not played again either.
    agent = agent_digest(params, world.mdnrnn_state, world.real_z)
    partial, key = out.with_suffix(".partial.json"), episodes_key(agent, config.max_steps)
    finished = {s: r for s, r in {**summary_finished(out, key),
                                  **load_finished(partial, key)}.items() if s in seeds}
    todo = [s for s in seeds if s not in finished]

    def keep(lo: int, hi: int, scores: np.ndarray) -> None:
        finished.update(zip(todo[lo:hi], ([float(r), int(n)] for r, n in scores), strict=True))
        atomic.write_text(partial, json.dumps({"key": key, "returns": finished}))

    start = time.perf_counter()
    own_evaluator = evaluator is None and bool(todo)  # no Ray workers for nothing to play
    if own_evaluator:
        evaluator = make_evaluator(world, config.workers, address, device,
                                   config.envs_per_worker)
    bar = progress_bar(total=len(seeds), initial=len(finished), unit="ep", disable=not progress,
                       desc=f"evaluate ({policy if iteration is None else f'iteration {iteration}'}"
                            f", {config.workers or 'no'} Ray workers)")
    try:
        if todo:
            evaluator.run("real", None if params is None else params[None], np.array([todo]),
                          max_steps=config.max_steps, bar=bar, on_rows=keep)
    finally:
        bar.close()
        if own_evaluator:
            evaluator.close()
    summary = summarize(np.array([finished[s][0] for s in seeds]),
                        np.array([finished[s][1] for s in seeds]), seeds, policy)
    summary["max_steps"], summary["seconds"] = config.max_steps, time.perf_counter() - start
    summary["agent"] = agent
    save_json(summary, out)
    partial.unlink(missing_ok=True)
    if video is not None:
        record_real_video(paths.root, Path(video), params, seeds[0], config.max_steps, device,
                          iteration=iteration)
    return summary


def record_real_video(run: Path, out: Path, params: np.ndarray | None, seed: int,
                      max_steps: int, device: str = "cpu", scale: int = SCALE,
                      iteration: int | None = None) -> Path:
    """One real episode: the real 64x64 frame beside V's reconstruction, as mp4 or gif (with
    snapshot `iteration`'s M, C's `params` being its)."""
    world = WorldModel.from_run(Path(run), iteration=iteration)
    agent = Agent.from_world(world, device)
    controllers = None if params is None else world.controllers(params, agent.device)
    env = world.game.make_env(max_steps=max_steps)
    try:
        [result] = run_episodes([env], [seed], max_steps, agent, controllers, record=True)
    finally:
        env.close()
    frames = result.episode.obs
    recons = agent.reconstruct(frames)
    return write_video(out, [side_by_side(f, r) for f, r in zip(frames, recons, strict=True)],
                       fps=world.game.fps, scale=scale)


def cli_evaluate(args: argparse.Namespace) -> int:
    paths = RunPaths(args.run)
    paths.require(paths.vae, "train-vae")
    paths.require(paths.mdnrnn, "train-mdnrnn")
    config = load_run_config(paths).evaluate
    if args.episodes is not None:
        config.episodes = args.episodes
    if args.seed is not None:
        config.seed = args.seed
    if args.workers is not None:
        config.workers = args.workers
    if args.max_steps is not None:
        config.max_steps = args.max_steps
    if args.envs_per_worker is not None:
        config.envs_per_worker = args.envs_per_worker
    s = evaluate(args.run, config, args.policy, args.address, args.video,
                 device=str(resolve_device(args.device)), out=args.out, iteration=args.iteration)
    out = args.out or summary_path(paths, s["policy"], args.iteration)
    print(f"evaluate ({s['policy']}): {s['mean']:.1f} +- {s['std']:.1f} over {s['episodes']} "
          f"episodes (min {s['min']:.1f}, max {s['max']:.1f}) -> {out}")
    if args.video is not None:
        print(f"video: {args.video}")
    return 0


def cli_real_video(args: argparse.Namespace) -> int:
    paths = RunPaths(args.run)
    config = load_run_config(paths).evaluate
    params = load_controller(paths) if args.policy == "controller" else None
    seed = config.seed if args.seed is None else args.seed
    out = record_real_video(paths.root, args.out, params, seed,
                            args.max_steps or config.max_steps, str(resolve_device(args.device)),
                            args.scale)
    print(f"real-video: episode seed {seed} -> {out}")
    return 0
