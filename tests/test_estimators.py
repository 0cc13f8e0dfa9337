"""Mutual-information estimators against data whose MI is known in closed form."""

import functools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.special import logsumexp, xlogy
from sklearn.metrics import mutual_info_score

from mamba_hubert.analysis.estimators import (
    MIEstimate,
    _heldout_bound,
    _SeedSplit,
    _split,
    _StatisticsNets,
    discrete_mi,
    mine_mi,
    plugin_mi,
    smile_mi,
    xt_mutual_information,
)


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
# I(X;T): MINE and SMILE


@pytest.mark.parametrize(
    "dims, noise_dims, mi",
    [(1, 0, 0.1), (4, 12, 1.0), (3, 0, 2.0), (6, 0, 3.0)],
)
def test_xt_estimators_match_closed_form(dims, noise_dims, mi):
    x, t = correlated_gaussians(10_000, dims, mi, noise_dims)
    est = xt_mutual_information(x, t, seeds=(0,))  # the default budget; one seed keeps the test short
    print(f"dims={dims}+{noise_dims} true={mi:.3f} MINE={est['mine'].mean:.4f} SMILE={est['smile'].mean:.4f}")
    assert abs(est["mine"].mean - mi) <= max(0.15 * mi, 0.1)
    assert abs(est["smile"].mean - mi) <= max(0.10 * mi, 0.1)


def test_xt_estimators_independent_is_zero():
    x, t = correlated_gaussians(10_000, 0, 0.0, noise_dims=32)
    est = xt_mutual_information(x, t, seeds=(0,))
    print(f"independent 32+32 dims: MINE={est['mine'].mean:.4f} SMILE={est['smile'].mean:.4f}")
    assert abs(est["mine"].mean) < 0.05
    assert abs(est["smile"].mean) < 0.05


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


def test_each_seed_stops_on_its_own():
    """Weak dependence and a patience of 2 checks: the seeds stop improving at different steps. Each seed's value
    is the one it has alone, whichever seeds run beside it (one shared early-stopping clock breaks this)."""
    x, t = correlated_gaussians(2_000, 1, 0.05, noise_dims=3)
    settings = {"iterations": 800, "eval_every": 20, "patience": 2}
    together = mine_mi(x, t, seeds=(0, 1, 2, 3), **settings)
    alone = [mine_mi(x, t, seeds=(seed,), **settings).values[0] for seed in (0, 1, 2, 3)]
    assert together.values == tuple(alone)


def test_each_member_ignores_the_other_members():
    """A value is the same whether its estimator runs alone or beside the other one, and whether its seed runs
    alone or beside another seed."""
    x, t = correlated_gaussians(2_000, 1, 0.1, noise_dims=3)
    settings = {"iterations": 800, "eval_every": 20, "patience": 2}
    both = xt_mutual_information(x, t, seeds=(0,), **settings)
    assert mine_mi(x, t, seeds=(0,), **settings) == both["mine"]
    assert smile_mi(x, t, seeds=(0,), **settings) == both["smile"]
    two_seeds = smile_mi(x, t, seeds=(0, 1), **settings)
    assert smile_mi(x, t, seeds=(1,), **settings).values == two_seeds.values[1:]
    assert two_seeds.values[0] == both["smile"].values[0]


def test_smile_value_clips_the_partition_term():
    """A critic scoring every pair 7: the DV value is 7 - log e^7 = 0; SMILE's clips e^7 to e^5, giving 2."""
    x, t = correlated_gaussians(500, 1, 0.5)
    xs, ts = torch.from_numpy(x), torch.from_numpy(t)
    split = _SeedSplit(xs, ts, None, 0.2, 0.1, 3, 0, "cpu", False)
    nets = _StatisticsNets(2, 8, [0])
    with torch.no_grad():
        nets.weights[-1].zero_()
        nets.biases[-1].fill_(7.0)
    value = functools.partial(_heldout_bound, nets, 0, split, xs, ts, split.test, split.test_partners)
    assert value(None) == pytest.approx(0.0, abs=1e-5)
    assert value(5.0) == pytest.approx(2.0, abs=1e-5)


def test_xt_rejects_bad_arguments():
    x, t = correlated_gaussians(200, 1, 0.5)
    with pytest.raises(ValueError, match="estimators"):
        xt_mutual_information(x, t, estimators=("mine", "nwj"))
    with pytest.raises(ValueError, match="estimators"):
        xt_mutual_information(x, t, estimators=("mine", "mine"))
    with pytest.raises(ValueError, match="marginals"):
        mine_mi(x, t, marginals="global")
    with pytest.raises(ValueError, match="clip"):
        smile_mi(x, t, clip=0.0)


def test_xt_does_not_change_callers_random_state():
    x, t = correlated_gaussians(500, 1, 0.5)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    xt_mutual_information(x, t, iterations=20, eval_every=10, seeds=(0,))
    assert torch.equal(torch.rand(3), expected)


