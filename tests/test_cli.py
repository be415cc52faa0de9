"""The ``scgm-scvi`` command line: every subcommand end to end, and its input checks."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import get_args

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

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
    text = capsys.readouterr().out
    assert "--quick" in text
    assert "80 %" in text and "%%" not in text


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


# ------------------------------------------------------------------------------------------
# train / generate / edit / evaluate on a tiny synthetic dataset (a tiny model, seconds)
# ------------------------------------------------------------------------------------------
TINY_ARGS = ["--n-latent", "8", "--n-hidden", "32", "--score-width", "32", "--score-blocks", "2"]
FAST_ARGS = ["--max-epochs", "3", "--diffusion-max-epochs", "4", "--accelerator", "cpu"]


def toy_adata(seed: int = 0) -> ad.AnnData:
    """200 cells x 100 genes of counts, cell types A/B/C, 2 batches, ctrl/stim conditions."""
    rng = np.random.default_rng(seed)
    n_cells, n_genes = 200, 100
    cell_type = np.array(["A", "B", "C"])[np.arange(n_cells) % 3]
    condition = np.where(np.arange(n_cells) % 2 == 0, "ctrl", "stim")
    base = rng.gamma(2.0, 1.0, size=(3, n_genes))
    rate = base[np.arange(n_cells) % 3] * np.where(condition == "stim", 1.5, 1.0)[:, None]
    X = sp.csr_matrix(rng.poisson(rate).astype(np.float32))
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(cell_type),
            "condition": pd.Categorical(condition),
            "batch": pd.Categorical(np.where(np.arange(n_cells) < 100, "b1", "b2")),
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A directory with toy.h5ad and a model trained on it by ``scgm-scvi train``."""
    root = tmp_path_factory.mktemp("cli")
    toy_adata().write_h5ad(root / "toy.h5ad")
    argv = ["train", str(root / "toy.h5ad"), "--out", str(root / "model")]
    argv += ["--labels-key", "cell_type", "--batch-key", "batch", "--covariate", "condition"]
    status = cli.main([*argv, *TINY_ARGS, *FAST_ARGS, "--no-progress"])
    assert status == 0
    return root


def test_augment_adds_cells_of_rare_types(workspace, tmp_path, capsys):
    toy = toy_adata()
    keep = (toy.obs["cell_type"] != "C").to_numpy() | (np.arange(toy.n_obs) < 30)
    toy[keep].copy().write_h5ad(tmp_path / "rare.h5ad")  # C: 10 cells
    out = tmp_path / "aug.h5ad"
    argv = ["augment", str(workspace / "model"), str(tmp_path / "rare.h5ad"), "--out", str(out)]
    assert cli.main([*argv, "--min-cells", "50", "--no-progress"]) == 0
    aug = ad.read_h5ad(out)
    assert aug.obs["cell_type"].value_counts()["C"] == 50
    assert aug.obs["synthetic"].sum() == 40
    assert "wrote 144 real and 40 generated cells" in capsys.readouterr().out
    bad = [*argv[:-1], str(tmp_path / "b.h5ad"), "--per-type", "D=5"]
    assert cli.main(bad) == 2
    assert "unknown cell type 'D'" in one_line_error(capsys)


def test_train_writes_a_loadable_model(workspace):
    model_dir = workspace / "model"
    assert (model_dir / "model.pt").is_file()
    summary = json.loads((model_dir / "scgm_train.json").read_text())
    assert summary["n_cells"] == 200 and summary["vae_epochs"] == 3
    assert summary["kl_warmup_epochs"] == 400  # scVI's default
    assert summary["vae"]["norm"] == "batch" and summary["latent_scaling"] == "global"
    assert summary["conditions"]["condition"] == ["ctrl", "stim"]
    model = scgm_scvi.SCGM.load(str(model_dir))
    assert model.diffusion_trained_ and model.module.n_latent == 8
    assert model.registry_["setup_args"]["categorical_covariate_keys"] == ["condition"]


