"""Known-answer tests of scgm_scvi.metrics on small synthetic data."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from scgm_scvi import metrics as M

TYPES = ("A", "B", "C", "D")
N_GENES = 120


@pytest.fixture(autouse=True, scope="module")
def _single_thread_blas():
    # Multithreaded BLAS thrashes on small shared machines; these matrices are tiny.
    with threadpool_limits(1):
        yield


def _profiles(de_fold: float = 6.0, n_marker: int = 10) -> dict[str, np.ndarray]:
    """Fixed per-type expression profiles (the same for every sample drawn)."""
    rng = np.random.default_rng(1234)
    base = rng.gamma(0.8, 1.0, N_GENES) + 0.05
    out = {}
    for i, t in enumerate(TYPES):
        p = base.copy()
        p[i * n_marker : (i + 1) * n_marker] *= de_fold
        out[t] = p / p.sum()
    return out


PROFILES = _profiles()


def make_counts(
    n_per_type: dict[str, int],
    seed: int = 0,
    *,
    profiles: dict[str, np.ndarray] | None = None,
    theta: float = 5.0,
    lib: float = 1500.0,
    prefix: str = "c",
) -> ad.AnnData:
    """Negative-binomial counts with cell-type structure, as a sparse AnnData."""
    profiles = profiles or PROFILES
    rng = np.random.default_rng(seed)
    blocks, labels = [], []
    for t, n in n_per_type.items():
        libs = rng.lognormal(np.log(lib), 0.3, n)
        mu = libs[:, None] * profiles[t][None, :]
        blocks.append(rng.negative_binomial(theta, theta / (theta + mu)))
        labels += [t] * n
    X = np.vstack(blocks).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(labels, categories=list(n_per_type))},
        index=[f"{prefix}{seed}_{i}" for i in range(len(labels))],
    )
    var = pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)])
    return ad.AnnData(sp.csr_matrix(X), obs=obs, var=var)


def assert_unchanged(a: ad.AnnData, before: ad.AnnData) -> None:
    """The AnnData equals its copy taken before a call."""
    assert a.shape == before.shape
    assert (a.X != before.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, before.obs)
    pd.testing.assert_frame_equal(a.var, before.var)
    assert set(a.layers) == set(before.layers)
    assert set(a.obsm) == set(before.obsm)
    assert set(a.uns) == set(before.uns)


def _gaussian_pair(n: int, d: int, shift: np.ndarray, seed: int = 0):
    """Two standard-normal clouds whose sample means differ by exactly ``shift``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(n, d))
    return x - x.mean(0), y - y.mean(0) + shift


# ------------------------------------------------------------------------------------------
# distances
# ------------------------------------------------------------------------------------------


def test_identical_clouds_have_zero_distance():
    x = np.random.default_rng(0).normal(size=(200, 5))
    assert M.wasserstein(x, x, p=1) == pytest.approx(0.0, abs=1e-8)
    assert M.wasserstein(x, x, p=2) == pytest.approx(0.0, abs=1e-6)
    assert M.mmd_linear(x, x) == pytest.approx(0.0, abs=1e-12)
    assert M.mmd_rbf(x, x) == pytest.approx(0.0, abs=1e-12)
    assert M.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert M.energy_distance(x, x, squared=True) == pytest.approx(0.0, abs=1e-9)
    assert M.energy_distance(x, x, squared=False) == pytest.approx(0.0, abs=1e-9)


def test_gaussian_shift_known_answers():
    # N(0, I) vs N(m, I) in 3-D with ||m|| = 3: W1 = W2 = ||m||, Fréchet = ||m||^2.
    # Empirical OT between finite samples adds a small positive bias: tolerance 4 %.
    m = np.array([3.0, 0.0, 0.0])
    x, y = _gaussian_pair(1000, 3, m)
    w1, w2 = M.wasserstein(x, y, p=1), M.wasserstein(x, y, p=2)
    assert w1 == pytest.approx(3.0, rel=0.04)
    assert w2 == pytest.approx(3.0, rel=0.04)
    # Lower bounds that hold exactly: W2 >= W1 >= ||mean difference||.
    assert w2 >= w1 - 1e-9
    assert w1 >= 3.0 - 1e-9
    assert M.frechet_distance(x, y) == pytest.approx(9.0, rel=0.04)
    assert M.mmd_linear(x, y) == pytest.approx(9.0, rel=1e-9)
    # The squared-distance E-statistic (V-statistic) is exactly 2 ||mean difference||^2.
    assert M.energy_distance(x, y, squared=True) == pytest.approx(18.0, rel=1e-9)
    # The Euclidean energy distance is positive and smaller than 2 ||m||.
    assert 0.0 < M.energy_distance(x, y, squared=False) < 6.0


