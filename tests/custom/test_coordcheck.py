"""python -m raysweep.coordcheck on a model factory's spec: the transformer's layer types are flat under muP; under
SP (the NTK parametrization) its hidden feature updates shrink with width under SGD and grow under Adam."""

import yaml

from raysweep import coordcheck
from raysweep.space import parse_spec
from tests.support import ROOT

TYPES = {"[Embedding]", "[LayerNorm]", "[Linear]", "[output]"}


def small_spec(**space):
    raw = yaml.safe_load((ROOT / "search_spaces" / "custom_transformer.yaml").read_text())
    raw["experiment"]["kwargs"] = {"vocab": 16, "context": 16, "n_train": 64, "n_test": 16}
    raw["space"].update(space)
    return raw


def slopes(check) -> dict[str, float]:
    assert check.error is None and TYPES <= set(check.layers), check.error
    return dict(zip(check.layers, check.slopes))


def test_transformer_coord_check_flat_under_mup():
    spec = parse_spec(small_spec(width=[32, 256], parametrization="muP"))
    mup, = coordcheck.run_factory_spec(spec, widths=(32, 64, 128, 256), steps=5, seeds=(0, 1, 2), batch_size=16,
                                       etas=[0.01])
    slope = slopes(mup)
    assert all(abs(slope[t]) < 0.1 for t in TYPES), mup.table()


def test_transformer_coord_check_sp_is_ntk():
    """SP with SGD: lazy, the hidden [Linear] slope near -1/2 (-0.54 measured). SP with Adam at a fixed eta, in
    the small-step regime (eta 1e-4; at 0.01 LayerNorm and softmax saturate the larger updates): hidden and output
    updates grow with width (+0.35, +0.65 measured; TP5's reason for muP)."""
    widths, seeds = (32, 64, 128), (0, 1)
    sgd, = coordcheck.run_factory_spec(parse_spec(small_spec(width=[32, 128], parametrization="SP", optimizer="SGD")),
                                       widths=widths, steps=5, seeds=seeds, batch_size=16, etas=[0.1])
    assert slopes(sgd)["[Linear]"] < -0.25, sgd.table()
    adam, = coordcheck.run_factory_spec(parse_spec(small_spec(width=[32, 128], parametrization="SP")),
                                        widths=widths, steps=5, seeds=seeds, batch_size=16, etas=[1e-4])
    slope = slopes(adam)
    assert slope["[Linear]"] > 0.25 and slope["[output]"] > 0.5, adam.table()


def test_coordcheck_command_accepts_a_factory_spec(tmp_path, capsys):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(small_spec(parametrization="muP", width=16)))
    assert coordcheck.main([str(path), "--widths", "16,32", "--steps", "2", "--seeds", "1", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "blocks.0.qkv" in out and "[Linear]" in out and "head" in out
