"specft.curve: stratified nested subsets, the step floor, a paired learning curve on the tiny model, and its crossing point."
import math
import numpy as np, pandas as pd, pytest
from specft.core import SpecftConfigError
from specft.pipeline import RunConfig, prepare_data, DEFAULT_EPOCHS
from specft.curve import (MIN_STEPS, subset_counts, stratified_subset, curve_epochs, learning_curve, curve_summary,
                          crossing_point, _fingerprint)

TINY = RunConfig(model='tiny', max_len=32, device='cpu')

@pytest.fixture(scope='module')
def train():
    return prepare_data(TINY).train

def test_subsets_are_stratified_and_nested(train):
    counts = train['label'].value_counts().sort_index()
    sizes = [25, 50, 100, 200, len(train)]
    for seed in (0, 1, 2):
        subs = [stratified_subset(train, n, seed) for n in sizes]
        for n, s in zip(sizes, subs):
            assert len(s) == n and s['row'].is_unique
            assert (s['label'].value_counts().reindex(counts.index, fill_value=0).to_numpy() == subset_counts(counts, n).to_numpy()).all()
            exact = n * counts / counts.sum()
            assert ((s['label'].value_counts().reindex(counts.index) - exact).abs() < 1).all()   # within one row of the share
        rows = [set(s['row']) for s in subs]
        assert all(a < b for a, b in zip(rows, rows[1:]))                 # a seed's smaller subsets lie inside its larger ones
    assert set(stratified_subset(train, 25, 0)['row']) != set(stratified_subset(train, 25, 1)['row'])
    assert stratified_subset(train, 25, 3).equals(stratified_subset(train, 25, 3))

def test_counts_are_monotone_with_one_of_each_label():
    counts = pd.Series([145, 49, 346], index=['negative', 'neutral', 'positive'])   # the bundled split's shares
    ks = np.array([subset_counts(counts, n) for n in range(1, 541)])
    assert (np.diff(ks, axis=0) >= 0).all() and (ks.sum(1) == np.arange(1, 541)).all()
    assert (ks[2:] >= 1).all()
    assert subset_counts(counts, 51).tolist() == [14, 5, 32]    # plain largest remainder gives [14, 4, 33], one neutral fewer than at 50
    assert subset_counts(counts, 2).tolist() == [1, 0, 1]       # fewer rows than labels: the largest labels

@pytest.mark.parametrize('n', [0, -3, 541, 2.5, True])
def test_bad_sizes(train, n):
    with pytest.raises(SpecftConfigError, match='whole number of rows from 1 to 540'):
        stratified_subset(train, n, 0)

def test_curve_epochs():
    assert curve_epochs(25, 16, 5, 0) == 5 and 5 * math.ceil(25 / 16) == 10    # the recipe alone: 10 steps
    assert [curve_epochs(n, 16, 5) for n in (25, 50, 100, 200, 540)] == [50, 25, 15, 8, 5]
    assert [curve_epochs(n) for n in (25, 200, 540)] == [50, 8, 8] and DEFAULT_EPOCHS['full'] == 8   # the recipe's own 8 epochs
    assert all(curve_epochs(n) * math.ceil(n / 16) >= MIN_STEPS for n in range(1, 600))
    assert curve_epochs(16, 16, 5, 7) == 7 and curve_epochs(17, 16, 5, 7) == 5
    with pytest.raises(SpecftConfigError, match='batch_size must be at least 1'): curve_epochs(10, 0)