def test_mmd_rbf_matches_closed_form():
    # For N(0, I) vs N(m, I) in d dims and k = exp(-|a-b|^2 / (2 s^2)):
    # MMD^2 = 2 (s^2 / (s^2 + 2))^(d/2) (1 - exp(-|m|^2 / (2 (s^2 + 2)))) = 0.1023 here, while
    # the other common convention exp(-|a-b|^2 / s^2) would give 0.0725.
    # Exact sample means remove most Monte-Carlo noise (seeds 0-7 stay within 0.008).
    d, s, m = 2, 1.0, np.array([1.0, 0.0])
    x, y = _gaussian_pair(2000, d, m)
    expected = 2 * (s**2 / (s**2 + 2)) ** (d / 2) * (1 - np.exp(-(m @ m) / (2 * (s**2 + 2))))
    assert M.mmd_rbf(x, y, sigmas=(s,), biased=False) == pytest.approx(expected, abs=0.012)
    # The sum over bandwidths is the mean times their number (CFGen's convention).
    mean = M.mmd_rbf(x, y)
    assert M.mmd_rbf(x, y, reduction="sum") == pytest.approx(5 * mean, rel=1e-12)


def test_subsampling_is_seeded():
    x = np.random.default_rng(0).normal(size=(300, 2))
    y = np.random.default_rng(1).normal(size=(300, 2)) + 1.0
    a = M.wasserstein(x, y, max_cells=100, seed=0)
    assert a == M.wasserstein(x, y, max_cells=100, seed=0)
    assert a != M.wasserstein(x, y, max_cells=100, seed=1)


def test_distance_input_errors():
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match="different dimensions"):
        M.wasserstein(x, np.zeros((10, 2)))
    with pytest.raises(ValueError, match="`p` must be 1 or 2"):
        M.wasserstein(x, x, p=3)
    with pytest.raises(ValueError, match="NaN"):
        M.mmd_linear(np.full((3, 3), np.nan), x)
    with pytest.raises(ValueError, match="positive bandwidths"):
        M.mmd_rbf(x, x, sigmas=(0.0,))


# ------------------------------------------------------------------------------------------
# discriminators
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rf", "knn"])
def test_discriminator_auc_separable_and_indistinguishable(method):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(600, 5))
    same = rng.normal(size=(600, 5))
    far = rng.normal(size=(600, 5)) + np.array([20.0, 0, 0, 0, 0])
    kw = {"n_estimators": 100, "seed": 0}
    assert M.discriminator_auc(real, far, method, **kw) > 0.99
    # Held-out AUC over 300 cells: standard error about 0.03.
    assert abs(M.discriminator_auc(real, same, method, **kw) - 0.5) < 0.1
    assert abs(M.discriminator_auc(real, same, method, cv=5, **kw) - 0.5) < 0.08


def test_discriminator_rejects_mismatched_features():
    with pytest.raises(ValueError, match="different numbers of features"):
        M.discriminator_auc(np.zeros((20, 3)), np.zeros((20, 4)))


# ------------------------------------------------------------------------------------------
# reference embedding (G1)
# ------------------------------------------------------------------------------------------


