"""RUN/config.json: unknown keys, values of the wrong type and non-objects are named by key."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field

import pytest
from fake_run import make_run

from worldmodels.cli import main
from worldmodels.config import (
    PRESETS,
    IterateConfig,
    PipelineConfig,
    check_fields,
    from_dict,
    preset,
    with_settings,
)
from worldmodels.errors import UserError
from worldmodels.run import RunPaths, load_run_config


@pytest.mark.parametrize("data, message", [
    ({"mdnrnn": {"epochs": "ten"}}, 'mdnrnn.epochs must be an int, got "ten"'),
    ({"vae": {"batch_size": "32"}}, 'vae.batch_size must be an int, got "32"'),
    ({"vae": {"batch_size": True}}, "vae.batch_size must be an int, got true"),
    ({"evolve": {"tau": "hot"}}, 'evolve.tau must be a finite number, got "hot"'),
    ({"evolve": {"tau": float("inf")}}, "evolve.tau must be a finite number, got inf"),
    ({"evolve": {"where": 3}}, "evolve.where must be a string, got 3"),
    ({"collect": "lots"}, 'collect must be an object, got "lots"'),
    ([1, 2], "the top level must be an object, got \\[1, 2\\]"),
    ({"evaluate": {"episodez": 3}},
     "unknown config keys \\['evaluate.episodez'\\] \\(not fields of EvaluateConfig\\)"),
])
def test_wrong_types_and_shapes_are_named_by_key(tmp_path, data, message):
    paths = RunPaths(tmp_path)
    paths.config.write_text(json.dumps(data))
    with pytest.raises(UserError, match=f"^{paths.config}: {message}$"):
        load_run_config(paths)


def test_a_new_run_draws_its_own_id_and_keeps_it(tmp_path):
    first, second = RunPaths(tmp_path / "a"), RunPaths(tmp_path / "b")
    first.root.mkdir(), second.root.mkdir()
    made = load_run_config(first, default=PipelineConfig(seed=3))
    assert len(made.run_id) == 12 and int(made.run_id, 16) >= 0 and made.seed == 3
    assert load_run_config(first) == made  # read back, not drawn again
    assert load_run_config(second).run_id != made.run_id


@dataclass
class Inner:  # fields like those other stages add (a dropout rate, a flag)
    tbptt: bool = False
    dropout: float = 0.0


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)


def test_the_check_is_generic_over_fields_bools_included():
    assert from_dict(Outer, {"inner": {"tbptt": True, "dropout": 1}}).inner.dropout == 1.0
    with pytest.raises(UserError, match="inner.tbptt must be true or false, got 1"):
        from_dict(Outer, {"inner": {"tbptt": 1}}, "x.json")
    # Every preset round-trips through the checker.
    for name in PRESETS:
        config = preset(name)
        assert from_dict(PipelineConfig, json.loads(json.dumps(asdict(config)))) == config


def test_a_bad_config_value_names_the_key_not_a_flag(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    config = preset("tiny")
    config.evaluate.episodes = -3
    RunPaths(run).config.write_text(json.dumps(asdict(config)))
    (run / "controller.npy").write_bytes(b"")
    assert main(["evaluate", "--run", str(run), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{RunPaths(run).config}: evaluate.episodes must be > 0, got -3")


def test_set_changes_preset_values_by_key_and_type():
    config = with_settings(preset("small"), ["vae.epochs=10", "mdnrnn.mixture=joint",
                                             "evolve.tau=2", "iterate.restart=false"])
    assert (config.vae.epochs, config.mdnrnn.mixture) == (10, "joint")
    assert config.evolve.tau == 2.0 and isinstance(config.evolve.tau, float)
    assert config.iterate.restart is False
    untouched = preset("small")
    untouched.vae.epochs, untouched.mdnrnn.mixture, untouched.evolve.tau = 10, "joint", 2.0
    untouched.iterate.restart = False
    assert config == untouched  # nothing else moved


@pytest.mark.parametrize("setting, message", [
    ("vae.epochs", "expected SECTION.FIELD=VALUE with SECTION one of collect, vae"),
    ("epochs=3", "expected SECTION.FIELD=VALUE"),
    ("seed.x=3", "expected SECTION.FIELD=VALUE"),  # the run's seed has its own flag
    ("vae.epochz=3", "vae has no field 'epochz'"),
    ("vae.epochs=ten", '--set: vae.epochs must be an int, got "ten"'),
    ("evolve.tau=NaN", "--set: evolve.tau must be a finite number, got nan"),
    ("mdnrnn.mixture=jont", '--set: mdnrnn.mixture must be one of factorised, joint, got "jont"'),
    ("mdnrnn.lr_schedule=cosin", "mdnrnn.lr_schedule must be one of constant, cosine"),
    ("evolve.done=maybe", "evolve.done must be one of threshold, likely, sample"),
    ("evolve.where=gym", "evolve.where must be one of dream, real"),
    # Bounds, refused when the config is made, not when their stage starts an hour later.
    ("mdnrnn.dropout=2", "--set: mdnrnn.dropout must be a finite number in [0, 1), got 2.0"),
    ("mdnrnn.seq_len=0", "--set: mdnrnn.seq_len must be > 0, got 0"),
    ("evolve.popsize=1", "--set: evolve.popsize must be >= 2, got 1"),
    ("vae.batch_size=-4", "--set: vae.batch_size must be > 0, got -4"),
    ("iterate.noisy_fraction=1.5",
     "--set: iterate.noisy_fraction must be a finite number in [0, 1], got 1.5"),
    ("iterate.episodes=10001", "--set: iterate.episodes must be in [1, 10000], got 10001"),
])
def test_a_bad_set_is_named(setting, message):
    with pytest.raises(UserError, match=re.escape(message)):
        with_settings(preset("small"), [setting])


def test_a_config_built_in_code_is_checked_too():
    # A flag can set a field the file never had: infinity passes an open-ended bound's
    # comparison but is refused (it would run and give nan dreams).
    with pytest.raises(UserError, match=r"iterate.noise must be a finite number >= 0, got inf"):
        check_fields(IterateConfig(noise=math.inf), "a flag", "iterate")
    check_fields(IterateConfig(), "a flag", "iterate")


def test_a_bad_set_is_one_line_and_exit_2_before_anything_is_written(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pipeline", "--preset", "tiny", "--run", str(run),
                 "--set", "vae.epochz=3"]) == 2
    assert capsys.readouterr().err.strip() == ("worldmodels pipeline: error: --set vae.epochz=3: "
                                               "vae has no field 'epochz'")
    assert not RunPaths(run).config.exists()
    # A value outside a choice field's names is refused before an hour of collecting and V.
    assert main(["pipeline", "--preset", "tiny", "--run", str(run),
                 "--set", "mdnrnn.mixture=jont"]) == 2
    assert "mdnrnn.mixture must be one of factorised, joint" in capsys.readouterr().err
    assert not RunPaths(run).config.exists() and not (run / "data").exists()
    # So is a number outside its field's bounds.
    assert main(["pipeline", "--preset", "tiny", "--run", str(run),
                 "--set", "evaluate.episodes=0"]) == 2
    assert capsys.readouterr().err.strip().endswith("evaluate.episodes must be > 0, got 0")
    assert not RunPaths(run).config.exists() and not (run / "data").exists()
