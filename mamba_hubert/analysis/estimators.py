"""Mutual-information estimators for the layer-wise analysis (all values in nats).

- `xt_mutual_information(x, t)`: dependence between two paired sets of continuous frames, with a small
  statistics network f per estimator: MINE (Belghazi et al. 2018), the Donsker-Varadhan bound
  E_P[f] - log E_Q[e^f] maximised over f, and SMILE (Song & Ermon 2020), f fitted on the Jensen-Shannon
  objective and the DV value reported with e^f clipped. Q, the product of marginals, is sampled within groups
  (utterances) or over the pooled frames (see its docstring for the quantity each choice estimates).
  `mine_mi` and `smile_mi` run one estimator.
- `discrete_mi(t, y)`: I(T;Y) between continuous frames and discrete labels (e.g. frame-level phones), either a
  plug-in estimate on k-means codes of T (its small-sample bias estimated by shuffling the labels) or a
  linear-probe lower bound H(Y) - CE.
- `plugin_mi(a, b)`: I(A;B) between two discrete label arrays, Miller-Madow corrected.

Every estimator is fitted on one part of the frames and evaluated on the held-out rest, and is repeated over
seeds (each seed draws its own split, k-means initialisation or fresh network); `MIEstimate` carries the mean,
the spread and the per-seed values.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from sklearn.cluster import MiniBatchKMeans
from sklearn.linear_model import LogisticRegression

ArrayLike = np.ndarray | torch.Tensor
XTEstimator = Literal["mine", "smile"]
Marginals = Literal["within_group", "pooled"]

# Training budget of the I(X;T) networks (MINE's and SMILE's alike). The MINE paper runs 100 passes of batch 128
# over each utterance (a few hundred steps per utterance); pooled frames need a budget in steps instead. On
# correlated Gaussians (10k frames, batch 128, Adam at lr 1e-4) the validation value climbs steeply for ~2000 steps
# and then creeps up; by 6000 steps it is within ~10% of the closed form up to 3 nats in 10 dimensions
# (tests/test_estimators.py). A network stops earlier once its validation value has not improved for
# DEFAULT_PATIENCE checks, every DEFAULT_EVAL_EVERY steps: with independent X and T the value only falls
# (overfitting), so that stop comes after ~2000 steps.
DEFAULT_MINE_ITERATIONS = 6000
DEFAULT_EVAL_EVERY = 200
DEFAULT_PATIENCE = 10
# SMILE's clip tau (the paper's): e^f is clipped to [e^-tau, e^tau] in the reported value's partition term.
DEFAULT_SMILE_CLIP = 5.0
# Random marginal partners drawn per held-out frame for the held-out log-partition term: more marginal samples
# shrink the (upward) bias of log-mean-exp at no training cost.
DEFAULT_EVAL_SHUFFLES = 10
# Probability mass a probe spreads uniformly over all labels, so a label the fit split never saw costs a finite,
# honest log-loss instead of infinity; any such mixture still gives a valid lower bound.
_PROBE_SMOOTHING = 1e-6
# Label permutations for the plug-in's shuffle correction: their mean's spread is a fifth of one permutation's,
# for 20 cheap label histograms per seed.
DEFAULT_PLUGIN_SHUFFLES = 20
# Held-out frames a code-label cell expects on average, below which the plug-in uses fewer codes: sparse cells bias
# it upward by more than the shuffle correction removes.
DEFAULT_PLUGIN_MIN_CELL_COUNT = 8
_EVAL_CHUNK = 16384
_DRAW_CHUNK = 1000  # training steps whose random draws are made at once


@dataclass(frozen=True)
class MIEstimate:
    """A mutual-information estimate repeated over seeds: mean, sample standard deviation and per-seed values."""

    mean: float
    std: float
    values: tuple[float, ...]
    unit: str = "nats"

    @classmethod
    def from_values(cls, values: Sequence[float]) -> "MIEstimate":
        vals = tuple(float(v) for v in values)
        if not vals:
            raise ValueError("an estimate needs at least one value")
        std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        return cls(mean=float(np.mean(vals)), std=std, values=vals)


# ----------------------------------------------------------------------------------------------------------------
# shared helpers


def _as_frames(a: ArrayLike, name: str) -> torch.Tensor:
    """(N, d) float32 CPU tensor from an array or tensor; a 1-D input is one feature per frame."""
    out = a.detach().cpu() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    if out.dim() == 1:
        out = out[:, None]
    if out.dim() != 2:
        raise ValueError(f"{name} must be (frames, dims), got shape {tuple(out.shape)}")
    return out.float()


def _as_labels(a: ArrayLike | None, n: int, name: str) -> np.ndarray | None:
    if a is None:
        return None
    out = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a).reshape(-1)
    if out.shape[0] != n:
        raise ValueError(f"{name} has {out.shape[0]} entries for {n} frames")
    return out


def _split(
    frames: np.ndarray, fraction: float, groups: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split sorted frame indices into (kept, held) with about `fraction` of them held, both non-empty.

    With two or more groups among `frames`, whole groups are held: neighbouring frames of one utterance are
    near-copies, so a frame-level split would let an overfitted estimator look good on "held" frames.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fractions must be in (0, 1), got {fraction}")
    if len(frames) < 2:
        raise ValueError("too few frames to split")
    codes, counts = (
        (None, None) if groups is None else np.unique(groups[frames], return_inverse=True, return_counts=True)[1:]
    )
    if counts is not None and len(counts) >= 2:
        order = rng.permutation(len(counts))
        # the smallest prefix of groups that reaches the target, leaving at least one group to keep
        n_held = min(int(np.searchsorted(np.cumsum(counts[order]), fraction * len(frames))) + 1, len(counts) - 1)
        held_mask = np.isin(codes, order[:n_held])
    else:
        held_mask = np.zeros(len(frames), dtype=bool)
        held_mask[rng.permutation(len(frames))[: min(max(1, round(fraction * len(frames))), len(frames) - 1)]] = True
    return frames[~held_mask], frames[held_mask]


def _entropy_mm(counts: np.ndarray) -> float:
    """Plug-in entropy (nats) of a histogram plus the Miller-Madow correction (m - 1) / 2N, m = occupied bins."""
    counts = counts[counts > 0]
    n = counts.sum()
    p = counts / n
    return float(-(p * np.log(p)).sum() + (len(counts) - 1) / (2.0 * n))


# ----------------------------------------------------------------------------------------------------------------
# I(X;T): MINE and SMILE


class _PartnerSampler:
    """Maps uniform draws to random partner positions within each position's group (code).

    Pairing x_i with t_j, j a random frame of i's group, samples the product of the group's marginals, as the
    paper does by shuffling frames within an utterance; with a single code it samples the pooled marginals.
    """

    def __init__(self, codes: np.ndarray):
        codes = np.unique(codes, return_inverse=True)[1].astype(np.int64)
        counts = np.bincount(codes)
        self.codes = torch.from_numpy(codes)
        self.order = torch.from_numpy(np.argsort(codes, kind="stable").astype(np.int64))
        self.counts = torch.from_numpy(counts.astype(np.int64))
        self.starts = torch.from_numpy((np.cumsum(counts) - counts).astype(np.int64))

    def sample(self, positions: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        g = self.codes[positions]
        offset = torch.minimum((uniform * self.counts[g]).long(), self.counts[g] - 1)
        return self.order[self.starts[g] + offset]


class _StatisticsNets(torch.nn.Module):
    """One fresh statistics network (critic) per member, Linear(in, hidden)-ReLU-Linear(hidden, hidden)-ReLU-
    Linear(hidden, 1) (the MINE paper's), trained side by side as batched matrix products: the networks share no
    parameter and Adam is element-wise, so each trains exactly as it would alone, at a fraction of the per-step
    overhead. Member i is initialised from seeds[i] alone."""

    def __init__(self, in_dim: int, hidden: int, seeds: Sequence[int]):
        super().__init__()
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        gens = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        for fan_in, fan_out in [(in_dim, hidden), (hidden, hidden), (hidden, 1)]:
            # torch.nn.Linear's default initialisation: weight and bias uniform in +-1/sqrt(fan_in)
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(
                torch.nn.Parameter(
                    torch.stack([(torch.rand(fan_in, fan_out, generator=g) * 2 - 1) * bound for g in gens])
                )
            )
            self.biases.append(
                torch.nn.Parameter(torch.stack([(torch.rand(1, fan_out, generator=g) * 2 - 1) * bound for g in gens]))
            )

    def forward(self, z: torch.Tensor, members: slice = slice(None)) -> torch.Tensor:
        """Scores (S, M) of frames z: (S, M, in_dim), network s scoring z[s]; `members` picks a subset of nets."""
        h = z
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h = torch.relu(torch.baddbmm(b[members], h, w[members]))
        # The output layer as a product and sum rather than a matrix product: a single network's (hidden, 1) matrix
        # product takes a different summation order than a batch's, and the rounding difference would make a
        # network's values depend on how many networks train beside it.
        return (h * self.weights[-1][members].transpose(1, 2)).sum(-1) + self.biases[-1][members][..., 0]


def _log_mean_exp(scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.logsumexp(scores, dim) - math.log(scores.shape[dim])


class _SeedSplit:
    """One seed's frames: train (network fitting; its statistics standardise both sides), validation (choosing
    the training step to keep) and test (the reported value), with fixed marginal pairings for the latter two.
    Groups always decide the splits; they restrict the marginal partners only when `pooled` is False."""

    def __init__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        groups: np.ndarray | None,
        heldout_fraction: float,
        validation_fraction: float,
        eval_shuffles: int,
        seed: int,
        device: str | torch.device,
        pooled: bool,
    ):
        rng = np.random.default_rng(seed)
        rest, self.test = _split(np.arange(x.shape[0]), heldout_fraction, groups, rng)
        self.train, self.val = _split(rest, validation_fraction / (1.0 - heldout_fraction), groups, rng)
        self.partner_groups = None if pooled else groups
        self.gen = torch.Generator().manual_seed(seed)
        self.x_mean, self.x_std = (a.to(device) for a in (x[self.train].mean(0), x[self.train].std(0).clamp_min(1e-8)))
        self.t_mean, self.t_std = (a.to(device) for a in (t[self.train].mean(0), t[self.train].std(0).clamp_min(1e-8)))
        self.val_partners = self._partners(self.val, eval_shuffles)
        self.test_partners = self._partners(self.test, eval_shuffles)

    def partner_codes(self, frames: np.ndarray) -> np.ndarray:
        """Codes within which the given frames find their marginal partners (all 0 for pooled partners)."""
        return np.zeros(len(frames), dtype=np.int64) if self.partner_groups is None else self.partner_groups[frames]

    def member_generator(self) -> torch.Generator:
        """A generator for one member's training draws: a copy of this seed's generator after the evaluation
        pairings, so a member draws the same batches whichever other members train beside it."""
        gen = torch.Generator()
        gen.set_state(self.gen.get_state())
        return gen

    def _partners(self, frames: np.ndarray, shuffles: int) -> torch.Tensor:
        """(shuffles, len(frames)) frame indices: `shuffles` random re-pairings of `frames`."""
        sampler = _PartnerSampler(self.partner_codes(frames))
        every = torch.arange(len(frames)).repeat(shuffles)
        uniform = torch.rand(len(every), generator=self.gen, dtype=torch.float64)
        return torch.from_numpy(frames)[sampler.sample(every, uniform)].reshape(shuffles, len(frames))


@torch.no_grad()
def _heldout_bound(
    nets: _StatisticsNets,
    member: int,
    split: _SeedSplit,
    x: torch.Tensor,
    t: torch.Tensor,
    frames: np.ndarray,
    partners: torch.Tensor,
    clip: float | None,
) -> float:
    """Donsker-Varadhan value of one network on `frames`: mean score of the joint pairs minus the log-mean-exp
    score of the re-paired frames (`partners`); with `clip`, those scores are clipped to [-clip, clip] first,
    i.e. log E_Q[clip(e^f, e^-clip, e^clip)] (SMILE)."""
    device = x.device
    rows = torch.from_numpy(frames).to(device)
    x_rows = (x[rows] - split.x_mean) / split.x_std

    def scores(t_rows: torch.Tensor) -> torch.Tensor:
        t_rows = (t[t_rows] - split.t_mean) / split.t_std
        return torch.cat(
            [
                nets(
                    torch.cat([x_rows[i : i + _EVAL_CHUNK], t_rows[i : i + _EVAL_CHUNK]], 1)[None],
                    slice(member, member + 1),
                )[0]
                for i in range(0, len(rows), _EVAL_CHUNK)
            ]
        )

    marginal = torch.cat([scores(p.to(device)) for p in partners])
    if clip is not None:
        marginal = marginal.clamp(-clip, clip)
    return float(scores(rows).mean() - _log_mean_exp(marginal, 0))


def _train_keep_best(
    nets: _StatisticsNets,
    estimators: Sequence[str],
    splits: Sequence[_SeedSplit],
    xs: torch.Tensor,
    ts: torch.Tensor,
    *,
    lr: float,
    batch_size: int,
    iterations: int,
    ema_rate: float,
    clip: float,
    eval_every: int,
    patience: int | None,
) -> None:
    """Train network i with estimators[i]'s objective on splits[i]'s train frames and leave it in its best state
    on splits[i]'s validation frames (see `xt_mutual_information`)."""
    x_mean, x_std = (torch.stack([getattr(sp, k) for sp in splits])[:, None] for k in ("x_mean", "x_std"))
    t_mean, t_std = (torch.stack([getattr(sp, k) for sp in splits])[:, None] for k in ("t_mean", "t_std"))

    # All members' train frames side by side; a partner is drawn within the same (member, partner code).
    train_all = torch.from_numpy(np.concatenate([sp.train for sp in splits]))
    train_sizes = torch.tensor([len(sp.train) for sp in splits])[:, None]
    train_offsets = torch.cumsum(train_sizes, 0) - train_sizes
    sampler = _PartnerSampler(
        np.concatenate(
            [
                np.unique(sp.partner_codes(sp.train), return_inverse=True)[1] * len(splits) + i
                for i, sp in enumerate(splits)
            ]
        )
    )
    gens = [sp.member_generator() for sp in splits]
    mine = torch.tensor([i for i, e in enumerate(estimators) if e == "mine"], dtype=torch.long)
    smile = torch.tensor([i for i, e in enumerate(estimators) if e == "smile"], dtype=torch.long)

    opt = torch.optim.Adam(nets.parameters(), lr=lr)
    best: list[tuple[float, list[torch.Tensor] | None]] = [(-math.inf, None)] * len(splits)  # (validation value, state)
    # Each member has its own early-stopping clock: a shared one would let the other members decide which of its
    # states is kept. A stopped member's network trains on in the batch, but its kept state no longer changes.
    stale = [0] * len(splits)
    active = list(range(len(splits)))
    log_ema: torch.Tensor | None = None
    log_keep, log_rate = math.log1p(-ema_rate), math.log(ema_rate)
    for step in range(iterations):
        if step % _DRAW_CHUNK == 0:  # each member's own generator, so its draws ignore the other members
            steps = min(_DRAW_CHUNK, iterations - step)
            draws = torch.stack([torch.rand(2, steps, batch_size, generator=g, dtype=torch.float64) for g in gens], 2)
        pos = train_offsets + torch.minimum((draws[0, step % _DRAW_CHUNK] * train_sizes).long(), train_sizes - 1)
        partner = sampler.sample(pos.reshape(-1), draws[1, step % _DRAW_CHUNK].reshape(-1)).reshape(pos.shape)
        rows, partner_rows = train_all[pos].to(xs.device), train_all[partner].to(xs.device)
        xb = (xs[rows] - x_mean) / x_std
        z = torch.cat(
            [torch.cat([xb, (ts[rows] - t_mean) / t_std], 2), torch.cat([xb, (ts[partner_rows] - t_mean) / t_std], 2)],
            1,
        )
        scores = nets(z)
        joint, marginal = scores[:, :batch_size], scores[:, batch_size:]
        losses = []
        if len(mine):
            log_z = _log_mean_exp(marginal[mine])
            # Moving average of E[e^f] in log space (Belghazi et al. 2018, sec. 3.2): the minibatch gradient of
            # log E[e^f] is E[e^f grad f] / E[e^f]; dividing by the moving average instead of the minibatch mean
            # removes most of that ratio's bias.
            detached = log_z.detach()
            log_ema = detached if log_ema is None else torch.logaddexp(log_keep + log_ema, log_rate + detached)
            # gradient: each net's corrected gradient of -(DV bound)
            losses.append((torch.exp(log_z - log_ema) - joint[mine].mean(1)).sum())
        if len(smile):
            # SMILE (Song & Ermon 2020) fits its critic by maximising the Jensen-Shannon f-GAN objective
            # E_P[-softplus(-f)] - E_Q[softplus(f)], whose optimum is f = log p/q and whose minibatch gradients,
            # unlike the DV bound's, carry no high-variance partition term.
            losses.append(
                (
                    torch.nn.functional.softplus(-joint[smile]).mean(1)
                    + torch.nn.functional.softplus(marginal[smile]).mean(1)
                ).sum()
            )
        opt.zero_grad(set_to_none=True)
        sum(losses).backward()
        opt.step()

        if (step + 1) % eval_every == 0 or step + 1 == iterations:
            for i in active:
                sp = splits[i]
                value = _heldout_bound(
                    nets, i, sp, xs, ts, sp.val, sp.val_partners, clip if estimators[i] == "smile" else None
                )
                if value > best[i][0]:
                    best[i] = (value, [p[i].detach().clone() for p in nets.parameters()])
                    stale[i] = 0
                else:
                    stale[i] += 1
            if patience is not None:
                active = [i for i in active if stale[i] < patience]
                if not active:
                    break

    with torch.no_grad():
        for i, (_, params) in enumerate(best):
            for p, kept in zip(nets.parameters(), params):
                p[i] = kept


