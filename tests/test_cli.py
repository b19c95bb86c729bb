"""The CLI as a new user meets it: --help, refused values, read-only and odd run paths,
flags that have no effect."""

from __future__ import annotations

import shutil

import pytest
from fake_run import make_run

from worldmodels import atomic
from worldmodels.cli import main

HW_TINY = ["--hidden-size", "8", "--layers", "1", "--components", "2", "--batch-size", "16",
           "--train-drawings", "32"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_help_describes_the_program_to_its_user(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "World Models" in out and "CarRacing" in out and "dispatch" not in out


@pytest.mark.parametrize("argv", [
    ["evolve", "--run", "r", "--tau", "inf"],
    ["dream-video", "--run", "r", "--out", "d.gif", "--tau", "nan"],
    ["handwriting", "sample", "--run", "r", "--out", "s.png", "--bias", "nan"],
    ["handwriting", "sample", "--run", "r", "--out", "s.png", "--temperature", "inf"],
])
def test_non_finite_floats_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "must be a finite number" in capsys.readouterr().err


def test_every_stage_refuses_a_read_only_run_at_once(tmp_path, real_rollouts, monkeypatch,
                                                      capsys):
    run = make_run(tmp_path / "run")
    (run / "controller.npy").write_bytes(b"")
    data = tmp_path / "data"
    shutil.copytree(real_rollouts, data)
    # Tests run as root, which writes through any mode bits: os.access stands in.
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: False)
    for argv in (
        ["collect", "--out", str(tmp_path / "new"), "--episodes", "1", "--workers", "0"],
        ["train-vae", "--data", str(data), "--run", str(tmp_path / "fresh")],
        ["encode", "--run", str(run), "--data", str(data)],
        ["train-mdnrnn", "--run", str(run)],
        ["evolve", "--run", str(run), "--workers", "0"],
        ["evaluate", "--run", str(run), "--workers", "0"],
        ["handwriting", "train", "--run", str(tmp_path / "hw"), *HW_TINY],
        ["pipeline", "--preset", "tiny", "--run", str(run), "--workers", "0"],
    ):
        assert main(argv) == 2, argv
        assert _error_line(capsys).endswith("directory is not writable"), argv


def test_a_run_path_that_is_a_regular_file_is_one_line(tmp_path, real_rollouts, capsys):
    a_file = tmp_path / "run"
    a_file.write_text("")
    for argv in (["train-vae", "--data", str(real_rollouts), "--run", str(a_file)],
                 ["handwriting", "train", "--run", str(a_file), *HW_TINY],
                 ["pipeline", "--preset", "tiny", "--run", str(a_file)]):
        assert main(argv) == 2, argv
        assert _error_line(capsys).endswith(f"--run {a_file}: exists and is not a directory")


def test_flags_without_effect_are_named(tmp_path, real_rollouts, capsys):
    out = tmp_path / "data"
    shutil.copytree(real_rollouts, out)
    assert main(["collect", "--out", str(out), "--episodes", "1", "--workers", "0",
                 "--address", "10.0.0.1:6379"]) == 0
    assert "warning: --address 10.0.0.1:6379 is ignored with --workers 0" in \
        capsys.readouterr().err

    run = tmp_path / "hw"
    assert main(["handwriting", "train", "--run", str(run), "--epochs", "1", *HW_TINY]) == 0
    capsys.readouterr()
    resumed = [a if a != "8" else "12" for a in HW_TINY]  # another --hidden-size
    assert main(["handwriting", "train", "--run", str(run), "--epochs", "1", "--resume",
                 *resumed]) == 0
    err = capsys.readouterr().err
    assert "warning: handwriting train --resume keeps the checkpoint's settings: " \
           "hidden_size 8 (not 12)" in err
