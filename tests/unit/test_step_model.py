"""The step-time model: its features, and that fitting recovers coefficients it was given."""

from __future__ import annotations

import random

import pytest

from pdserve.simulation.step_model import FEATURES, StepModel, features, fit


def test_features_of_a_prompt_chunk_and_decodes() -> None:
    # A 4-token chunk after 10 computed prompt tokens visits 4 * (10 + 5 / 2) = 50 pairs; two
    # decodes at context 7 and 19 attend to 8 and 20 tokens; one request is new.
    batch = [(4, 10, True, False), (1, 7, False, True), (1, 19, False, False)]
    assert dict(zip(FEATURES, features(batch), strict=True)) == {
        "base": 1.0, "per_prefill_token": 4.0, "per_prefill_pair": 50.0, "per_decode": 2.0,
        "per_decode_context": 28.0, "per_new_request": 1.0}


def test_fit_recovers_the_coefficients_of_noisy_steps() -> None:
    truth = StepModel(base=0.004, per_prefill_token=1e-4, per_prefill_pair=5e-8,
                      per_decode=1.5e-4, per_decode_context=1e-6, per_new_request=3e-4)
    rng = random.Random(0)
    samples = []
    for _ in range(2000):
        batch = [(rng.choice([16, 256, 2048]), rng.randrange(0, 1024), True, True)
                 for _ in range(rng.randrange(0, 2))]
        batch += [(1, rng.randrange(16, 2000), False, rng.random() < 0.1)
                  for _ in range(rng.randrange(1, 48))]
        samples.append((batch, truth.seconds(batch) * rng.uniform(0.98, 1.02)))
    result = fit(samples)
    assert result.heldout_mape < 2.0
    for name in FEATURES:
        assert getattr(result.model, name) == pytest.approx(getattr(truth, name), rel=0.15)


def test_fit_refuses_too_few_steps() -> None:
    with pytest.raises(ValueError, match="at least"):
        fit([([(1, 1, False, False)], 0.01)] * 5)
