"""Handwriting: loaders, normalisation, masks, the NLL by hand, sampling, training, the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from worldmodels.errors import UserError
from worldmodels.handwriting.data import (
    DEFAULT_DATA,
    load_drawings,
    load_iam,
    normalise,
    offset_scale,
    pad_batch,
)
from worldmodels.handwriting.model import HandwritingConfig, HandwritingModel, sample
from worldmodels.models.mdn import LOG_SIGMA_MIN, RHO_MAX

TINY = HandwritingConfig(hidden_size=16, layers=1, components=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")

STROKE_XML = """<?xml version="1.0" encoding="ISO-8859-1"?>
<WhiteboardCaptureSession>
  <StrokeSet>
{strokes}
  </StrokeSet>
</WhiteboardCaptureSession>
"""


def _iam_file(path, strokes: list[list[tuple[int, int]]]) -> None:
    body = "\n".join(
        '    <Stroke colour="black" start_time="0" end_time="1">\n'
        + "\n".join(f'      <Point x="{x}" y="{y}" time="{i * 0.01:.2f}"/>'
                    for i, (x, y) in enumerate(points))
        + "\n    </Stroke>"
        for points in strokes
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STROKE_XML.format(strokes=body))


# --------------------------------------------------------------------- loaders
def test_iam_xml_tree_becomes_offsets_with_pen_lifts(tmp_path):
    _iam_file(tmp_path / "a01" / "a01-000" / "a01-000u-01.xml",
              [[(100, 200), (103, 198), (110, 190)], [(120, 205), (121, 207)]])
    _iam_file(tmp_path / "b02" / "b02-001u-02.xml", [[(5, 5), (6, 9)]])
    (tmp_path / "notes.txt").write_text("not xml")

    drawings = load_iam(tmp_path)  # walks sub-directories, reads only .xml, sorted by path
    assert len(drawings) == 2
    np.testing.assert_array_equal(drawings[0], [
        [0, 0, 0], [3, -2, 0], [7, -8, 1],   # first stroke, pen lifts after its last point
        [10, 15, 0], [1, 2, 1],              # the jump to the second stroke is an offset too
    ])
    np.testing.assert_array_equal(drawings[1], [[0, 0, 0], [1, 4, 1]])

    splits = load_drawings(tmp_path, valid_fraction=0.5)
    assert len(splits.train) == 1 and len(splits.valid) == 1


def test_iam_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "broken.xml").write_text("<StrokeSet><Stroke>")
    with pytest.raises(UserError, match="not readable XML"):
        load_iam(tmp_path / "broken.xml")
    (tmp_path / "broken.xml").unlink()
    with pytest.raises(UserError, match="no .xml files"):
        load_iam(tmp_path)
    _iam_file(tmp_path / "only.xml", [[(0, 0), (1, 1)]])
    with pytest.raises(UserError, match="at least 2 drawings"):
        load_drawings(tmp_path)


def test_sketch_rnn_npz_needs_the_pickle_opt_in(tmp_path):
    rng = np.random.default_rng(0)

    def drawings(n):
        out = np.empty(n, dtype=object)
        for i in range(n):
            d = rng.integers(-20, 20, size=(5 + i, 3)).astype(np.int16)
            d[:, 2] = 0
            d[-1, 2] = 1
            out[i] = d
        return out

    train, valid = drawings(4), drawings(2)
    path = tmp_path / "cat.npz"
    np.savez(path, train=train, valid=valid, test=drawings(1))

    with pytest.raises(UserError, match="--allow-pickle"):
        load_drawings(path)
    splits = load_drawings(path, allow_pickle=True)
    assert [len(d) for d in splits.train] == [5, 6, 7, 8]
    for got, want in zip(splits.valid, valid, strict=True):
        np.testing.assert_array_equal(got, want)


def test_bundled_omniglot_and_bad_npz_files(tmp_path):
    splits = load_drawings(DEFAULT_DATA)
    assert len(splits.train) == 30_000 and len(splits.valid) == 1_000
    assert all(d.shape[1] == 3 and len(d) > 0 for d in splits.train[:100])
    assert set(np.unique(np.concatenate(splits.valid)[:, 2])) == {0.0, 1.0}

    bad_shape = tmp_path / "shape.npz"
    np.savez(bad_shape, train_strokes=np.zeros((10, 2)), train_offsets=np.array([0, 10]))
    with pytest.raises(UserError, match=r"shape \(10, 2\)"):
        load_drawings(bad_shape)
    empty = tmp_path / "empty.npz"
    np.savez(empty, train_strokes=np.zeros((0, 3)), train_offsets=np.array([0]),
             valid_strokes=np.zeros((2, 3)), valid_offsets=np.array([0, 2]))
    with pytest.raises(UserError, match="no training drawings"):
        load_drawings(empty)
    other = tmp_path / "other.npz"
    np.savez(other, frames=np.zeros((2, 4)))
    with pytest.raises(UserError, match="unknown .npz layout"):
        load_drawings(other)
    text = tmp_path / "junk.npz"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a valid .npz"):
        load_drawings(text)
    strings = tmp_path / "strings.npz"  # a string-typed train_strokes: ValueError before
    np.savez(strings, train_strokes=np.array([["a", "b", "c"]]), train_offsets=np.array([0, 1]))
    with pytest.raises(UserError, match="train_strokes holds <U1 values, expected numbers"):
        load_drawings(strings)


@pytest.mark.parametrize("bad", ["nan", "1e300", "inf"])
def test_iam_non_finite_or_huge_coordinates_are_refused(tmp_path, bad):
    # 1e300 is finite as a float64 but inf as the float32 we train on: a nan loss, exit 0.
    path = tmp_path / "line.xml"
    _iam_file(path, [[(0, 0), (1, 1)]])
    path.write_text(path.read_text().replace('x="1"', f'x="{bad}"'))
    with pytest.raises(UserError, match="line.xml: drawing lineStrokes has non-finite"):
        load_iam(path)


def test_normalisation_gives_unit_std_and_clips_outliers():
    rng = np.random.default_rng(1)
    drawings = [np.column_stack([rng.normal(0, 30, (50, 1)), rng.normal(0, 5, (50, 1)),
                                 np.zeros((50, 1))]).astype(np.float32) for _ in range(20)]
    drawings[0][0, 0] = 1e5  # one wild outlier
    scale = offset_scale(drawings)
    normed = np.concatenate([normalise(d, scale, clip=4.0) for d in drawings])
    assert np.abs(normed[:, :2]).max() == pytest.approx(4.0)
    assert normed[1:, 1].std() == pytest.approx(1.0, rel=0.05)


# --------------------------------------------------------------------- model
def test_padding_and_masks_do_not_change_a_drawing_loss():
    torch.manual_seed(0)
    model = HandwritingModel(TINY)
    rng = np.random.default_rng(2)
    short = np.column_stack([rng.normal(size=(4, 2)), [0, 1, 0, 1]]).astype(np.float32)
    long = np.column_stack([rng.normal(size=(11, 2)), rng.integers(0, 2, 11)]).astype(np.float32)
    with torch.no_grad():
        alone = model.loss(pad_batch([short]))
        padded = model.point_nll(pad_batch([long, short]))
    assert padded[1, 4:].abs().max() == 0  # padding contributes nothing
    torch.testing.assert_close(padded[1].sum() / 4, alone)


def test_nll_matches_a_hand_computation():
    """Constant head outputs (zero weights) so the density is known: check one point by hand."""
    model = HandwritingModel(HandwritingConfig(hidden_size=4, layers=1, components=2))
    mu = [(0.5, -1.0), (2.0, 0.0)]
    sigma = [(0.8, 1.5), (1.2, 0.6)]
    rho_raw = [0.3, -0.7]
    logits = [0.2, -0.4]
    eos_logit = -1.3
    # The head bounds log sigma softly from below: invert that so sigma is exactly as listed.
    raw_log_sigma = [LOG_SIGMA_MIN + math.log(math.expm1(math.log(s) - LOG_SIGMA_MIN))
                     for pair in sigma for s in pair]
    bias = torch.tensor(logits + [m for pair in mu for m in pair]
                        + raw_log_sigma + rho_raw + [eos_logit])
    with torch.no_grad():
        model.head.linear.weight.zero_()
        model.head.linear.bias.copy_(bias)
    dx, dy, pen = 1.1, -0.4, 1.0

    weights = [math.exp(v) / sum(math.exp(u) for u in logits) for v in logits]
    density = 0.0
    for w, (mx, my), (sx, sy), r_raw in zip(weights, mu, sigma, rho_raw, strict=True):
        r = RHO_MAX * math.tanh(r_raw)
        zx, zy = (dx - mx) / sx, (dy - my) / sy
        z = (zx * zx + zy * zy - 2 * r * zx * zy) / (1 - r * r)
        density += w * math.exp(-z / 2) / (
            2 * math.pi * sx * sy * math.sqrt(1 - r * r))
    p_eos = 1 / (1 + math.exp(-eos_logit))
    expected = -math.log(density) - math.log(p_eos if pen else 1 - p_eos)

    loss = model.loss(pad_batch([np.array([[dx, dy, pen]], np.float32)]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_sampling_returns_valid_stroke3_in_data_units():
    torch.manual_seed(0)
    config = HandwritingConfig(hidden_size=16, layers=1, components=3, scale_x=50.0,
                               scale_y=10.0)
    model = HandwritingModel(config)
    drawings = sample(model, n=6, points=25, seed=3)
    assert len(drawings) == 6
    for d in drawings:
        assert d.shape == (25, 3) and d.dtype == np.float32 and np.isfinite(d).all()
        assert set(np.unique(d[:, 2])) <= {0.0, 1.0} and d[-1, 2] == 1.0
    stacked = np.stack(drawings)
    assert stacked[..., 2].sum() > 6  # strokes end inside drawings, not only at the end
    assert stacked[..., 0].std() > 2 * stacked[..., 1].std()  # the x scale (50 vs 10) applied
    again = sample(model, n=6, points=25, seed=3)
    np.testing.assert_array_equal(np.stack(again), stacked)
    biased = np.stack(sample(model, n=6, points=25, bias=3.0, seed=3))
    assert biased[..., :2].std() < stacked[..., :2].std()  # bias shrinks sigma


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    splits = load_drawings(DEFAULT_DATA)
    scale = offset_scale(splits.train[:200])
    batch = pad_batch([normalise(d, scale, 10.0) for d in splits.train[:32]])
    model = HandwritingModel(HandwritingConfig(hidden_size=32, layers=1, components=5))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
