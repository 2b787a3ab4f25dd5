"specft.evaluate: metrics equal scikit-learn's, the baseline's settings are pinned, calibration and errors by hand."
import numpy as np, pandas as pd, pytest, torch
import matplotlib
matplotlib.use('Agg')
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score
from specft.core import SpecftDataError
from specft.evaluate import (baseline_metrics, compute_metrics, expected_calibration_error, fit_baseline,
                             fit_temperature, metrics_table, plot_confusion, reliability_bins, temperature_scale,
                             worst_errors)

LABELS = ['negative', 'neutral', 'positive']

@pytest.mark.parametrize('seed', range(5))
def test_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.choice(3, 200, p=[0.25, 0.1, 0.65])
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 3, 200))  # right 60% of the time, noise otherwise
    m = compute_metrics(y, p, LABELS)
    ref = classification_report(y, p, labels=[0, 1, 2], target_names=LABELS, output_dict=True, zero_division=0)
    assert m['accuracy'] == pytest.approx(accuracy_score(y, p), abs=1e-15)
    assert m['macro_f1'] == pytest.approx(ref['macro avg']['f1-score'], abs=1e-15)
    for l in LABELS:
        for k, rk in [('precision', 'precision'), ('recall', 'recall'), ('f1', 'f1-score'), ('support', 'support')]:
            assert m['per_class'][l][k] == pytest.approx(ref[l][rk], abs=1e-15)

def test_absent_class_counts_in_macro_f1_and_inputs_may_be_tensors():
    y, p = torch.tensor([0, 0, 2, 2]), torch.tensor([0, 2, 2, 2])  # class 1 never occurs
    m = compute_metrics(y, p, LABELS)
    assert m['per_class']['neutral'] == dict(precision=0.0, recall=0.0, f1=0.0, support=0)
    assert m['macro_f1'] == pytest.approx(f1_score(y, p, labels=[0, 1, 2], average='macro', zero_division=0))
    assert isinstance(m['accuracy'], float) and isinstance(m['per_class']['negative']['support'], int)

def test_majority_predictor_on_drug_review_like_counts():
    y = np.array([0]*95 + [1]*36 + [2]*248)
    m = compute_metrics(y, np.full_like(y, 2), LABELS)
    assert round(m['accuracy'], 3) == 0.654 and round(m['macro_f1'], 3) == 0.264

def test_metric_errors():
    with pytest.raises(SpecftDataError, match='outside 0..2'): compute_metrics([0, 5], [0, 1], LABELS)
    with pytest.raises(SpecftDataError, match='same, non-zero length'): compute_metrics([0, 1], [0], LABELS)

TEXTS = ['great relief, no side effects', 'terrible nausea and headache', 'it was okay, some dizziness',
         'worked well for my pain', 'awful, made it worse', 'mixed results so far'] * 4
Y = [2, 0, 1, 2, 0, 1] * 4

def test_baseline_settings_pinned():
    pipe = fit_baseline(TEXTS, Y)
    tf, lr = pipe.steps[0][1], pipe.steps[-1][1]
    assert isinstance(tf, TfidfVectorizer) and isinstance(lr, LogisticRegression)
    assert (tf.analyzer, tf.ngram_range, tf.sublinear_tf) == ('word', (1, 2), True)
    assert (lr.C, lr.class_weight, lr.max_iter) == (1.0, 'balanced', 2000)

def test_baseline_equals_hand_built_pipeline():
    ref_tf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    ref = LogisticRegression(C=1.0, class_weight='balanced', max_iter=2000).fit(ref_tf.fit_transform(TEXTS), Y)
    test = ['no side effects, great', 'nausea was terrible']
    np.testing.assert_allclose(fit_baseline(TEXTS, Y).predict_proba(test), ref.predict_proba(ref_tf.transform(test)))
    b = baseline_metrics(TEXTS, Y, TEXTS, Y, LABELS)
    assert b['accuracy'] == 1.0 and (b['n_train'], b['n_test']) == (24, 24)

def test_ece_by_hand():
    probs = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.4, 0.3, 0.3], [0.3, 0.45, 0.25]])
    y = np.array([0, 2, 0, 1])
    assert expected_calibration_error(probs, y, n_bins=2) == pytest.approx(0.5*abs(0.5 - 0.85) + 0.5*abs(1 - 0.425))
    # one bin: |accuracy - mean confidence|
    assert expected_calibration_error(probs, y, n_bins=1) == pytest.approx(abs(0.75 - np.mean([0.9, 0.8, 0.4, 0.45])))
    assert reliability_bins(probs, y, n_bins=2)['count'].tolist() == [2, 2]

def test_ece_zero_when_confidence_matches():
    probs = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, [0, 0, 1]) == 0.0
    assert expected_calibration_error(probs, [1, 1, 0]) == 1.0

def test_worst_errors():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    df = worst_errors(['a', 'b', 'c', 'd'], [1, 1, 1, 0], probs, ['no', 'yes'], k=5)
    assert df.text.tolist() == ['a', 'd', 'b']
    assert df.confidence.tolist() == [0.9, 0.7, 0.6] and df.p_true.tolist() == [0.1, 0.3, 0.4]

def test_metrics_table_and_confusion():
    a = compute_metrics([0, 1, 2, 2], [0, 1, 2, 1], LABELS); b = compute_metrics([0, 1, 2, 2], [2, 2, 2, 2], LABELS)
    t = metrics_table(a, b)
    assert list(t.columns) == ['model', 'baseline', 'difference']
    assert t.loc['accuracy'].tolist() == [0.75, 0.5, 0.25]
    ax = plot_confusion([0, 1, 2, 2], [0, 1, 2, 1], LABELS)
    cm = confusion_matrix([0, 1, 2, 2], [0, 1, 2, 1], labels=[0, 1, 2])
    assert [t.get_text().split('\n')[0] for t in ax.texts] == [str(c) for c in cm.ravel()]

@pytest.mark.parametrize('T0', [0.5, 1.0, 3.0])
def test_fit_temperature_minimises_the_nll(T0):
    "The bisection finds scipy's minimiser of scikit-learn's log loss, near the temperature the labels were drawn at"
    from scipy.optimize import minimize_scalar
    from sklearn.metrics import log_loss
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (3000, 4))
    y = np.array([rng.choice(4, p=p) for p in temperature_scale(z, T0)])
    T = fit_temperature(torch.tensor(z), y)   # a tensor does as well as an array
    ref = minimize_scalar(lambda t: log_loss(y, temperature_scale(z, t), labels=range(4)), bounds=(0.05, 20),
                          method='bounded', options=dict(xatol=1e-10)).x
    assert T == pytest.approx(ref, abs=1e-6) and T == pytest.approx(T0, rel=0.1)
    assert (temperature_scale(z, T).argmax(1) == z.argmax(1)).all()
    assert np.allclose(temperature_scale(z, T).sum(1), 1)

def test_fit_temperature_bounds_and_errors():
    assert fit_temperature([[4., 0.], [0., 4.]], [0, 1]) == 0.05                 # all right: as sharp as allowed
    assert fit_temperature([[4., 0.], [0., 4.]], [1, 0], bounds=(0.1, 10)) == 10  # all wrong: as soft as allowed
    with pytest.raises(SpecftDataError, match='shape'): fit_temperature(np.zeros((3, 2)), [0, 1])
    with pytest.raises(SpecftDataError, match='finite logits'): fit_temperature([[-np.inf, 0.]], [1])   # log(0)
    with pytest.raises(SpecftDataError, match='> 0'): temperature_scale(np.zeros((1, 2)), -1.0)