def test_train_progress_bars_go_to_stderr(workspace, tmp_path, capsys):
    """``scgm-scvi train ... > train.log``: the log gets the summary lines, not the bars."""
    argv = ["train", str(workspace / "toy.h5ad"), "--out", str(tmp_path / "m")]
    assert (
        cli.main([*argv, "--labels-key", "cell_type", *TINY_ARGS, *FAST_ARGS, "--progress"]) == 0
    )
    out, err = capsys.readouterr()
    assert "\r" not in out and "Epoch" not in out
    assert "[scgm-scvi] training stage 1" in out
    assert "Epoch" in err


def test_train_options_reach_the_model(workspace, tmp_path, monkeypatch):
    """``--kl-warmup`` and ``--early-stopping`` reach the VAE's training, ``--norm``,
    ``--latent-scaling`` and ``--score-baseline`` the module, ``--diffusion-batch-size`` stage 2;
    all are recorded."""
    seen = {}
    for stage in ("train_vae", "train_diffusion"):
        original = getattr(scgm_scvi.SCGM, stage)

        def wrapped(self, *args, _original=original, _stage=stage, **kwargs):
            seen[_stage] = kwargs
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(scgm_scvi.SCGM, stage, wrapped)
    argv = ["train", str(workspace / "toy.h5ad"), "--out", str(tmp_path / "m")]
    argv += ["--labels-key", "cell_type", "--kl-warmup", "2", "--latent-scaling", "per_dim"]
    argv += ["--score-baseline", "none", "--norm", "layer", "--early-stopping"]
    argv += ["--diffusion-batch-size", "32"]
    assert cli.main([*argv, *TINY_ARGS, *FAST_ARGS, "--no-progress"]) == 0
    assert seen["train_vae"]["plan_kwargs"] == {"n_epochs_kl_warmup": 2}
    assert seen["train_vae"]["early_stopping"] is True
    assert seen["train_diffusion"]["batch_size"] == 32
    summary = json.loads((tmp_path / "m" / "scgm_train.json").read_text())
    assert summary["kl_warmup_epochs"] == 2 and summary["latent_scaling"] == "per_dim"
    assert summary["score_baseline"] == "none" and summary["vae"]["norm"] == "layer"
    assert summary["diffusion_batch_size"] == 32
    module = scgm_scvi.SCGM.load(str(tmp_path / "m")).module
    assert module.latent_scaling == "per_dim" and module.gaussians is None
    layers = [type(m) for m in module.z_encoder.modules()]
    assert torch.nn.LayerNorm in layers and torch.nn.BatchNorm1d not in layers


def test_stage2_choices_match_the_module():
    """The CLI spells the options out (no torch import for ``--help``); keep them in step."""
    from scgm_scvi.cli._train import LATENT_SCALINGS, SCORE_BASELINES
    from scgm_scvi.module import LatentScaling, ScoreBaseline

    assert LATENT_SCALINGS == get_args(LatentScaling)
    assert SCORE_BASELINES == get_args(ScoreBaseline)


def test_train_and_generate_defaults_match_the_model():
    """The CLI's defaults are written out (no torch import for ``--help``): keep them in step
    with the model's."""
    import inspect

    parser = cli.build_parser()
    train = parser.parse_args(["train", "a.h5ad", "--out", "o"])
    gen = parser.parse_args(["generate", "m", "--out", "o.h5ad"])
    assert train.diffusion_batch_size == (
        inspect.signature(scgm_scvi.SCGM.train_diffusion).parameters["batch_size"].default
    )
    assert gen.sampler == inspect.signature(scgm_scvi.SCGM.generate).parameters["sampler"].default


def test_train_refuses_to_overwrite(workspace, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in (workspace / "model").iterdir()}
    argv = ["train", str(workspace / "toy.h5ad"), "--out", str(workspace / "model")]
    assert cli.main([*argv, *TINY_ARGS, *FAST_ARGS]) == 2
    assert "--overwrite" in one_line_error(capsys)
    assert {p.name: p.stat().st_mtime_ns for p in (workspace / "model").iterdir()} == before