def test_within_group_and_pooled_marginals():
    """x and t share only their group's offset (40 groups on a grid, 100 frames each). Within-group marginals see
    no dependence. Pooled marginals see the group identity: the test split holds 8 whole groups, so the pooled
    value approaches log 8."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 100)
    offset = 10.0 * np.stack([groups % 8, groups // 8], 1)
    x = (offset + rng.standard_normal((4000, 2))).astype(np.float32)
    t = (offset + rng.standard_normal((4000, 2))).astype(np.float32)
    assert len(np.unique(groups[_split(np.arange(4000), 0.2, groups, np.random.default_rng(0))[1]])) == 8
    within = xt_mutual_information(x, t, groups=groups, seeds=(0,))
    pooled = xt_mutual_information(x, t, groups=groups, marginals="pooled", seeds=(0,), iterations=2000)
    for name in ("mine", "smile"):
        print(f"{name} group offsets: within groups {within[name].mean:.4f}, pooled {pooled[name].mean:.4f}")
        assert abs(within[name].mean) < 0.05
        assert pooled[name].mean > 1.5


def test_split_holds_out_whole_groups():
    groups = np.repeat(np.arange(20), 50)
    kept, held = _split(np.arange(1000), 0.2, groups, np.random.default_rng(0))
    assert set(groups[kept]).isdisjoint(groups[held])
    assert len(kept) + len(held) == 1000 and 150 <= len(held) <= 250
    kept, held = _split(np.arange(1000), 0.2, None, np.random.default_rng(0))
    assert len(held) == 200 and np.intersect1d(kept, held).size == 0


# ---------------------------------------------------------------------------------------------------------------
# discrete labels


def noisy_copy_information(k: int, p: float) -> float:
    """I(A;Y) in nats when y is uniform over k labels and a = y with probability p, else a fresh uniform label."""
    same, other = p + (1 - p) / k, (1 - p) / k
    return math.log(k) + same * math.log(same) + (k - 1) * xlogy(other, other)


def noisy_copy(n: int, k: int, p: float, seed: int = 0):
    """n draws of the noisy copy above. Returns a, y, exact I(A;Y)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(k, size=n)
    a = np.where(rng.random(n) < p, y, rng.integers(k, size=n))
    return a, y, noisy_copy_information(k, p)


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


def undersampled_codes(p: float, n: int = 8_000, k: int = 10, seed: int = 0):
    """Frames T that determine a noisy copy A of uniform labels Y over k classes: well-separated one-hot A plus
    small noise in k dimensions, so that 100 k-means codes split each class into sub-clusters that carry no
    information beyond A, and I(T;Y) = I(A;Y). With k = 10 and the default held-out fifth, codes x labels (1,000)
    approach the held-out frame count (1,600). Returns t, y, exact I(T;Y)."""
    a, y, true = noisy_copy(n, k, p, seed)
    t = 10.0 * np.eye(k)[a] + 0.1 * np.random.default_rng(seed + 1).standard_normal((n, k))
    return t, y, true


# the noisy-copy probability that gives I(A;Y) = 1.13 nats over 10 labels
P_113 = brentq(lambda p: noisy_copy_information(10, p) - 1.13, 0.01, 0.99)


@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_plugin_default_is_safe_on_undersampled_codes(data_seed):
    """100 codes x 10 labels on 1,600 held-out frames: the Miller-Madow value alone is far above the truth
    (positive control), the shuffle correction alone removes only part of that, and the default (codes capped at
    8 held-out frames per cell, then the shuffle correction) is within 0.05 nats."""
    t, y, true = undersampled_codes(P_113, seed=data_seed)
    raw = discrete_mi(t, y, bias_correction="none", min_cell_count=0)
    shuffled = discrete_mi(t, y, min_cell_count=0)
    default = discrete_mi(t, y)
    print(f"plug-in, true={true:.4f}: 100 codes {raw.mean:.4f}, + shuffle {shuffled.mean:.4f}, default "
          f"{default.mean:.4f}")
    assert raw.mean > true + 0.1
    assert abs(shuffled.mean - true) < 0.5 * (raw.mean - true)
    assert abs(default.mean - true) < 0.05


def test_plugin_shuffle_correction_removes_the_bias_of_independent_labels():
    t, y, true = undersampled_codes(0.0)
    raw = discrete_mi(t, y, bias_correction="none", min_cell_count=0)
    corrected = discrete_mi(t, y)
    print(f"plug-in, independent labels: none={raw.mean:.4f} shuffle={corrected.mean:.4f}")
    assert true == pytest.approx(0.0) and raw.mean > 0.08
    assert abs(corrected.mean) < 0.03  # a few standard errors of the seed mean here


def test_discrete_mi_rejects_bad_arguments():
    t, y, _ = undersampled_codes(0.5, n=200)
    with pytest.raises(ValueError, match="bias_correction"):
        discrete_mi(t, y, bias_correction="jackknife")
    with pytest.raises(ValueError, match="n_shuffles"):
        discrete_mi(t, y, n_shuffles=0)
    with pytest.raises(ValueError, match="min_cell_count"):
        discrete_mi(t, y, min_cell_count=-1)


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