def test_reference_embedding_fit_and_projection():
    real = make_counts({"A": 200, "B": 200, "C": 200}, seed=0)
    gen = make_counts({"A": 30, "B": 30}, seed=1)
    real_before, gen_before = real.copy(), gen.copy()
    emb = M.reference_embedding(real, gen, n_top_genes=50, n_comps=10)
    assert len(emb.hvg) == 50 and emb.n_comps == 10
    # The 30 marker genes of the three types (g0-g29) are enriched among the 50 HVGs.
    assert len({f"g{j}" for j in range(30)} & set(emb.hvg)) >= 25
    # Projecting the real cells reproduces the fit; PC variances decrease.
    np.testing.assert_allclose(emb.transform(real), emb.real_coords, atol=1e-9)
    assert np.all(np.diff(emb.real_coords.var(axis=0)) <= 1e-9)
    # Genes are matched by name: permuted columns and an extra gene give the same projection.
    perm = np.random.default_rng(0).permutation(N_GENES)
    extra = ad.AnnData(gen.X[:, :1], obs=gen.obs, var=pd.DataFrame(index=["extra"]))
    shuffled = ad.concat([gen[:, perm], extra], axis=1, merge="same")
    np.testing.assert_allclose(emb.transform(shuffled), emb.transform(gen), atol=1e-9)
    assert_unchanged(real, real_before)
    assert_unchanged(gen, gen_before)
    with pytest.raises(ValueError, match="lacks 1 of the"):
        emb.transform(gen[:, 1:])
    # 600 cells x 120 genes: scikit-learn's randomized solver, whose U*S differs from the
    # projection by up to 0.2 here; the stored real coordinates must be the projection.
    emb_all = M.reference_embedding(real, n_top_genes=None, n_comps=10)
    np.testing.assert_allclose(emb_all.transform(real), emb_all.real_coords, atol=1e-9)


def test_too_many_components_are_reduced_with_a_warning():
    real = make_counts({"A": 8}, seed=0)
    with pytest.warns(UserWarning, match="principal components"):
        emb = M.reference_embedding(real, n_comps=30)
    assert emb.n_comps == 7


# ------------------------------------------------------------------------------------------
# input checks
# ------------------------------------------------------------------------------------------


def test_genes_are_aligned_by_name():
    real = make_counts({"A": 40, "B": 40}, seed=0)
    gen = make_counts({"A": 40, "B": 40}, seed=1)
    ref = M.evaluate(real, gen, metrics=["g1", "fred"])
    # Same generated cells with permuted genes plus 3 genes the real data does not have.
    perm = np.random.default_rng(1).permutation(N_GENES)
    extra = ad.AnnData(
        sp.csr_matrix(np.ones((gen.n_obs, 3), dtype=np.float32)),
        obs=gen.obs,
        var=pd.DataFrame(index=["x1", "x2", "x3"]),
    )
    gen2 = ad.concat([gen[:, perm], extra], axis=1, merge="same")
    with pytest.warns(UserWarning, match="3 of 123 genes .* were dropped"):
        out = M.evaluate(real, gen2, metrics=["g1", "fred"])
    pd.testing.assert_frame_equal(out, ref, rtol=1e-9, atol=1e-9)
    disjoint = gen.copy()
    disjoint.var_names = [f"other{j}" for j in range(N_GENES)]
    with pytest.raises(ValueError, match="share no gene names"):
        M.evaluate(real, disjoint)


def test_log_normalised_input_is_flagged():
    real = make_counts({"A": 30, "B": 30}, seed=0)
    logged = real.copy()
    logged.X = sp.csr_matrix(np.log1p(logged.X.toarray()) - 0.5)
    with pytest.raises(ValueError, match="log-normalised or scaled"):
        M.evaluate(real, logged, metrics=["g1"])
    scaled = real.copy()
    scaled.X = scaled.X * 0.37
    with pytest.warns(UserWarning, match="non-integer values"):
        M.gene_mean_correlation(real, scaled)
    with pytest.raises(ValueError, match="no layer 'counts'"):
        M.gene_mean_correlation(real, real, layer="counts")
    with pytest.raises(ValueError, match="not a column"):
        M.evaluate(real, real, groupby="missing", metrics=["g1"])


# ------------------------------------------------------------------------------------------
# summary statistics
# ------------------------------------------------------------------------------------------