@pytest.mark.parametrize(
    ("case", "extra", "message"),
    [
        ("missing", [], "does not exist"),
        ("toy", ["--labels-key", "celltype"], "--labels-key 'celltype' is not a column"),
        ("toy", ["--covariate", "dose"], "--covariate 'dose' is not a column"),
        ("toy", ["--layer", "counts"], "--layer 'counts' is not a layer"),
        ("log", [], "not raw counts"),
        ("negative", [], "not raw counts"),
        ("csv", [], "must be an .h5ad"),
        ("toy", ["--max-epochs", "0"], "positive integer"),
        ("toy", ["--kl-warmup", "0"], "positive integer"),
        ("toy", ["--latent-scaling", "pca"], "invalid choice: 'pca'"),
        ("toy", ["--score-baseline", "mixture"], "invalid choice: 'mixture'"),
    ],
)
def test_train_bad_input(workspace, tmp_path, capsys, case, extra, message):
    adata = toy_adata()
    if case == "log":
        adata.X = adata.X.log1p()
    elif case == "negative":
        adata.X.data[0] = -1.0
    path = {"missing": tmp_path / "nope.h5ad", "csv": tmp_path / "toy.csv"}.get(
        case, tmp_path / f"{case}.h5ad"
    )
    if case == "csv":
        path.write_text("a,b\n")
    elif case != "missing":
        adata.write_h5ad(path)
    out = tmp_path / "model"
    assert cli.main(["train", str(path), "--out", str(out), *extra]) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()  # nothing written on bad input


def test_generate_counts_per_type(workspace):
    out = workspace / "gen_counts.h5ad"
    argv = ["generate", str(workspace / "model"), "--out", str(out), "--no-progress"]
    assert cli.main([*argv, "--cell-type", "A=30", "--cell-type", "C=12", "--seed", "4"]) == 0
    generated = ad.read_h5ad(out)
    assert generated.obs["cell_type"].value_counts().to_dict() == {"A": 30, "C": 12}
    assert sp.issparse(generated.X) and generated.X.format == "csr"
    np.testing.assert_array_equal(generated.X.data, np.round(generated.X.data))
    assert list(generated.var_names) == [f"g{i}" for i in range(100)]
    assert generated.uns["scgm"]["seed"] == 4
    assert generated.uns["scgm"]["sampler"] == "dpmpp_2m_sde"
    assert generated.uns["scgm"]["posterior_noise"]
    plain = workspace / "gen_plain.h5ad"
    argv = ["generate", str(workspace / "model"), "--out", str(plain), "--no-progress"]
    assert cli.main([*argv, "--n", "5", "--no-posterior-noise"]) == 0
    assert not ad.read_h5ad(plain).uns["scgm"]["posterior_noise"]