def xt_mutual_information(
    x: ArrayLike,
    t: ArrayLike,
    *,
    estimators: Sequence[XTEstimator] = ("mine", "smile"),
    hidden: int = 100,
    lr: float = 1e-4,
    batch_size: int = 128,
    iterations: int = DEFAULT_MINE_ITERATIONS,
    ema_rate: float = 0.01,
    clip: float = DEFAULT_SMILE_CLIP,
    heldout_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    eval_every: int = DEFAULT_EVAL_EVERY,
    patience: int | None = DEFAULT_PATIENCE,
    seeds: Sequence[int] = (0, 1, 2),
    groups: ArrayLike | None = None,
    marginals: Marginals = "within_group",
    eval_shuffles: int = DEFAULT_EVAL_SHUFFLES,
    device: str | torch.device = "cpu",
) -> dict[str, MIEstimate]:
    """Dependence between paired frames x: (N, dx) and t: (N, dt) in nats, by each of `estimators` over `seeds`.

    Estimators (one statistics network f per estimator and seed, trained side by side):
    - "mine" (Belghazi et al. 2018): f maximises the Donsker-Varadhan (DV) bound E_P[f] - log E_Q[e^f] with the
      moving-average (`ema_rate`) gradient correction; the reported value is that bound, a lower bound up to
      sampling error.
    - "smile" (Song & Ermon 2020): f maximises the Jensen-Shannon f-GAN objective E_P[-softplus(-f)] -
      E_Q[softplus(f)]; the reported value is the clipped DV value E_P[f] - log E_Q[clip(e^f, e^-clip, e^clip)],
      which trades the DV bound's variance for a bias and is not a bound.
    P is the joint distribution of (x, t) pairs, Q the product of marginals chosen by `marginals`:
    - "within_group" (the paper's shuffling within an utterance): x_i is paired with t_j, j a random frame of i's
      group, so Q(x, t) = sum_u p(u) p(x|u) p(t|u) with U the group (utterance). The value estimates
      KL(p(x,t) || Q), a lower bound on the conditional mutual information I(X;T|U); dependence carried by the
      group identity alone (speaker, channel) is left out. Without groups this is I(X;T).
    - "pooled": the partner is a random frame of the same split, so Q = p(x) p(t) over the pooled frames and the
      value estimates I(X;T) of the pooled frame distribution, group-level dependence included.
    In general neither of the two quantities bounds the other.

    Per seed the frames are split into train / validation / test (`heldout_fraction` test, `validation_fraction`
    validation; whole groups when `groups` has two or more, whatever `marginals`), both sides are z-scored with
    train statistics, and each estimator's fresh network Linear(dx+dt, hidden)-ReLU-Linear(hidden, hidden)-ReLU-
    Linear(hidden, 1) is trained with Adam on random batches of `batch_size` joint pairs and as many marginal pairs
    of the train frames. Every `eval_every` steps each network's value is measured on the validation frames (with
    `eval_shuffles` fixed marginal pairings per frame); a network stops improving its kept state once its value
    has not improved for `patience` measurements, training ends after `iterations` steps or when every network
    has stopped, and each network's best-on-validation state gives the reported value on its untouched test
    frames. Defaults are the MINE paper's (hidden 100, lr 1e-4, batch 128) and SMILE's clip of 5. A value is
    deterministic for its (estimator, seed) and does not depend on the other estimators or seeds in the call.
    """
    xs, ts = _as_frames(x, "x"), _as_frames(t, "t")
    if xs.shape[0] != ts.shape[0]:
        raise ValueError(f"x has {xs.shape[0]} frames, t has {ts.shape[0]}")
    estimators = list(estimators)
    if not estimators or len(set(estimators)) != len(estimators) or not set(estimators) <= {"mine", "smile"}:
        raise ValueError(f"estimators must be distinct names out of 'mine' and 'smile', got {estimators}")
    if not seeds:
        raise ValueError("an I(X;T) estimate needs at least one seed")
    if iterations < 1 or eval_every < 1:
        raise ValueError(f"iterations and eval_every must be positive, got {iterations} and {eval_every}")
    if marginals not in ("within_group", "pooled"):
        raise ValueError(f"marginals must be 'within_group' or 'pooled', got {marginals!r}")
    if not clip > 0:
        raise ValueError(f"clip must be positive, got {clip}")
    group_ids = _as_labels(groups, xs.shape[0], "groups")
    pooled = marginals == "pooled"
    splits = [
        _SeedSplit(xs, ts, group_ids, heldout_fraction, validation_fraction, eval_shuffles, int(s), device, pooled)
        for s in seeds
    ]
    members = [(name, i) for name in estimators for i in range(len(seeds))]  # (estimator, seed position)
    xs, ts = xs.to(device), ts.to(device)
    nets = _StatisticsNets(xs.shape[1] + ts.shape[1], hidden, [int(seeds[i]) for _, i in members]).to(device)
    member_splits = [splits[i] for _, i in members]
    member_estimators = [name for name, _ in members]
    _train_keep_best(
        nets,
        member_estimators,
        member_splits,
        xs,
        ts,
        lr=lr,
        batch_size=batch_size,
        iterations=iterations,
        ema_rate=ema_rate,
        clip=clip,
        eval_every=eval_every,
        patience=patience,
    )
    values = [
        _heldout_bound(nets, m, sp, xs, ts, sp.test, sp.test_partners, clip if name == "smile" else None)
        for m, (sp, name) in enumerate(zip(member_splits, member_estimators))
    ]
    return {
        name: MIEstimate.from_values([v for v, est in zip(values, member_estimators) if est == name])
        for name in estimators
    }


