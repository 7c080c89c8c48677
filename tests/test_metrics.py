import numpy as np
import pytest

from mobile_vision_export.validate.metrics import compare, expected_agreement, sqnr_db
from mobile_vision_export.validate.thresholds import DEFAULTS, failures, thresholds_for


def test_identical_outputs_are_perfect():
    x = np.random.default_rng(0).normal(size=(8, 100)).astype(np.float32)
    m = compare(x, x.copy())
    assert m.sqnr_db == float("inf") and m.max_abs == 0
    assert m.cosine_mean == pytest.approx(1.0) and m.top1_agreement == 1.0 and m.top5_overlap == 1.0


def test_sqnr_of_known_noise():
    rng = np.random.default_rng(1)
    signal = rng.normal(size=(50, 1000))
    noise = 0.1 * rng.normal(size=(50, 1000))  # power ratio 100 -> 20 dB
    assert sqnr_db(signal, signal + noise) == pytest.approx(20.0, abs=0.2)


def test_top1_and_top5():
    ref = np.array([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    cand = np.array([[4.0, 5, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    m = compare(ref, cand)
    assert m.top1_agreement == 0.5 and m.top5_overlap == 1.0
    swapped = np.array([[0.0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]])
    assert compare(ref, swapped).top5_overlap == pytest.approx((4 / 5 + 1) / 2)


def test_expected_agreement_is_closer_to_the_true_rate_than_a_count():
    """Logits with noise of a known size: the agreement it causes on average (over many draws of the noise) is the
    truth. Over ten photo sets with one draw each, counting flips misses it by about the binomial error; the expected
    agreement, which meets every photo's margins with every photo's error, by half as much, with no bias; and its
    standard error is about how far its value moves between photo sets."""
    rng = np.random.default_rng(0)
    misses: dict[str, list[float]] = {"counted": [], "expected": []}
    values, errors = [], []
    for _ in range(10):
        ref = rng.normal(scale=2.0, size=(300, 20))
        noise = lambda: rng.normal(scale=0.4, size=ref.shape)  # noqa: E731
        truth = np.mean([np.mean((ref + noise()).argmax(1) == ref.argmax(1)) for _ in range(200)])
        cand = ref + noise()
        expected, error = expected_agreement(ref, cand)
        misses["counted"].append(np.mean(cand.argmax(1) == ref.argmax(1)) - truth)
        misses["expected"].append(expected - truth)
        values.append(expected)
        errors.append(error)
    rms = {name: float(np.sqrt(np.mean(np.square(miss)))) for name, miss in misses.items()}
    assert rms["expected"] < 0.6 * rms["counted"] and abs(np.mean(misses["expected"])) < 0.005, rms
    assert 0.5 < np.std(values) / np.mean(errors) < 2.0


def test_expected_agreement_of_identical_outputs_and_of_one_class():
    ref = np.random.default_rng(1).normal(size=(16, 10))
    assert expected_agreement(ref, ref.copy()) == (1.0, 0.0)
    assert expected_agreement(ref[:, :1], ref[:, :1] + 1) == (1.0, 0.0)  # a single score has nothing to swap with


def test_outputs_that_are_not_class_scores_have_no_top1_and_cannot_fail_on_it():
    ref = np.array([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    m = compare(ref, ref[:, ::-1].copy(), classes=False)  # every argmax differs
    assert m.top1_agreement is None and m.top5_overlap is None
    assert not any("top-1" in f for f in failures(m, DEFAULTS["int8"]))


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        compare(np.zeros((2, 3)), np.zeros((2, 4)))


def test_thresholds_defaults_overrides_and_failures():
    assert thresholds_for("int8") == DEFAULTS["int8"]
    strict = thresholds_for("int8", min_sqnr=99.0, min_top1=0.9)
    assert strict.min_sqnr_db == 99.0 and strict.min_top1 == 0.9 and strict.min_cosine == DEFAULTS["int8"].min_cosine
    ref = np.random.default_rng(2).normal(size=(4, 10))
    m = compare(ref, ref + 0.5)
    reasons = failures(m, strict)
    assert any("SQNR" in r for r in reasons)
    assert failures(compare(ref, ref), strict) == []
    trained = thresholds_for("int8", trained=True)
    assert trained.min_top1 == 0.8 and thresholds_for("int8", min_top1=0.5, trained=True).min_top1 == 0.5


def test_top5_with_fewer_than_five_classes_and_nan():
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    assert compare(x, x.copy()).top5_overlap == 1.0
    nan = compare(x, np.full_like(x, np.nan))
    assert failures(nan, thresholds_for("fp32"))  # NaN never passes


def test_zero_outputs_agree():
    z = np.zeros((2, 10))
    assert compare(z, z.copy()).cosine_mean == 1.0


def test_an_empty_map_agrees_with_one_flushed_to_zero():
    """A probability map of a photo with nothing in it: 1e-30s from one runtime, exact zeros from another (flushed
    denormals) agree; an empty map against a real one does not."""
    rng = np.random.default_rng(0)
    reference = np.vstack([rng.uniform(0, 1, (1, 64)), np.full((1, 64), 1e-30)])
    flushed = np.vstack([reference[:1], np.zeros((1, 64))])
    metrics = compare(reference, flushed, classes=False)
    assert metrics.cosine_min == pytest.approx(1.0) and metrics.sqnr_db > 500
    missed = np.vstack([reference[:1], rng.uniform(0, 1, (1, 64))])  # something where the reference has nothing
    assert compare(reference, missed, classes=False).cosine_min == 0.0
