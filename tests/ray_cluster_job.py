"""Run by test_ray_session in its own process: a 2-node Ray cluster on this machine (one CPU
each) runs a tiny collect and evolve through `--address`; prints how they compare with the
same work done locally (`--workers 0`), as one JSON line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import ray
from fake_run import make_run
from ray.cluster_utils import Cluster

from worldmodels.cli import main
from worldmodels.config import EvolveConfig, PipelineConfig, save_json
from worldmodels.data.rollouts import read_episode
from worldmodels.run import RunPaths


def _episodes(directory: Path) -> list:
    return [read_episode(p) for p in sorted(directory.glob("episode_*.npz"))]


def run(tmp: Path) -> dict:
    collect = ["collect", "--episodes", "2", "--max-steps", "15", "--seed", "4"]
    assert main([*collect, "--out", str(tmp / "local"), "--workers", "0"]) == 0
    evolve = ["evolve", "--generations", "2", "--popsize", "4", "--rollouts", "2",
              "--max-steps", "10"]
    # One short real check after the last generation (the default, 8 full episodes, would
    # take minutes): it still runs on the cluster's workers.
    tiny_check = PipelineConfig(evolve=EvolveConfig(
        real_eval_every=2, real_eval_episodes=1, real_eval_max_steps=20))
    for name in ("local", "cluster"):
        save_json(tiny_check, RunPaths(make_run(tmp / f"run_{name}", gas_reward=True)).config)
    assert main([*evolve, "--run", str(tmp / "run_local"), "--workers", "0"]) == 0

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        address = cluster.address
        assert main([*collect, "--out", str(tmp / "cluster"), "--workers", "2",
                     "--address", address]) == 0
        assert main([*evolve, "--run", str(tmp / "run_cluster"), "--workers", "2",
                     "--address", address]) == 0
        nodes = len([n for n in ray.nodes() if n["Alive"]])
    finally:
        ray.shutdown()
        cluster.shutdown()
    local, remote = _episodes(tmp / "local"), _episodes(tmp / "cluster")
    collect_equal = len(local) == len(remote) == 2 and all(
        np.array_equal(a.obs, b.obs) and np.array_equal(a.action, b.action)
        for a, b in zip(local, remote, strict=True))
    controllers = [np.load(tmp / f"run_{n}" / "controller.npy") for n in ("local", "cluster")]
    return {"nodes": nodes, "collect_equal": bool(collect_equal),
            "evolve_equal": bool(np.allclose(*controllers, rtol=1e-5, atol=1e-6))}


if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1]))))