def mine_mi(x: ArrayLike, t: ArrayLike, **options) -> MIEstimate:
    """MINE's Donsker-Varadhan estimate alone: `xt_mutual_information(x, t, estimators=("mine",), **options)`, whose
    docstring says what is estimated (in particular under `marginals`) and which options there are."""
    return xt_mutual_information(x, t, estimators=("mine",), **options)["mine"]


def smile_mi(x: ArrayLike, t: ArrayLike, **options) -> MIEstimate:
    """SMILE's clipped estimate alone: `xt_mutual_information(x, t, estimators=("smile",), **options)`, whose
    docstring says what is estimated (in particular under `marginals`) and which options there are."""
    return xt_mutual_information(x, t, estimators=("smile",), **options)["smile"]


# ----------------------------------------------------------------------------------------------------------------
# discrete labels


def plugin_mi(a: ArrayLike, b: ArrayLike) -> float:
    """I(A;B) in nats between two discrete label arrays: plug-in entropies H(A) + H(B) - H(A,B), each with the
    Miller-Madow correction (m - 1) / 2N (m = occupied cells). The correction removes the first-order
    (1/N) bias of the plug-in estimate, which otherwise overstates MI by about (m_AB - m_A - m_B + 1) / 2N;
    the corrected value can be slightly negative for independent labels. Being first-order, the correction is
    reliable while N is well above the number of joint cells and falls short when most cells hold a few counts."""
    a_np, b_np = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a_np.shape != b_np.shape or a_np.size == 0:
        raise ValueError(f"label arrays must be non-empty and of equal length, got {a_np.size} and {b_np.size}")
    a_codes = np.unique(a_np, return_inverse=True)[1]
    b_codes = np.unique(b_np, return_inverse=True)[1]
    pair_codes = np.unique(a_codes * (b_codes.max() + 1) + b_codes, return_inverse=True)[1]
    return _entropy_mm(np.bincount(a_codes)) + _entropy_mm(np.bincount(b_codes)) - _entropy_mm(np.bincount(pair_codes))


