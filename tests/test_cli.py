"""The ``scgm-scvi`` command line: ``demo --quick`` end to end, and its input checks."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scgm_scvi
from scgm_scvi import cli

OUTPUTS = ("generated.h5ad", "metrics.md", "umap_real_vs_generated.png")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    status = cli.main(["demo", "--out", str(out), "--quick", "--seed", "3"])
    return out, status


def test_demo_quick_writes_outputs(demo_dir):
    out, status = demo_dir
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    png = (out / "umap_real_vs_generated.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_demo_generates_the_test_composition(demo_dir):
    out, _ = demo_dir
    real = scgm_scvi.data.pbmc3k()
    _, test_idx = cli.stratified_split(real.obs["cell_type"], 0.2, seed=3)
    expected = real.obs["cell_type"].iloc[test_idx].value_counts()
    generated = ad.read_h5ad(out / "generated.h5ad")
    assert generated.n_obs == len(test_idx)
    got = generated.obs["cell_type"].value_counts()
    pd.testing.assert_series_equal(
        got.reindex(expected.index).astype(int), expected.astype(int), check_names=False
    )
    assert list(generated.var_names) == list(real.var_names)
    assert sp.issparse(generated.X) and generated.X.format == "csr"
    assert generated.X.data.min() >= 0
    np.testing.assert_array_equal(generated.X.data, np.round(generated.X.data))
    assert generated.obsm["X_scgm"].shape[0] == generated.n_obs
    assert generated.uns["scgm"]["seed"] == 3


def test_demo_metrics_summary(demo_dir):
    out, _ = demo_dir
    text = (out / "metrics.md").read_text()
    assert "Pearson r" in text
    for cell_type in ("Naive CD4 T", "CD14+ Mono", "B", "Platelet"):
        assert f"| {cell_type} |" in text
    # round(0.2 * 697) = 139 Naive CD4 T test cells, as many generated
    assert "| Naive CD4 T | 139 | 139 |" in text
    # the protocol-G1 table of scgm_scvi.metrics.evaluate
    assert "mmd_rbf" in text and "w2" in text
    assert "evaluate failed" not in text
    overall = float(text.split("All cells: Pearson r = ")[1].split(".\n")[0])
    assert -1.0 <= overall <= 1.0


def test_demo_refuses_to_overwrite(demo_dir, capsys):
    out, _ = demo_dir
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    status = cli.main(["demo", "--out", str(out), "--quick"])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "not empty" in err and "--overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--n-cells", "0"], "positive integer"),
        (["demo", "--max-epochs", "-5"], "positive integer"),
        (["demo", "--diffusion-max-epochs", "two"], "positive integer"),
        (["demo", "--seed", "-1"], "integer >= 0"),
        (["demo"], "--out"),
        ([], "COMMAND"),
        (["fly"], "invalid choice"),
    ],
)
def test_bad_arguments(argv, message, tmp_path, capsys):
    if argv[:1] == ["demo"] and "--out" not in argv and len(argv) > 1:
        argv = [*argv, "--out", str(tmp_path / "x")]
    status = cli.main(argv)
    assert status == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "x").exists()  # nothing written on bad input


def test_out_is_a_file(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert cli.main(["demo", "--out", str(target), "--quick"]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert target.read_text() == "x"


def test_prepare_out_dir(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(cli.CLIError, match="not empty"):
        cli._prepare_out_dir(tmp_path, overwrite=False)
    cli._prepare_out_dir(tmp_path, overwrite=True)  # allowed with --overwrite
    cli._prepare_out_dir(tmp_path / "new" / "nested", overwrite=False)
    assert (tmp_path / "new" / "nested").is_dir()


def test_help_lists_demo(capsys):
    assert cli.main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert cli.main(["demo", "--help"]) == 0
    assert "--quick" in capsys.readouterr().out


def test_stratified_split():
    labels = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 2 + ["d"])
    train, test = cli.stratified_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(83))
    test_counts = pd.Series(labels[test]).value_counts().to_dict()
    assert test_counts == {"a": 10, "b": 6, "c": 1}  # "d" has one cell: train only
    again_train, again_test = cli.stratified_split(labels, 0.2, seed=0)
    np.testing.assert_array_equal(again_test, test)
    _, other = cli.stratified_split(labels, 0.2, seed=1)
    assert not np.array_equal(other, test)


def test_split_counts():
    props = pd.Series({"A": 139, "B": 97, "C": 3})
    assert cli.split_counts(props, 239) == {"A": 139, "B": 97, "C": 3}
    split = cli.split_counts(props, 50)
    assert sum(split.values()) == 50 and split["A"] > split["B"] > split.get("C", 0)
    assert cli.split_counts(props, 1) == {"A": 1}


def test_gene_mean_pearson():
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(rng.poisson(rng.gamma(1.0, 2.0, size=50), size=(200, 50)).astype(float))
    a = ad.AnnData(X[:100])
    b = ad.AnnData(X[100:])
    assert cli.gene_mean_pearson(a, a) == pytest.approx(1.0)
    assert 0.9 < cli.gene_mean_pearson(a, b) < 1.0
    shuffled = ad.AnnData(sp.csr_matrix(X[100:].toarray()[:, rng.permutation(50)]))
    assert cli.gene_mean_pearson(a, shuffled) < 0.9


def test_runtime_error_is_one_line(tmp_path, capsys, monkeypatch):
    def broken():
        raise OSError("bundled file missing\nsecond line")

    monkeypatch.setattr(scgm_scvi.data, "pbmc3k", broken)
    assert cli.main(["demo", "--out", str(tmp_path / "out"), "--quick"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "scgm-scvi demo: error: OSError: bundled file missing"
