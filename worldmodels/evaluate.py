"""Score a run's agent (V + M + C) in the real CarRacing-v3, or the random-policy baseline.

Each step: V encodes the frame to (mu, logvar), z is sampled from them, C acts on [z, h],
the env steps, and M updates h with (z, action). Episode i uses seed `seed + i` (for the
track and for z's noise), so a result is reproducible. Writes RUN/evaluation.json
(RUN/evaluation_random.json for `--policy random`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from worldmodels import atomic
from worldmodels.config import EvaluateConfig, save_json
from worldmodels.errors import UserError
from worldmodels.models.controller import Controller
from worldmodels.models.mdnrnn import MDNRNN
from worldmodels.models.vae import ConvVAE
from worldmodels.npfiles import read_npy
from worldmodels.progress import progress_bar
from worldmodels.run import RunPaths, load_run_config

POLICIES = ("controller", "random")


@dataclass
class EpisodeResult:
    total_reward: float
    steps: int
    frames: list[np.ndarray] = field(default_factory=list)  # real | reconstruction, if recorded


class one_thread(contextlib.ContextDecorator):
    """Batch-1 inference is fastest on one thread; more only contend (badly on a busy machine)."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


@one_thread()
@torch.inference_mode()
def real_episode(env, vae: ConvVAE, mdnrnn: MDNRNN, params: np.ndarray | None, seed: int,
                 max_steps: int, record: bool = False) -> EpisodeResult:
    """One episode of `env` (from make_env) driven by C(params), or by uniform random actions
    when params is None. With `record`, keeps each real frame beside V's reconstruction."""
    from worldmodels.video import side_by_side

    c = mdnrnn.config
    controller = None if params is None else Controller(params, c.z_size, c.hidden_size)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    state = mdnrnn.initial_state(1)
    total, steps, frames = 0.0, 0, []
    for _ in range(max_steps):
        mu, logvar = vae.encode(torch.from_numpy(np.array(obs[None])))
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator)
        if record:
            recon = vae.decode(mu)[0].permute(1, 2, 0).numpy()
            frames.append(side_by_side(obs, (recon * 255).round().astype(np.uint8)))
        if controller is None:
            action = torch.from_numpy(rng.uniform([-1, 0, 0], [1, 1, 1]).astype(np.float32))[None]
        else:
            action = controller.act(z, state[0])
        obs, reward, terminated, truncated, _ = env.step(action[0].numpy())
        total += float(reward)
        steps += 1
        state = mdnrnn.step(z, action, state)
        if terminated or truncated:
            break
    return EpisodeResult(total, steps, frames)


def load_params(paths: RunPaths) -> np.ndarray:
    paths.require(paths.controller, "evolve")
    params = read_npy(paths.controller)
    if not np.issubdtype(params.dtype, np.floating) or not np.isfinite(params).all():
        raise UserError(f"{paths.controller}: expected finite floats, got {params.dtype} "
                        "values that are not")
    return params.astype(np.float32)


def summarize(returns: np.ndarray, seeds: list[int], policy: str) -> dict:
    return {"policy": policy, "episodes": len(returns), "mean": float(returns.mean()),
            "std": float(returns.std()), "min": float(returns.min()),
            "max": float(returns.max()), "returns": [float(r) for r in returns],
            "seeds": seeds}


def episodes_key(params: np.ndarray | None, max_steps: int) -> str:
    """What a finished episode's return depends on besides its seed: C and the step limit."""
    digest = "random" if params is None else hashlib.sha256(
        np.ascontiguousarray(params, np.float32).tobytes()).hexdigest()[:16]
    return f"{digest}/max_steps={max_steps}"


def load_finished(path: Path, key: str) -> dict[int, float]:
    """Returns by seed kept by an interrupted evaluation of the same C and step limit."""
    try:
        data = json.loads(path.read_text())
        if data.get("key") != key:
            return {}
        return {int(seed): float(r) for seed, r in data["returns"].items()}
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return {}  # none, or not ours: play every episode