def _plugin_one_seed(
    t_fit: np.ndarray,
    t_held: np.ndarray,
    y_held: np.ndarray,
    n_clusters: int,
    seed: int,
    n_shuffles: int,
    rng: np.random.Generator,
) -> float:
    km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=3, batch_size=4096)
    km.fit(t_fit)
    codes = km.predict(t_held)
    # Against permuted labels (same marginals, no dependence) the plug-in value is pure small-sample bias.
    null = [plugin_mi(codes, rng.permutation(y_held)) for _ in range(n_shuffles)]
    return plugin_mi(codes, y_held) - (float(np.mean(null)) if null else 0.0)


def _probe_one_seed(
    t_fit: np.ndarray, t_held: np.ndarray, y_fit: np.ndarray, y_held: np.ndarray, c: float, n_labels: int
) -> float:
    held_entropy = _entropy_mm(np.unique(y_held, return_counts=True)[1])
    if len(np.unique(y_fit)) < 2:  # nothing to discriminate: the best probe is the constant one
        return 0.0
    probe = LogisticRegression(C=c, max_iter=1000)
    probe.fit(t_fit, y_fit)
    proba = probe.predict_proba(t_held)
    column = np.minimum(np.searchsorted(probe.classes_, y_held), len(probe.classes_) - 1)  # classes_ is sorted
    seen = probe.classes_[column] == y_held
    q = np.where(seen, proba[np.arange(len(y_held)), column], 0.0)
    q = (1.0 - _PROBE_SMOOTHING) * q + _PROBE_SMOOTHING / n_labels
    return held_entropy - float(-np.log(q).mean())