def test_generate_options(workspace):
    out = workspace / "gen_opts.h5ad"
    argv = ["generate", str(workspace / "model"), "--out", str(out), "--n", "10"]
    argv += ["--cell-type", "A", "--cell-type", "B", "--covariate", "condition=stim"]
    argv += ["--sampler", "ode_euler", "--n-steps", "5", "--guidance-scale", "2", "--progress"]
    argv += ["--guidance-interval", "0.1", "0.9"]
    assert cli.main([*argv, "--precision", "bf16-mixed"]) == 0
    generated = ad.read_h5ad(out)
    assert generated.obs["cell_type"].value_counts().to_dict() == {"A": 5, "B": 5}
    assert set(generated.obs["condition"]) == {"stim"}
    assert generated.uns["scgm"]["n_steps"] == 5
    assert generated.uns["scgm"]["precision"] == "bf16-mixed"
    assert generated.uns["scgm"]["guidance_scale"] == 2.0
    np.testing.assert_allclose(generated.uns["scgm"]["guidance_interval"], [0.1, 0.9])
    # default: training proportions; same seed, same cells
    again = workspace / "gen_default.h5ad"
    assert cli.main(["generate", str(workspace / "model"), "--out", str(again), "--n", "25"]) == 0
    assert cli.main(["generate", str(workspace / "model"), "--out", str(out), "--n", "25"]) == 2
    assert (
        cli.main(
            ["generate", str(workspace / "model"), "--out", str(out), "--n", "25", "--overwrite"]
        )
        == 0
    )
    a, b = ad.read_h5ad(again), ad.read_h5ad(out)
    assert a.n_obs == 25
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cell-type", "Z"], "unknown cell type 'Z'"),
        (["--cell-type", "A=3", "--cell-type", "B"], "either NAME or NAME=COUNT"),
        (["--cell-type", "A=3", "--n", "5"], "does not match"),
        (["--cell-type", "A=x"], "COUNT must be an integer"),
        (["--covariate", "condition=high"], "unknown condition 'high'"),
        (["--covariate", "dose=1"], "unknown key 'dose'"),
        (["--sampler", "fast"], "invalid choice"),
        (["--n", "-3"], "positive integer"),
    ],
)
def test_generate_bad_input(workspace, tmp_path, capsys, extra, message):
    out = tmp_path / "g.h5ad"
    assert cli.main(["generate", str(workspace / "model"), "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_generate_bad_model_dir(workspace, tmp_path, capsys):
    out = tmp_path / "g.h5ad"
    assert cli.main(["generate", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "does not exist" in one_line_error(capsys)
    assert cli.main(["generate", str(tmp_path), "--out", str(out)]) == 2
    assert "not a model directory" in one_line_error(capsys)
    assert cli.main(["generate", str(workspace / "model"), "--out", str(tmp_path / "g.csv")]) == 2
    assert "must end in .h5ad" in one_line_error(capsys)


def test_edit_selected_cells(workspace):
    out = workspace / "edited.h5ad"
    argv = ["edit", str(workspace / "model"), str(workspace / "toy.h5ad"), "--out", str(out)]
    argv += ["--select", "condition=ctrl", "--target", "condition=stim", "--strength", "0.3"]
    assert cli.main([*argv, "--n-steps", "4", "--no-progress"]) == 0
    edited = ad.read_h5ad(out)
    assert edited.n_obs == 100
    assert set(edited.obs["condition"]) == {"stim"}
    assert set(edited.obs["source_condition"]) == {"ctrl"}
    assert edited.uns["scgm_edit"]["strength"] == 0.3
    assert edited.obsm["X_scgm_edited"].shape == (100, 8)
    # the scGen-style baseline takes its shift from all input cells by default
    shift = workspace / "edited_shift.h5ad"
    argv = ["edit", str(workspace / "model"), str(workspace / "toy.h5ad"), "--out", str(shift)]
    argv += ["--select", "condition=ctrl", "--target", "condition=stim"]
    assert cli.main([*argv, "--method", "latent_shift"]) == 0
    assert ad.read_h5ad(shift).uns["scgm_edit"]["method"] == "latent_shift"


@pytest.mark.parametrize(
    ("case", "extra", "message"),
    [
        ("toy", ["--target", "condition=high"], "unknown condition 'high'"),
        ("toy", ["--target", "dose=1"], "unknown key 'dose'"),
        ("toy", ["--target", "condition"], "expected KEY=VALUE"),
        ("toy", ["--target", "condition=stim", "--select", "condition=none"], "no cell"),
        ("toy", ["--target", "condition=stim", "--strength", "1.5"], "(0, 1]"),
        ("no_batch", ["--target", "condition=stim"], "'batch' is not a column"),
        ("few_genes", ["--target", "condition=stim"], "lacks 50 of the model's 100 genes"),
        ("missing", ["--target", "condition=stim"], "does not exist"),
    ],
)
def test_edit_bad_input(workspace, tmp_path, capsys, case, extra, message):
    path = workspace / "toy.h5ad"
    if case != "toy":
        adata = toy_adata()
        if case == "no_batch":
            del adata.obs["batch"]
        elif case == "few_genes":
            adata = adata[:, :50].copy()
        path = tmp_path / f"{case}.h5ad"
        if case != "missing":
            adata.write_h5ad(path)
    out = tmp_path / "e.h5ad"
    assert cli.main(["edit", str(workspace / "model"), str(path), "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_writes_tables(workspace, capsys):
    real, gen = str(workspace / "toy.h5ad"), str(workspace / "gen_counts.h5ad")
    md = workspace / "metrics.md"
    argv = ["evaluate", real, gen, "--out", str(md), "--metrics", "g1", "stats"]
    assert cli.main([*argv, "--min-cells", "5"]) == 0
    text = md.read_text()
    assert "| group" in text and "| A " in text and "mmd_rbf" in text
    printed = capsys.readouterr()
    assert "warning: Groups present only in `real`" in printed.err  # B: no cells
    # the terminal gets the headline metrics of the overall rows; the file has everything
    assert "| all " in printed.out and "w2" in printed.out and "| A " not in printed.out
    assert "zero_frac_mae" in text and "zero_frac_mae" not in printed.out
    csv = workspace / "metrics.csv"
    argv = ["evaluate", real, gen, "--out", str(csv), "--metrics", "g2", "--groupby", "none"]
    assert cli.main([*argv, "--n-estimators", "20"]) == 0
    table = pd.read_csv(csv)
    assert list(table.columns) == ["group", "metric", "value", "protocol"]
    assert {"pcc", "scc", "rf_auc"} <= set(table["metric"])
    assert cli.main([*argv, "--n-estimators", "20"]) == 2  # exists: --overwrite needed


def test_evaluate_edit(workspace, tmp_path):
    toy = toy_adata()
    toy[toy.obs["condition"] == "stim"].copy().write_h5ad(tmp_path / "stim.h5ad")
    toy[toy.obs["condition"] == "ctrl"].copy().write_h5ad(tmp_path / "ctrl.h5ad")
    out = tmp_path / "edit.csv"
    argv = ["evaluate", str(tmp_path / "stim.h5ad"), str(workspace / "edited.h5ad")]
    argv += ["--control", str(tmp_path / "ctrl.h5ad"), "--out", str(out), "--n-degs", "20"]
    assert cli.main(argv) == 0
    table = pd.read_csv(out)
    assert {"r2_mean_all", "pearson_delta_top_degs"} <= set(table["metric"])
    assert cli.main([*argv[:-4], "--out", str(tmp_path / "g.csv"), "--groupby", "cell_type"]) == 0
    assert set(pd.read_csv(tmp_path / "g.csv")["group"]) == {"A", "B", "C"}


def test_evaluate_edit_selects_cells_by_obs_column(workspace, tmp_path, capsys):
    """One file with both conditions: --select / --control-select replace splitting files."""
    toy = toy_adata()
    toy[toy.obs["condition"] == "stim"].copy().write_h5ad(tmp_path / "stim.h5ad")
    toy[toy.obs["condition"] == "ctrl"].copy().write_h5ad(tmp_path / "ctrl.h5ad")
    toy.write_h5ad(tmp_path / "both.h5ad")
    edited = str(workspace / "edited.h5ad")
    split = ["evaluate", str(tmp_path / "stim.h5ad"), edited, "--control"]
    split += [str(tmp_path / "ctrl.h5ad"), "--out", str(tmp_path / "split.csv")]
    selected = ["evaluate", str(tmp_path / "both.h5ad"), edited, "--select", "condition=stim"]
    selected += ["--control-select", "condition=ctrl", "--out", str(tmp_path / "sel.csv")]
    assert cli.main(split) == 0 and cli.main(selected) == 0
    a, b = pd.read_csv(tmp_path / "split.csv"), pd.read_csv(tmp_path / "sel.csv")
    pd.testing.assert_frame_equal(a, b)
    capsys.readouterr()
    bad = [*selected[:-2], "--out", str(tmp_path / "bad.csv"), "--select", "condition=STIM"]
    assert cli.main(bad) == 2
    assert "['STIM'] not in REAL.obs['condition']" in one_line_error(capsys)
    assert cli.main([*bad[:-1], "stim=x"]) == 2
    assert "--select 'stim'" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--groupby", "celltype"], "--groupby 'celltype' is not a column of REAL"),
        (["--metrics", "novelty"], "need the real training cells"),
        (["--metrics", "fid"], "invalid choice"),
    ],
)
def test_evaluate_bad_input(workspace, tmp_path, capsys, extra, message):
    out = tmp_path / "m.md"
    argv = ["evaluate", str(workspace / "toy.h5ad"), str(workspace / "gen_counts.h5ad")]
    assert cli.main([*argv, "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_refuses_normalised_data(workspace, tmp_path, capsys):
    adata = toy_adata()
    adata.X = adata.X.multiply(1 / adata.X.sum(axis=1)).tocsr()
    adata.write_h5ad(tmp_path / "norm.h5ad")
    argv = ["evaluate", str(workspace / "toy.h5ad"), str(tmp_path / "norm.h5ad")]
    assert cli.main([*argv, "--out", str(tmp_path / "m.md")]) == 2
    assert "GENERATED X is not raw counts" in one_line_error(capsys)


@pytest.mark.parametrize("command", ["train", "generate", "edit", "evaluate", "augment", "demo"])
def test_every_command_has_help(command, capsys):
    assert cli.main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "--out" in text and "--overwrite" in text
    for option in {
        "train": ["--labels-key", "--batch-key", "--covariate", "--layer", "--max-epochs"],
        "generate": ["--n", "--cell-type", "--sampler", "--n-steps", "--guidance-scale"],
        "edit": ["--target", "--strength", "--method", "--select", "--guidance-interval"],
        "evaluate": ["--groupby", "--metrics", "--control"],
        "augment": ["--min-cells", "--per-type", "--synthetic-key"],
        "demo": ["--quick"],
    }[command]:
        assert option in text


def test_help_and_version_do_not_import_torch():
    """`--help` / `--version` must not pay for torch and scvi-tools (timed in benchmarks/)."""
    code = (
        "import sys\n"
        "from scgm_scvi import cli\n"
        "for argv in (['--version'], ['--help'], ['train', '--help'], ['evaluate', '--help']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('torch', 'scvi', 'anndata') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout[-500:]


def test_package_attributes_load_on_first_use():
    import scgm_scvi

    assert {"SCGM", "SCGEditor", "metrics", "pl", "data"} <= set(dir(scgm_scvi))
    assert scgm_scvi.SCGM.__name__ == "SCGM" and callable(scgm_scvi.metrics.evaluate)
    with pytest.raises(AttributeError, match="no attribute 'SCGMM'"):
        scgm_scvi.SCGMM  # noqa: B018


def test_warnings_relayed_to_the_user(capsys):
    """One line per warning the user can act on; other libraries' deprecations stay out."""
    torch_file = "/site-packages/torch/utils/_pytree.py"
    cli._show_warning(FutureWarning("LeafSpec is deprecated"), FutureWarning, torch_file, 1)
    cli._show_warning(DeprecationWarning("old"), DeprecationWarning, torch_file, 1)
    assert capsys.readouterr().err == ""
    cli._show_warning(UserWarning("few cells\nmore"), UserWarning, torch_file, 1)
    ours = "/x/scgm_scvi/model/_scgm.py"
    cli._show_warning(FutureWarning("`foo` will change"), FutureWarning, ours, 1)
    assert capsys.readouterr().err.splitlines() == [
        "scgm-scvi: warning: few cells",
        "scgm-scvi: warning: `foo` will change",
    ]
