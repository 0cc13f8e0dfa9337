"""Mutual-information estimators against data whose MI is known in closed form."""

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.metrics import mutual_info_score

from mamba_hubert.analysis.estimators import MIEstimate, _split, discrete_mi, mine_mi, plugin_mi


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The statistics networks are small: one thread is as fast and leaves the other core to parallel jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def correlated_gaussians(n: int, dims: int, mi: float, noise_dims: int = 0, seed: int = 0):
    """x, t with `dims` pairs of correlated standard normals (equal rho) holding `mi` nats in total,
    I = -dims/2 log(1 - rho^2), plus `noise_dims` independent dimensions on each side."""
    rng = np.random.default_rng(seed)
    rho = math.sqrt(1.0 - math.exp(-2.0 * mi / dims)) if dims else 0.0
    x = rng.standard_normal((n, dims))
    t = rho * x + math.sqrt(1.0 - rho**2) * rng.standard_normal((n, dims))
    x = np.concatenate([x, rng.standard_normal((n, noise_dims))], 1)
    t = np.concatenate([t, rng.standard_normal((n, noise_dims))], 1)
    return x.astype(np.float32), t.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# MINE


@pytest.mark.parametrize(
    "dims, noise_dims, mi",
    [(1, 0, 0.1), (4, 12, 1.0), (3, 0, 2.0), (6, 0, 3.0)],
)
def test_mine_matches_closed_form(dims, noise_dims, mi):
    x, t = correlated_gaussians(10_000, dims, mi, noise_dims)
    est = mine_mi(x, t, seeds=(0,))  # the default budget; one seed keeps the test short
    print(f"MINE dims={dims}+{noise_dims} true={mi:.3f} estimated={est.mean:.3f}")
    assert abs(est.mean - mi) <= max(0.15 * mi, 0.1)


def test_mine_independent_is_zero():
    x, t = correlated_gaussians(10_000, 0, 0.0, noise_dims=32)
    est = mine_mi(x, t, seeds=(0,))
    print(f"MINE independent 32+32 dims estimated={est.mean:.4f}")
    assert abs(est.mean) < 0.05


def test_mine_deterministic_and_fresh_network_per_seed():
    x, t = correlated_gaussians(2_000, 2, 1.0)
    settings = {"iterations": 300, "eval_every": 100}
    first = mine_mi(x, t, seeds=(0, 1), **settings)
    again = mine_mi(x, t, seeds=(0, 1), **settings)
    alone = mine_mi(x, t, seeds=(1,), **settings)
    assert first == again
    assert first.values[0] != first.values[1]
    assert alone.values[0] == pytest.approx(first.values[1], abs=1e-5)  # a seed ignores the other seeds
    assert isinstance(first, MIEstimate) and first.unit == "nats"
    assert first.mean == pytest.approx(np.mean(first.values))
    assert first.std == pytest.approx(np.std(first.values, ddof=1))


def test_mine_does_not_change_callers_random_state():
    x, t = correlated_gaussians(500, 1, 0.5)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    mine_mi(x, t, iterations=20, eval_every=10, seeds=(0,))
    assert torch.equal(torch.rand(3), expected)


def test_mine_shuffles_within_groups():
    """x and t share only their group's offset: pooled shuffling sees log(8) nats, within-group shuffling none."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(8), 500)
    offset = 10.0 * groups[:, None]
    x = (offset + rng.standard_normal((4000, 2))).astype(np.float32)
    t = (offset + rng.standard_normal((4000, 2))).astype(np.float32)
    within = mine_mi(x, t, groups=groups, seeds=(0,))
    pooled = mine_mi(x, t, seeds=(0,), iterations=2000)
    print(f"MINE group offsets: within groups {within.mean:.3f}, pooled {pooled.mean:.3f} (log 8 = {math.log(8):.3f})")
    assert abs(within.mean) < 0.05
    assert pooled.mean > 1.5


def test_split_holds_out_whole_groups():
    groups = np.repeat(np.arange(20), 50)
    kept, held = _split(np.arange(1000), 0.2, groups, np.random.default_rng(0))
    assert set(groups[kept]).isdisjoint(groups[held])
    assert len(kept) + len(held) == 1000 and 150 <= len(held) <= 250
    kept, held = _split(np.arange(1000), 0.2, None, np.random.default_rng(0))
    assert len(held) == 200 and np.intersect1d(kept, held).size == 0


# ---------------------------------------------------------------------------------------------------------------
# discrete labels


def noisy_copy(n: int, k: int, p: float, seed: int = 0):
    """y uniform over k labels; a = y with probability p, else a fresh uniform label. Returns a, y, exact I(A;Y)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(k, size=n)
    a = np.where(rng.random(n) < p, y, rng.integers(k, size=n))
    same, other = p + (1 - p) / k, (1 - p) / k
    return a, y, math.log(k) + same * math.log(same) + (k - 1) * other * math.log(other)