def evaluate(run: Path, config: EvaluateConfig, policy: str = "controller",
             address: str | None = None, video: Path | None = None,
             progress: bool = True, evaluator=None) -> dict:
    """Run `config.episodes` real episodes; returns (and writes) the summary. `evaluator`
    (optional, e.g. the pipeline's) replaces the one made from `config.workers`."""
    from worldmodels.evolve.workers import ModelBundle, make_evaluator

    if policy not in POLICIES:
        raise UserError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if config.episodes < 1:
        raise UserError(f"evaluate.episodes (config.json or --episodes) must be >= 1, got "
                        f"{config.episodes}")
    paths = RunPaths(Path(run))
    paths.writable()  # before the episodes: their scores must not be lost to a failed write
    bundle = ModelBundle.from_run(paths.root)
    params = load_params(paths) if policy == "controller" else None
    if params is not None and params.shape != (bundle.param_count,):
        raise UserError(f"{paths.controller}: {params.shape} parameters, the run's M needs "
                        f"({bundle.param_count},)")
    seeds = [config.seed + i for i in range(config.episodes)]
    out = paths.evaluation if policy == "controller" else paths.root / "evaluation_random.json"
    # Finished episodes survive an interrupt: their returns are kept in a partial file
    # (rewritten atomically after each one), and a rerun plays only the rest.
    partial, key = out.with_suffix(".partial.json"), episodes_key(params, config.max_steps)
    finished = {s: r for s, r in load_finished(partial, key).items() if s in seeds}
    todo = [s for s in seeds if s not in finished]

    def keep(lo: int, hi: int, values: np.ndarray) -> None:
        finished.update(zip(todo[lo:hi], map(float, values), strict=True))
        atomic.write_text(partial, json.dumps({"key": key, "returns": finished}))

    start = time.perf_counter()
    own_evaluator = evaluator is None
    if own_evaluator:
        evaluator = make_evaluator(bundle, config.workers, address)
    bar = progress_bar(total=len(seeds), initial=len(finished), unit="ep", disable=not progress,
                       desc=f"evaluate ({policy}, {config.workers or 'no'} Ray workers)")
    try:
        if todo:
            rows = None if params is None else np.tile(params, (len(todo), 1))
            evaluator.returns("real", rows, np.array(todo), max_steps=config.max_steps,
                              bar=bar, on_rows=keep)
    finally:
        bar.close()
        if own_evaluator:
            evaluator.close()
    summary = summarize(np.array([finished[s] for s in seeds]), seeds, policy)
    summary["seconds"] = time.perf_counter() - start
    save_json(summary, out)
    partial.unlink(missing_ok=True)
    if video is not None:
        record_real_video(paths.root, Path(video), params, seeds[0], config.max_steps)
    return summary


def record_real_video(run: Path, out: Path, params: np.ndarray | None, seed: int,
                      max_steps: int, fps: int = 50) -> Path:
    """One real episode: the real 64x64 frame beside V's reconstruction, as mp4 or gif."""
    from worldmodels.env.carracing import make_env
    from worldmodels.evolve.workers import ModelBundle
    from worldmodels.video import write_video

    bundle = ModelBundle.from_run(Path(run))
    env = make_env(max_steps=max_steps)
    try:
        result = real_episode(env, bundle.vae(), bundle.mdnrnn(), params, seed, max_steps,
                              record=True)
    finally:
        env.close()
    return write_video(out, result.frames, fps=fps)


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
    s = evaluate(args.run, config, args.policy, args.address, args.video)
    print(f"evaluate ({s['policy']}): {s['mean']:.1f} +- {s['std']:.1f} over {s['episodes']} "
          f"episodes (min {s['min']:.1f}, max {s['max']:.1f})")
    if args.video is not None:
        print(f"video: {args.video}")
    return 0
