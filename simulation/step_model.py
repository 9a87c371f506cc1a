"""How long one engine step takes, as a stated linear model of the batch it computes.

    seconds = base
            + per_prefill_token * prompt tokens computed
            + per_prefill_pair * attention (query, key) pairs of those prompt tokens
            + per_decode * decoding requests
            + per_decode_context * tokens those decodes attend to
            + per_new_request * requests entering the batch (new, or resumed after preemption)

A prompt chunk of n tokens after c computed ones visits n × (c + (n + 1) / 2) pairs
(quadratic); a decode reads its whole context once (linear). On this CPU a decode costs far
more than a prompt token (a matrix-vector step per request), and a request entering the batch
costs the model runner its state set-up; one shared per-token rate missed decode steps by 2×.
Coefficients are fitted by non-negative least squares on relative error (a step never gets
faster with more work, which keeps extrapolation sane), and the fit states its error on steps
it did not see.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

FEATURES = ("base", "per_prefill_token", "per_prefill_pair", "per_decode",
            "per_decode_context", "per_new_request")

#: One request's share of a step: (tokens computed, tokens computed before, is a prompt
#: chunk, entered the batch this step).
Work = tuple[int, int, bool, bool]


def is_prefill_step(batch: Iterable[Work]) -> bool:
    """Whether a step computes a prompt chunk: the kind of step `core_contention`'s prefill
    scales are measured on and applied to. A 1-token chunk (the last prompt token of a request
    whose KV was pulled or cached) costs what a decode does, so it does not count."""
    return any(prompt and tokens > 1 for tokens, _, prompt, _ in batch)


def prompt_tokens_computed(batch: Iterable[Work]) -> int:
    """Prompt tokens a step computes in chunks of more than one token (`is_prefill_step`'s
    kind: a 1-token chunk after a pulled or cached prompt costs what a decode does)."""
    return sum(tokens for tokens, _, prompt, _ in batch if prompt and tokens > 1)


def features(batch: Iterable[Work]) -> tuple[float, ...]:
    """The model's inputs for one step, in `FEATURES` order."""
    prefill_tokens = prefill_pairs = decodes = decode_context = new = 0.0
    for tokens, context, prefill, entered in batch:
        if prefill:
            prefill_tokens += tokens
            prefill_pairs += tokens * (context + (tokens + 1) / 2)
        else:
            decodes += 1
            decode_context += context + tokens
        new += entered
    return (1.0, prefill_tokens, prefill_pairs, decodes, decode_context, new)


@dataclass(frozen=True)
class StepModel:
    """Fitted coefficients (seconds per unit of each feature)."""

    base: float
    per_prefill_token: float
    per_prefill_pair: float
    per_decode: float
    per_decode_context: float
    per_new_request: float

    def seconds(self, batch: Iterable[Work]) -> float:
        return sum(c * x for c, x in zip(self.coefficients(), features(batch), strict=True))

    def coefficients(self) -> tuple[float, ...]:
        return tuple(getattr(self, name) for name in FEATURES)

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in FEATURES}


@dataclass(frozen=True)
class Fit:
    model: StepModel
    train_mape: float  # mean absolute percentage error on the steps fitted, %
    heldout_mape: float  # ... on steps held out of the fit, %
    heldout_p90_ape: float  # 90th percentile of the held-out absolute percentage errors
    train_steps: int
    heldout_steps: int
    noise_mape: float | None  # repeated identical batches vs their median: the floor, %


def fit(samples: Sequence[tuple[Sequence[Work], float]], heldout_every: int = 5,
        groups: Sequence[int] | None = None) -> Fit:
    """Fit on all steps (batch, seconds) but a held-out fifth, and report the error on those.
    `groups` (one id per step, e.g. its sweep point) holds out whole groups, every
    `heldout_every`-th: steps of one sweep point look alike (a decode's context grows by one a
    step), so holding out single steps would test on near-copies of what was fitted."""
    import numpy as np
    from scipy.optimize import nnls

    if len(samples) < 2 * heldout_every:
        raise ValueError(f"need at least {2 * heldout_every} steps to fit, got {len(samples)}")
    x = np.array([features(batch) for batch, _ in samples], dtype=float)
    y = np.array([t for _, t in samples], dtype=float)
    ids = np.arange(len(samples)) if groups is None else np.asarray(groups)
    held = ids % heldout_every == heldout_every - 1
    if held.all() or not held.any():
        raise ValueError("too few groups to hold any out")
    # Relative error is what matters (a 5 ms decode step and a 300 ms prefill alike):
    # weigh each row by 1/y, so NNLS minimises the squared relative residuals.
    weights = 1.0 / y[~held]
    coef, _ = nnls(x[~held] * weights[:, None], y[~held] * weights)
    model = StepModel(*(float(c) for c in coef))
    ape = np.abs(x @ coef - y) / y * 100.0
    return Fit(model=model, train_mape=float(ape[~held].mean()),
               heldout_mape=float(ape[held].mean()),
               heldout_p90_ape=float(np.percentile(ape[held], 90)),
               train_steps=int((~held).sum()), heldout_steps=int(held.sum()),
               noise_mape=noise_floor(samples))


def noise_floor(samples: Sequence[tuple[Sequence[Work], float]]) -> float | None:
    """How much the same batch's time varies on this host: for every step whose batch
    features recur (the sweep runs each point twice, with other prompt tokens), its absolute
    percentage deviation from the mean of the other steps with those features, averaged. No
    model predicts single steps better than this."""
    import statistics

    groups: dict[tuple[int, ...], list[float]] = {}
    for batch, seconds in samples:
        groups.setdefault(tuple(round(x) for x in features(batch)), []).append(seconds)
    deviations = []
    for times in groups.values():
        if len(times) < 2:
            continue
        total = sum(times)
        for t in times:
            others = (total - t) / (len(times) - 1)
            deviations.append(abs(t - others) / others * 100.0)
    return statistics.fmean(deviations) if deviations else None
