"""python -m raysweep.coordcheck on a model factory's spec: the transformer's layer types are flat under muP and
grow with width under SP (Adam at a fixed eta)."""

import yaml

from raysweep import coordcheck
from raysweep.space import parse_spec
from tests.support import ROOT


def small_spec(**space):
    raw = yaml.safe_load((ROOT / "search_spaces" / "custom_transformer.yaml").read_text())
    raw["experiment"]["kwargs"] = {"vocab": 16, "context": 16, "n_train": 64, "n_test": 16}
    raw["space"].update(space)
    return raw


def test_transformer_coord_check_flat_under_mup():
    spec = parse_spec(small_spec(width=[32, 256]))
    checks = {c.config["parametrization"]: c for c in coordcheck.run_factory_spec(spec, widths=(32, 64, 128, 256), steps=5, seeds=(0, 1, 2),
                                                               batch_size=16, etas=[0.01])}
    types = {"[Embedding]", "[LayerNorm]", "[Linear]", "[output]"}
    mup, sp = checks["muP"], checks["SP"]
    assert mup.error is None and types <= set(mup.layers)
    slope = dict(zip(mup.layers, mup.slopes))
    assert all(abs(slope[t]) < 0.1 for t in types), mup.table()
    slope = dict(zip(sp.layers, sp.slopes))
    assert slope["[Linear]"] > 0.35 and slope["[output]"] > 0.2, sp.table()


def test_coordcheck_command_accepts_a_factory_spec(tmp_path, capsys):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(small_spec(parametrization="muP", width=16)))
    assert coordcheck.main([str(path), "--widths", "16,32", "--steps", "2", "--seeds", "1", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "blocks.0.qkv" in out and "[Linear]" in out and "head" in out
