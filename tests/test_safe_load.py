"""Loading a model never runs code from its files; older (pickled) saves still load on request."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_adata

import scgm_scvi
from scgm_scvi import cli
from scgm_scvi.model._persist import MANIFEST_FNAME, _sha256
from scgm_scvi.model._safe_state import decode, encode

LEGACY = Path(__file__).parent / "data" / "legacy_v0.1"


class _Payload:
    """Unpickling this writes a marker file: what a booby-trapped model would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def _booby_trap(model_dir: Path, marker: Path, with_manifest: bool) -> None:
    """Put a payload into a saved model's attributes and, optionally, a matching manifest."""
    model_file = model_dir / "model.pt"
    saved = torch.load(model_file, weights_only=True)
    saved["attr_dict"]["run_name_"] = _Payload(str(marker))
    torch.save(saved, model_file)
    manifest = model_dir / MANIFEST_FNAME
    if with_manifest:  # an attacker can recompute the manifest
        content = json.loads(manifest.read_text())
        content["files"]["model.pt"] = {
            "size": os.path.getsize(model_file),
            "sha256": _sha256(str(model_file)),
        }
        manifest.write_text(json.dumps(content))
    else:
        manifest.unlink()


def test_saved_model_file_needs_no_unpickler(trained, tmp_path):
    model, _ = trained
    model.save(str(tmp_path / "m"))
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / "m/model.pt")) == []


@pytest.mark.parametrize("with_manifest", [True, False])
def test_booby_trapped_model_is_refused_without_running_code(
    trained, tmp_path, capsys, with_manifest
):
    model, adata = trained
    target, marker = tmp_path / "m", tmp_path / "marker.txt"
    model.save(str(target))
    _booby_trap(target, marker, with_manifest)
    with pytest.raises(ValueError, match="could run code from the file"):
        scgm_scvi.SCGM.load(str(target))
    with pytest.raises(ValueError, match="could run code from the file"):
        scgm_scvi.SCGM.load_query_data(adata.copy(), str(target))
    status = cli.main(["generate", str(target), "--n", "5", "--out", str(tmp_path / "g.h5ad")])
    assert status == 2
    assert "could run code" in capsys.readouterr().err
    assert not marker.exists()


def test_legacy_pickled_save_loads_only_when_allowed(tmp_path):
    """A model saved by scgm_scvi 0.1 (pickled attributes) is refused by default, loads with
    ``allow_pickle=True`` and generates the cells that 0.1 generated; saving it again converts
    it to the safe format."""
    with pytest.raises(ValueError, match="allow_pickle=True"):
        scgm_scvi.SCGM.load(str(LEGACY / "model"))
    with pytest.warns(UserWarning, match="full unpickler"):
        model = scgm_scvi.SCGM.load(str(LEGACY / "model"), allow_pickle=True)
    expected = np.load(LEGACY / "generated.npz", allow_pickle=False)
    # 0.1's default sampler, named (the default is now "dpmpp_2m_sde")
    cells = model.generate(n=None, cell_type={"label_0": 10, "label_2": 6}, seed=3, sampler="ode")
    np.testing.assert_array_equal(cells.X.toarray(), expected["X"])
    np.testing.assert_allclose(cells.obsm["X_scgm"], expected["z"], rtol=1e-5, atol=1e-6)
    model.save(str(tmp_path / "converted"))
    again = scgm_scvi.SCGM.load(str(tmp_path / "converted"))
    cells2 = again.generate(n=None, cell_type={"label_0": 10, "label_2": 6}, seed=3, sampler="ode")
    np.testing.assert_array_equal(cells2.X.toarray(), expected["X"])


def test_round_trip_keeps_attributes(trained, tmp_path):
    model, _ = trained
    model.save(str(tmp_path / "m"))
    loaded = scgm_scvi.SCGM.load(str(tmp_path / "m"))
    pd.testing.assert_frame_equal(loaded.condition_table_, model.condition_table_)
    assert loaded.conditions_ == model.conditions_
    pd.testing.assert_index_equal(loaded.var_names_, model.var_names_)
    for key, frame in model.history_.items():
        pd.testing.assert_frame_equal(loaded.history_[key], frame)
    registry = loaded.registry_["field_registries"]["labels"]["state_registry"]
    np.testing.assert_array_equal(
        registry["categorical_mapping"],
        model.registry_["field_registries"]["labels"]["state_registry"]["categorical_mapping"],
    )


def test_encode_decode_types(tmp_path):
    frame = pd.DataFrame(
        {
            "i": np.arange(3),
            "f": [0.5, np.nan, 2.0],
            "s": np.array(["a", "b", "c"], dtype=object),
            "c": pd.Categorical(["x", "y", "x"]),
        },
        index=pd.Index(["r0", "r1", "r2"], name="cell"),
    )
    value = {
        "frame": frame,
        "range": pd.RangeIndex(2, 10, 2),
        "names": np.array(["g1", "g2"], dtype=object),
        "unicode": np.array(["u", "vv"]),
        "ints": np.array([[1, 2], [3, 4]], dtype=np.int32),
        "scalar": np.int64(7),
        "slice": slice(1, None, 2),
        "tuple": (1, "a"),
        "set": {"a", "b"},
    }
    path = tmp_path / "x.pt"  # round trip through torch's safe loader
    torch.save(encode(value), path)
    back = decode(torch.load(path, weights_only=True))
    pd.testing.assert_frame_equal(back["frame"], frame)
    pd.testing.assert_index_equal(back["range"], value["range"])
    for key in ("names", "unicode", "ints"):
        np.testing.assert_array_equal(back[key], value[key])
        assert back[key].dtype == value[key].dtype
    assert back["scalar"] == 7 and back["slice"] == value["slice"]
    assert back["tuple"] == (1, "a") and back["set"] == {"a", "b"}
    with pytest.raises(TypeError, match="cannot be saved safely"):
        encode({"fn": pickle.dumps})


def test_legacy_fixture_data_is_synthetic():
    # the committed legacy model was trained on tests' synthetic data: same genes
    assert list(make_adata().var_names[:3]) == list(
        np.load(LEGACY / "generated.npz", allow_pickle=False)["var_names"][:3]
    )
