"""`--device`: one parser for every stage; the CPU here, and checkpoints that load anywhere."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from fake_run import make_run

from worldmodels import checkpoint
from worldmodels.cli import build_parser, main
from worldmodels.config import CollectConfig, MDNRNNConfig
from worldmodels.data.collect import collect_config
from worldmodels.device import resolve_device
from worldmodels.errors import UserError
from worldmodels.handwriting.model import HandwritingConfig
from worldmodels.models.mdnrnn import MDNRNN
from worldmodels.run import RunPaths

NETWORK_STAGES = [["train-vae", "--data", "d", "--run", "r"], ["encode", "--run", "r"],
                  ["train-mdnrnn", "--run", "r"], ["evolve", "--run", "r"],
                  ["evaluate", "--run", "r"], ["dream-video", "--run", "r", "--out", "x.gif"],
                  ["pipeline", "--preset", "tiny", "--run", "r"],
                  ["handwriting", "train", "--run", "r"],
                  ["handwriting", "sample", "--run", "r", "--out", "x.svg"]]


def test_auto_is_the_cpu_without_a_gpu_and_bad_names_are_user_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    with pytest.raises(UserError, match="--device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no GPU"):
            resolve_device("cuda:0")


@pytest.mark.parametrize("argv", NETWORK_STAGES, ids=lambda a: " ".join(a[:2]))
def test_every_network_stage_takes_device(argv):
    assert build_parser().parse_args(argv).device == "auto"
    assert build_parser().parse_args([*argv, "--device", "cpu"]).device == "cpu"


def test_cli_defaults_come_from_the_configs():
    collect = collect_config(build_parser().parse_args(["collect", "--out", "o",
                                                        "--episodes", "1"]))
    defaults = CollectConfig()
    assert (collect.max_steps, collect.policy, collect.workers, collect.seed) == (
        defaults.max_steps, defaults.policy, defaults.workers, defaults.seed)
    hw = build_parser().parse_args(["handwriting", "train", "--run", "r"])
    config = HandwritingConfig()
    assert (hw.epochs, hw.hidden_size, hw.layers, hw.components, hw.batch_size,
            hw.learning_rate, hw.train_drawings) == (
        config.epochs, config.hidden_size, config.layers, config.components,
        config.batch_size, config.learning_rate, config.max_train_drawings)


def test_a_checkpoint_saved_from_any_device_loads_on_the_cpu(tmp_path):
    model = MDNRNN(MDNRNNConfig(hidden_size=8))
    if torch.cuda.is_available():
        model.cuda()
    checkpoint.save(tmp_path / "m.pt", model, model.config)
    loaded, _ = checkpoint.load_model(tmp_path / "m.pt", MDNRNN, MDNRNNConfig)
    assert next(loaded.parameters()).device == torch.device("cpu")


def test_bad_device_is_a_one_line_error(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["dream-video", "--run", str(run), "--out", str(tmp_path / "x.gif"),
                 "--device", "gpu0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device 'gpu0'" in err and len(err.splitlines()) == 1
    assert not (RunPaths(run).root / "x.gif").exists()


@pytest.mark.parametrize(("given", "want"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_package_makes_openmp_threads_wait_passively_unless_the_user_chose(given, want):
    # Set before torch loads (OpenMP reads it once then), so importing the package must not
    # import torch; a policy the user exported is kept.
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = ("import os, sys, worldmodels; assert 'torch' not in sys.modules; "
            "print(os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == want