def discrete_mi(
    t: ArrayLike,
    y: ArrayLike,
    *,
    method: Literal["plugin", "probe"] = "plugin",
    n_clusters: int = 100,
    bias_correction: Literal["shuffle", "none"] = "shuffle",
    n_shuffles: int = DEFAULT_PLUGIN_SHUFFLES,
    min_cell_count: float = DEFAULT_PLUGIN_MIN_CELL_COUNT,
    probe_c: float = 1.0,
    heldout_fraction: float = 0.2,
    seeds: Sequence[int] = (0, 1, 2),
    groups: ArrayLike | None = None,
) -> MIEstimate:
    """I(T;Y) in nats between frames t: (N, d) and discrete labels y: (N,) (e.g. frame-level phones).

    Per seed, frames are split into fit / held-out (whole groups held out when `groups` has two or more) and T is
    z-scored with fit-split statistics. Then
    - "plugin": MiniBatchKMeans codes are fitted on the fit split; the held-out frames' codes and labels give
      `plugin_mi` (Miller-Madow corrected). Quantisation can only lose information, so up to the small-sample
      error this is a lower bound that tightens with more codes, while the plug-in error (upward) grows with
      codes x labels / held-out frames. Two guards keep that error small: the codes are at most `n_clusters` and
      at most held-out frames / (`min_cell_count` x labels), so that a code-label cell expects `min_cell_count`
      frames on average; and with `bias_correction="shuffle"` the mean `plugin_mi` of the held-out codes against
      `n_shuffles` random permutations of the held-out labels (the seed's generator), the bias of independent
      codes and labels with the same marginals, is subtracted. The shuffle alone falls short when many
      code-label pairs are rare (a dependent table has more rare cells than its shuffles), hence the cap.
      "none" keeps the Miller-Madow value.
    - "probe": a multinomial logistic regression (inverse regularisation `probe_c`) is fitted on the fit split;
      H(Y) - CE, with H(Y) the Miller-Madow entropy of the held-out labels and CE the probe's held-out
      cross-entropy, is a lower bound (any predictor's cross-entropy is at least H(Y|T)); it is tight when the
      class posteriors are log-linear in T (e.g. Gaussian classes with a shared covariance).
    """
    ts = _as_frames(t, "t")
    y_np = _as_labels(y, ts.shape[0], "y")
    group_ids = _as_labels(groups, ts.shape[0], "groups")
    if method not in ("plugin", "probe"):
        raise ValueError(f"method must be 'plugin' or 'probe', got {method!r}")
    if bias_correction not in ("shuffle", "none"):
        raise ValueError(f"bias_correction must be 'shuffle' or 'none', got {bias_correction!r}")
    if bias_correction == "shuffle" and n_shuffles < 1:
        raise ValueError(f"a shuffle correction needs n_shuffles >= 1, got {n_shuffles}")
    if min_cell_count < 0:
        raise ValueError(f"min_cell_count must be non-negative, got {min_cell_count}")
    n_labels = len(np.unique(y_np))
    values = []
    for seed in seeds:
        rng = np.random.default_rng(int(seed))
        fit, held = _split(np.arange(ts.shape[0]), heldout_fraction, group_ids, rng)
        mean, std = ts[fit].mean(0), ts[fit].std(0).clamp_min(1e-8)
        # float64: on float32 input sklearn's k-means++ takes a much slower, upcasting distance path
        t_fit, t_held = ((ts[fit] - mean) / std).double().numpy(), ((ts[held] - mean) / std).double().numpy()
        if method == "plugin":
            shuffles = n_shuffles if bias_correction == "shuffle" else 0
            cap = int(len(held) / (min_cell_count * n_labels)) if min_cell_count > 0 else n_clusters
            codes = max(2, min(n_clusters, cap))
            values.append(_plugin_one_seed(t_fit, t_held, y_np[held], codes, int(seed), shuffles, rng))
        else:
            values.append(_probe_one_seed(t_fit, t_held, y_np[fit], y_np[held], probe_c, n_labels))
    return MIEstimate.from_values(values)