def test_gene_statistics_same_vs_different_distribution():
    real = make_counts({"A": 150}, seed=0)
    same = make_counts({"A": 150}, seed=1)
    other = make_counts({"B": 150}, seed=2)
    corr_same = M.gene_mean_correlation(real, same)
    corr_other = M.gene_mean_correlation(real, other)
    assert corr_same["pearson"] > 0.99 and corr_same["spearman"] > 0.95
    assert corr_other["pearson"] < corr_same["pearson"]
    assert M.gene_variance_correlation(real, real)["pearson"] == pytest.approx(1.0)
    zeros = M.zero_fraction_comparison(real, same)
    assert zeros["mae"] < 0.03 and zeros["pearson"] > 0.98
    # Doubling every count doubles the library sizes: W1 of log1p sizes ~ log(2).
    doubled = real.copy()
    doubled.X = doubled.X * 2
    lib = M.library_size_comparison(real, doubled)
    assert lib["median_ratio"] == pytest.approx(2.0)
    assert lib["w1_log"] == pytest.approx(np.log(2), rel=2e-3)
    assert lib["ks"] > 0.5
    same = M.library_size_comparison(real, real)
    assert same["ks"] == 0.0 and same["w1_log"] == 0.0


# ------------------------------------------------------------------------------------------
# conditional fidelity and novelty
# ------------------------------------------------------------------------------------------


def test_label_agreement_correct_vs_shuffled_labels():
    train = make_counts({"A": 80, "B": 80, "C": 80}, seed=0)
    held_out = make_counts({"A": 60, "B": 60, "C": 60}, seed=1)
    before = held_out.copy()
    good = M.label_agreement(train, held_out, "cell_type", n_top_genes=None)
    assert list(good.index) == ["all", "A", "B", "C"]
    assert good["all"] > 0.95
    shuffled = held_out.copy()
    rng = np.random.default_rng(0)
    shuffled.obs["cell_type"] = rng.permutation(shuffled.obs["cell_type"].to_numpy())
    bad = M.label_agreement(train, shuffled, "cell_type", n_top_genes=None)
    # Chance level for three balanced labels is 1/3; binomial s.e. with 180 cells ~ 0.035.
    assert abs(bad["all"] - 1 / 3) < 0.12
    assert_unchanged(held_out, before)


def test_novelty_flags_copies_of_training_cells():
    train = make_counts({"A": 100, "B": 100}, seed=0)
    test = make_counts({"A": 40, "B": 40}, seed=1)
    fresh = make_counts({"A": 40, "B": 40}, seed=2)
    copies = train[np.r_[0:40, 100:140]].copy()
    kw = {"groupby": "cell_type", "n_top_genes": None, "n_comps": 10}
    out_fresh = M.novelty(train, test, fresh, **kw).set_index(["group", "metric"])["value"]
    out_copy = M.novelty(train, test, copies, **kw).set_index(["group", "metric"])["value"]
    assert 0.8 < out_fresh["all", "novelty_median_ratio"] < 1.25
    assert out_fresh["all", "near_duplicate_share"] < 0.1
    assert out_copy["all", "novelty_median_ratio"] == pytest.approx(0.0, abs=1e-9)
    assert out_copy["all", "near_duplicate_share"] == 1.0
    assert out_copy["A", "near_duplicate_share"] == 1.0


# ------------------------------------------------------------------------------------------
# evaluate()
# ------------------------------------------------------------------------------------------


def test_evaluate_tidy_frame_groups_and_warnings():
    real = make_counts({"A": 40, "B": 40, "C": 40}, seed=0)
    # "D" exists only in the generated cells, "C" has too few generated cells.
    gen = make_counts({"A": 40, "B": 40, "C": 5, "D": 20}, seed=1)
    train = make_counts({"A": 60, "B": 60, "C": 60}, seed=2)
    copies = {k: a.copy() for k, a in (("real", real), ("gen", gen), ("train", train))}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        df = M.evaluate(real, gen, "cell_type", train=train, n_estimators=50, n_top_genes=60)
    messages = " | ".join(str(w.message) for w in rec)
    assert "only in `generated`" in messages and "['D']" in messages
    assert "fewer than 10 cells" in messages and "'C': (40, 5)" in messages
    assert "absent from `train`" in messages
    assert list(df.columns) == ["group", "metric", "value", "protocol"]
    assert set(df["group"]) == {"all", "A", "B", "C", "D", "mean"}
    assert set(df["protocol"]) == {
        "counts", "G1", "FReD", "G2", "stats", "conditional", "novelty"
    }  # fmt: skip
    v = df.set_index(["group", "metric"])["value"]
    assert v["D", "n_real"] == 0 and v["D", "n_generated"] == 20
    assert v["all", "n_generated"] == 105
    # Only A and B are evaluated per group; "mean" averages them.
    w2 = df[df["metric"] == "w2"].set_index("group")["value"]
    assert set(w2.index) == {"all", "A", "B", "mean"}
    assert w2["mean"] == pytest.approx((w2["A"] + w2["B"]) / 2)
    assert set(df.loc[df["metric"] == "rf_auc", "group"]) == {"all"}
    # Generated A/B cells come from the real profiles: the classifier agrees; D never can.
    assert v["A", "label_agreement"] > 0.9
    for k, a in (("real", real), ("gen", gen), ("train", train)):
        assert_unchanged(a, copies[k])


