"""`worldmodels handwriting train/sample` end to end at a tiny size, resume, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from worldmodels import checkpoint
from worldmodels.cli import main
from worldmodels.config import MDNRNNConfig
from worldmodels.logger import read_csv
from worldmodels.models.mdnrnn import MDNRNN

TINY = ["--hidden-size", "16", "--layers", "1", "--components", "3", "--batch-size", "16",
        "--train-drawings", "48"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_train_resume_and_sample_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["handwriting", "train", "--run", str(run), "--epochs", "1", *TINY]) == 0
    rows = read_csv(run / "logs" / "handwriting.csv")
    assert rows[-1]["epoch"] == 1 and np.isfinite(rows[-1]["valid_nll"])
    steps_after_one = rows[-1]["step"]
    assert steps_after_one == 3  # 48 drawings / 16 per batch

    # Training again without --resume must not overwrite the run.
    assert main(["handwriting", "train", "--run", str(run), "--epochs", "1", *TINY]) == 2
    assert "--resume" in _one_error_line(capsys)

    assert main(["handwriting", "train", "--run", str(run), "--epochs", "2", "--resume"]) == 0
    rows = read_csv(run / "logs" / "handwriting.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["step"] == 2 * steps_after_one  # continued, not restarted

    png = tmp_path / "samples.png"
    assert main(["handwriting", "sample", "--run", str(run), "--out", str(png), "--n", "4",
                 "--bias", "0", "1.0", "--seed", "1"]) == 0
    image = np.asarray(Image.open(png).convert("RGB"))
    # Three panels (two bias values, the validation drawings), 2 x 2 cells of 96 px each.
    assert image.shape[1] > 3 * 2 * 96 and image.shape[0] > 2 * 96
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert (31, 119, 180) in colours and (214, 39, 40) in colours  # first and second strokes

    svg = tmp_path / "samples.svg"
    assert main(["handwriting", "sample", "--run", str(run), "--out", str(svg), "--n", "3",
                 "--points", "12"]) == 0
    text = svg.read_text()
    assert text.startswith("<svg") and "validation data" in text and "bias 0" in text
    assert text.count("<polyline") + text.count("<circle") >= 6


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_strokes=np.zeros((5, 4)), train_offsets=np.array([0, 5]))
    assert main(["handwriting", "train", "--data", str(bad), "--run", str(tmp_path / "a")]) == 2
    assert "shape (5, 4)" in _one_error_line(capsys)

    sketch = tmp_path / "sketch.npz"
    objects = np.empty(2, dtype=object)
    objects[0] = objects[1] = np.array([[1, 2, 0], [3, 4, 1]], np.int16)
    np.savez(sketch, train=objects, valid=objects)
    assert main(["handwriting", "train", "--data", str(sketch), "--run",
                 str(tmp_path / "b")]) == 2
    assert "--allow-pickle" in _one_error_line(capsys)

    # A checkpoint from another model where the handwriting one should be.
    other = tmp_path / "other"
    checkpoint.save(other / "handwriting.pt", MDNRNN(MDNRNNConfig(hidden_size=8)),
                    MDNRNNConfig(hidden_size=8))
    assert main(["handwriting", "sample", "--run", str(other), "--out",
                 str(tmp_path / "x.png")]) == 2
    line = _one_error_line(capsys)
    assert "not a handwriting checkpoint" in line and "HandwritingConfig" in line

    assert main(["handwriting", "sample", "--run", str(tmp_path / "none"), "--out",
                 str(tmp_path / "x.png")]) == 2
    assert "no handwriting checkpoint" in _one_error_line(capsys)


@pytest.mark.parametrize("out", ["x.jpg", "x"])
def test_sample_refuses_other_image_formats(tmp_path, capsys, out):
    assert main(["handwriting", "sample", "--run", str(tmp_path), "--out",
                 str(tmp_path / out)]) == 2
    assert ".svg or .png" in _one_error_line(capsys)