def test_learning_curve_is_paired(train):
    df = learning_curve(TINY, sizes=(6, 12), seeds=(1,), methods=('full', 'lora'), min_steps=3)
    assert len(df) == 2 * 1 * 3
    assert sorted(map(tuple, df[['size', 'method']].to_numpy().tolist())) == sorted((n, m) for n in (6, 12) for m in ('full', 'lora', 'tfidf'))
    assert np.isfinite(df[['macro_f1', 'accuracy', 'train_seconds']].to_numpy()).all()
    assert df[['macro_f1', 'accuracy']].to_numpy().min() >= 0 and df[['macro_f1', 'accuracy']].to_numpy().max() <= 1
    for n, g in df.groupby('size'):
        assert g['subset'].nunique() == 1 and g['subset'].iloc[0] == _fingerprint(stratified_subset(train, n, 1))
    models = df[df.method != 'tfidf']
    # one step per epoch; the floor of 3 does not bind; each method trains its own default epochs (LoRA's are 10)
    assert (models.epochs == models.method.map(DEFAULT_EPOCHS)).all() and (models.steps == models.epochs).all()
    assert set(models.epochs) == {DEFAULT_EPOCHS['full'], DEFAULT_EPOCHS['lora']} and DEFAULT_EPOCHS['full'] != DEFAULT_EPOCHS['lora']
    assert df[df.method == 'tfidf'].steps.isna().all()
    s = curve_summary(df)
    assert len(s) == 6 and (s.n == 1).all() and s.macro_f1_sd.isna().all()

def test_learning_curve_errors():
    with pytest.raises(SpecftConfigError, match='at least one row of each of the 3 labels'):
        learning_curve(TINY, sizes=(2,), seeds=(0,))
    with pytest.raises(SpecftConfigError, match='--method'):
        learning_curve(TINY, sizes=(6,), seeds=(0,), methods=('nope',))

def test_crossing_point():
    s = pd.DataFrame({'size': [25, 50, 100, 200] * 3, 'method': ['tfidf'] * 4 + ['full'] * 4 + ['lora'] * 4,
                      'macro_f1_mean': [0.40, 0.42, 0.45, 0.47, 0.30, 0.44, 0.43, 0.50, 0.41, 0.38, 0.40, 0.44]})
    assert crossing_point(s, 'full') == 200       # above at 50 but not at 100: it stays above only from 200
    assert crossing_point(s, 'lora') is None      # above at 25 only
    assert crossing_point(s.assign(macro_f1_mean=np.where(s.method == 'lora', 0.9, s.macro_f1_mean)), 'lora') == 25
    with pytest.raises(SpecftConfigError, match="no method 'head'"): crossing_point(s, 'head')

def test_bench_adds_a_method_to_a_results_file(tmp_path):
    "bench/learning_curve.py --add: another method's runs join the file's, on the same subsets; other settings are refused"
    import json, sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parents[1]/'bench'))
    import learning_curve as bench
    out = tmp_path/'curve.json'
    bench.main(['--quick', '--methods', 'full', '--out', str(out)])
    first = json.loads(out.read_text())
    bench.main(['--quick', '--methods', 'lora', '--add', '--out', str(out)])
    both = json.loads(out.read_text())
    assert both['methods'] == ['full', 'lora'] and set(both['by_method']) == {'full', 'lora'}
    assert both['by_method']['full']['command'] == first['command'] and '--add' in both['by_method']['lora']['command']
    runs = pd.DataFrame(both['runs'])
    assert sorted(runs.method.unique()) == ['full', 'lora', 'tfidf'] and len(runs) == 3 * len(first['runs']) // 2
    assert runs.groupby(['size', 'seed'])['subset'].nunique().max() == 1                       # still paired
    kept = runs[runs.method == 'full'].drop(columns='subset').reset_index(drop=True)
    assert kept.equals(pd.DataFrame([r for r in first['runs'] if r['method'] == 'full']).drop(columns='subset'))
    assert set(both['crossing_points']) == {'full', 'lora'}
    with pytest.raises(SystemExit, match='other settings'):
        bench.main(['--quick', '--methods', 'lora', '--add', '--seeds', '1', '--out', str(out)])
    with pytest.raises(SystemExit, match='other settings'):
        bench.main(['--quick', '--methods', 'lora', '--add', '--max-len', '16', '--out', str(out)])