def test_evaluate_ranks_a_matching_generator_above_a_wrong_one():
    real = make_counts({"A": 60, "B": 60}, seed=0)
    good = make_counts({"A": 60, "B": 60}, seed=1)
    # Cells labelled A but drawn from the B profile and vice versa.
    swapped_profiles = {"A": PROFILES["B"], "B": PROFILES["A"]}
    bad = make_counts({"A": 60, "B": 60}, seed=1, profiles=swapped_profiles)
    train = make_counts({"A": 80, "B": 80}, seed=2)
    kw = {"train": train, "metrics": ["g1", "fred", "label_agreement"], "n_top_genes": None}
    v_good = M.evaluate(real, good, **kw).set_index(["group", "metric"])["value"]
    v_bad = M.evaluate(real, bad, **kw).set_index(["group", "metric"])["value"]
    for metric in ("w1", "w2", "mmd_rbf", "frechet"):
        assert v_good["mean", metric] < v_bad["mean", metric]
    assert v_good["mean", "label_agreement"] > 0.95
    assert v_bad["mean", "label_agreement"] < 0.05


def test_evaluate_argument_errors():
    real = make_counts({"A": 20}, seed=0)
    with pytest.raises(ValueError, match="pass `train=`"):
        M.evaluate(real, real, metrics=["novelty"])
    with pytest.raises(ValueError, match="Unknown metric families"):
        M.evaluate(real, real, metrics=["w2"])


def test_summarize_runs_mean_and_sem():
    runs = [
        pd.DataFrame({"group": ["A"], "metric": ["w2"], "value": [v], "protocol": ["G1"]})
        for v in (1.0, 3.0)
    ]
    out = M.summarize_runs(runs)
    assert out.loc[0, "mean"] == 2.0
    assert out.loc[0, "sem"] == pytest.approx(1.0)
    assert out.loc[0, "n"] == 2


# ------------------------------------------------------------------------------------------
# editing
# ------------------------------------------------------------------------------------------


def _edit_data():
    de_genes = np.arange(40, 50)  # not markers of type A
    stim_profile = PROFILES["A"].copy()
    # Different folds per gene, so that the changes vary and Pearson delta is well defined.
    stim_profile[de_genes] *= np.linspace(3.0, 12.0, de_genes.size)
    stim_profile /= stim_profile.sum()
    ctrl = make_counts({"A": 80}, seed=0, prefix="ctrl")
    stim = make_counts({"A": 80}, seed=1, profiles={"A": stim_profile}, prefix="stim")
    pred = make_counts({"A": 80}, seed=2, profiles={"A": stim_profile}, prefix="pred")
    return ctrl, stim, pred, [f"g{j}" for j in de_genes]


def test_mean_expression_known_values():
    a = ad.AnnData(
        sp.csr_matrix(np.array([[1.0, 3.0], [0.0, 2.0]])),
        var=pd.DataFrame(index=["x", "y"]),
    )
    expected = [np.log1p(2500) / 2, (np.log1p(7500) + np.log1p(10000)) / 2]
    np.testing.assert_allclose(M.mean_expression(a).to_numpy(), expected)


def test_top_degs_recover_planted_genes():
    ctrl, stim, _, planted = _edit_data()
    assert set(M.top_degs(stim, ctrl, n=10)) == set(planted)
    assert set(M.top_degs(stim, ctrl, n=10, rank_by="abs_score")) == set(planted)