@pytest.mark.parametrize("n, k, p", [(20_000, 10, 0.5), (20_000, 20, 0.9), (5_000, 4, 0.1), (5_000, 6, 0.0)])
def test_plugin_mi_exact_discrete(n, k, p):
    a, y, true = noisy_copy(n, k, p)
    est = plugin_mi(a, y)
    print(f"plugin_mi k={k} p={p}: true={true:.4f} estimated={est:.4f}")
    assert abs(est - true) < 0.05


def test_plugin_mi_miller_madow_corrects_small_samples():
    """Independent labels in 10 x 10 cells from 500 samples: the raw plug-in value is biased up by about
    (cells - 1) / 2N; the corrected one is near 0, and differs from the raw one by exactly the correction."""
    rng = np.random.default_rng(0)
    a, b = rng.integers(10, size=500), rng.integers(10, size=500)
    raw = mutual_info_score(a, b)
    cells = len(set(zip(a, b)))
    print(f"plugin_mi independent 10x10, N=500: raw={raw:.4f} corrected={plugin_mi(a, b):.4f}")
    assert raw > 0.05 and abs(plugin_mi(a, b)) < 0.02
    assert plugin_mi(a, b) == pytest.approx(raw + (10 + 10 - cells - 1) / (2 * 500))
    assert plugin_mi(a, b.astype(str)) == pytest.approx(plugin_mi(a, b))  # any hashable labels


@pytest.mark.parametrize("method", ["plugin", "probe"])
def test_discrete_mi_separated_clusters_give_label_entropy(method):
    rng = np.random.default_rng(0)
    y = rng.integers(8, size=10_000)
    t = 10.0 * np.eye(8)[y] + 0.1 * rng.standard_normal((10_000, 8))
    est = discrete_mi(t, y, method=method)
    print(f"discrete_mi {method} separated clusters: true={math.log(8):.4f} estimated={est.mean:.4f}")
    assert abs(est.mean - math.log(8)) < 0.05


def gaussian_classes(n: int, means: np.ndarray, rng: np.random.Generator):
    y = rng.integers(len(means), size=n)
    return means[y] + rng.standard_normal((n, means.shape[1])), y


def exact_class_mi(means: np.ndarray) -> float:
    """I(T;Y) = H(Y) - H(Y|T) for uniform classes N(mean_y, I), H(Y|T) by Monte Carlo with the exact posterior."""
    t, y = gaussian_classes(400_000, means, np.random.default_rng(99))
    log_lik = -0.5 * ((t[:, None, :] - means[None]) ** 2).sum(-1)
    log_post = log_lik - logsumexp(log_lik, 1, keepdims=True)
    return math.log(len(means)) + float(log_post[np.arange(len(y)), y].mean())


@pytest.mark.parametrize("method", ["plugin", "probe"])
def test_discrete_mi_overlapping_gaussian_classes(method):
    """Four overlapping classes in 2-D: both estimators within 0.05 nat of the exact value (~0.37 nats)."""
    means = np.random.default_rng(1).standard_normal((4, 2))
    t, y = gaussian_classes(20_000, means, np.random.default_rng(2))
    true = exact_class_mi(means)
    est = discrete_mi(t, y, method=method)
    print(f"discrete_mi {method} overlapping classes: true={true:.4f} estimated={est.mean:.4f} +- {est.std:.4f}")
    assert abs(est.mean - true) < 0.05


def test_probe_bound_is_tight_for_shared_covariance_classes_in_higher_dimension():
    """Ten classes in 8-D: logistic posteriors are exact here, so the probe is within 0.05 nat; k-means codes lose
    information in 8-D, so the plug-in value is a looser lower bound."""
    means = 0.7 * np.random.default_rng(1).standard_normal((10, 8))
    t, y = gaussian_classes(20_000, means, np.random.default_rng(2))
    true = exact_class_mi(means)
    probe = discrete_mi(t, y, method="probe")
    plugin = discrete_mi(t, y, method="plugin")
    print(f"discrete_mi 10 classes 8-D: true={true:.4f} probe={probe.mean:.4f} plugin={plugin.mean:.4f}")
    assert abs(probe.mean - true) < 0.05
    assert 0.0 < plugin.mean < true


def test_discrete_mi_deterministic_with_groups():
    rng = np.random.default_rng(0)
    y = rng.integers(5, size=3000)
    t = y[:, None] + rng.standard_normal((3000, 3))
    groups = np.repeat(np.arange(30), 100)
    first = discrete_mi(t, y, groups=groups, n_clusters=20)
    assert first == discrete_mi(t, y, groups=groups, n_clusters=20)
    assert len(first.values) == 3 and first.values[0] != first.values[1]