def test_edit_metrics_known_answers():
    ctrl, stim, pred, planted = _edit_data()
    before = {k: a.copy() for k, a in (("ctrl", ctrl), ("stim", stim), ("pred", pred))}
    # A perfect edit (the real target itself): R2 = 1, Pearson delta = 1, E-distance = 0.
    perfect = M.evaluate_edit(stim, stim, ctrl, n_degs=10).set_index("metric")["value"]
    assert perfect["r2_mean_all"] == pytest.approx(1.0)
    assert perfect["pearson_delta_top_degs"] == pytest.approx(1.0)
    assert perfect["e_distance_top_degs"] == pytest.approx(0.0, abs=1e-9)
    # A fresh sample of the target distribution: close to perfect.
    res = M.evaluate_edit(pred, stim, ctrl, n_degs=10)
    assert set(res.attrs["degs"]) == set(planted)
    good = res.set_index("metric")["value"]
    assert good["r2_mean_top_degs"] > 0.9 and good["pearson_delta_top_degs"] > 0.9
    # The identity baseline (no edit) is far: large E-distance, undefined Pearson delta.
    ident = M.evaluate_edit(ctrl, stim, ctrl, degs=planted).set_index("metric")["value"]
    assert np.isnan(ident["pearson_delta_top_degs"])
    assert ident["e_distance_top_degs"] > 10 * good["e_distance_top_degs"]
    assert ident["energy_distance_top_degs"] > good["energy_distance_top_degs"]
    # The direct functions agree with evaluate_edit.
    assert M.r2_mean(pred, stim, planted) == pytest.approx(good["r2_mean_top_degs"])
    assert M.pearson_delta(pred, stim, ctrl, planted) == pytest.approx(
        good["pearson_delta_top_degs"]
    )
    for k, a in (("ctrl", ctrl), ("stim", stim), ("pred", pred)):
        assert_unchanged(a, before[k])
    with pytest.raises(ValueError, match="not in the shared genes"):
        M.r2_mean(pred, stim, ["nope"])


def test_perturbation_metrics_known_answers():
    """DE-gene overlap, fold-change agreement and the discriminator separate a fresh sample of
    the target from the unedited cells; the split-half ceiling sits beside each metric."""
    ctrl, stim, pred, planted = _edit_data()
    kw = {"n_degs": 10, "n_estimators": 100}
    good = M.evaluate_edit(pred, stim, ctrl, ceiling=True, **kw).set_index("metric")
    ident = M.evaluate_edit(ctrl, stim, ctrl, **kw).set_index("metric")["value"]
    value = good["value"]
    # the ten planted genes are the significant real DEGs; a fresh sample recovers them
    assert value["n_real_degs_fdr"] >= 10
    assert (
        value["deg_overlap_top10"] >= 0.9 and value["deg_overlap_fdr"] > ident["deg_overlap_fdr"]
    )
    assert value["lfc_spearman"] > 0.8 and value["lfc_sign_agreement"] == pytest.approx(1.0)
    assert ident["deg_overlap_top10"] <= 0.3 and ident["lfc_sign_agreement"] < 0.8
    assert np.isnan(ident["lfc_spearman"])  # no change at all: no correlation
    # a classifier tells control from stimulated cells, not two samples of the target
    assert value["discriminator_auc"] < 0.75 < ident["discriminator_auc"]
    assert value["mmd_rbf"] < ident["mmd_rbf"]
    # the ceiling: one half of the real target against the other
    assert good["ceiling"].notna().all()
    assert good.loc["discriminator_auc", "ceiling"] < 0.9
    assert good.loc["deg_overlap_top10", "ceiling"] >= 0.9
    assert "ceiling" not in ident.index


def test_metrics_keep_the_callers_torch_threads():
    """numba / scikit-learn thread pools must not change torch's thread count behind the
    caller's back (it made later training 20x slower on a busy 2-core machine)."""
    import torch

    import scgm_scvi

    adata = scgm_scvi.data.pbmc3k()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        M.label_agreement(adata[:1000], adata[1000:1300], "cell_type")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
