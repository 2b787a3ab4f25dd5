"""Property-based tests of the data path (hypothesis): random texts with planted exact duplicates, near-duplicates
and chains of them; random tables, splits, personal data and bytes. Each property holds for every input."""
import math, os, tempfile, warnings
from pathlib import Path
import pandas as pd, pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from specft.core import SpecftDataError
from specft.corpus import Corpus, read_table
from specft.clean import _duplicate_groups, clean_frame, dedup_key, jaccard, near_duplicates, shingles
from specft.split import split_corpus
from specft.privacy import PII_DETECTORS, find_pii, mask_pii, placeholder

# A fixed, fast sample by default; SPECFT_PROPERTY_EXAMPLES=N searches N fresh random examples per property instead.
_N = os.environ.get('SPECFT_PROPERTY_EXAMPLES')
FAST = settings(max_examples=int(_N or 60), deadline=None, derandomize=not _N, suppress_health_check=[HealthCheck.too_slow])

WORDS = ('the pill made me tired but pain stopped after two weeks my doctor said dose was fine side effects '
         'nausea headache helped a lot never again would recommend it').split()
sentence = st.lists(st.sampled_from(WORDS), min_size=1, max_size=24).map(' '.join)
any_text = st.one_of(sentence, st.text(max_size=40))

@st.composite
def texts_with_copies(draw, min_size=1):
    "Random texts, with exact copies, near copies and chains (a ~ c, b ~ c, a !~ b) planted at random places"
    texts = draw(st.lists(any_text, min_size=min_size, max_size=10))
    for _ in range(draw(st.integers(0, 6))):
        t = draw(st.sampled_from(texts))
        kind = draw(st.sampled_from(['exact', 'case', 'append', 'chain']))
        if kind == 'exact': new = [t]
        elif kind == 'case': new = [t.upper() + ' !']
        elif kind == 'append': new = [t + ' ' + draw(st.sampled_from(WORDS))]
        else: new = [t + ' ' + draw(sentence), t + ' ' + draw(sentence)]   # t is the middle of a chain
        for n in new: texts.insert(draw(st.integers(0, len(texts))), n)
    return texts

def J(a:str, b:str)->float: return jaccard(shingles(a), shingles(b))

# ---- duplicates

@FAST
@given(texts_with_copies(), st.sampled_from([None, 0.5, 0.8, 1.0]))
def test_duplicate_groups(texts, threshold):
    groups = _duplicate_groups(texts, threshold)
    seen = [i for g in groups for i, *_ in g]
    assert len(seen) == len(set(seen)), 'an index is in two groups'
    kept = set(range(len(texts))) - {i for g in groups for i, *_ in g[1:]}
    for g in groups:
        (k, kind, of, sim), rest = g[0], g[1:]
        assert kind == 'kept' and of is None and k == min(i for i, *_ in g) and rest   # the group keeps its first text
        for i, kind, of, sim in rest:
            assert of == k, 'a removed text names the kept text it copies'
            if kind == 'duplicate': assert dedup_key(texts[i]) == dedup_key(texts[k]) and sim == 1.0
            else:
                assert kind == 'near_duplicate' and threshold is not None
                assert sim == round(J(texts[i], texts[k]), 4) and J(texts[i], texts[k]) >= threshold
    keys = [dedup_key(texts[i]) for i in sorted(kept)]
    assert len(keys) == len(set(keys)), 'two kept texts are exact duplicates'
    if threshold is not None: assert near_duplicates([texts[i] for i in sorted(kept)], threshold) == []

def test_duplicate_chain_regression():
    "a ~ c and b ~ c with a < b < c, a !~ b: the KeyError of issue 11"
    c = 'I have taken this medication for three weeks and the headaches are much less frequent than before.'
    a, b = c + ' My doctor agreed.', c + ' The pharmacist was kind.'
    assert J(a, c) >= 0.8 and J(b, c) >= 0.8 and J(a, b) < 0.8
    assert _duplicate_groups([a, b, c], 0.8) == [[(0, 'kept', None, 1.0), (2, 'near_duplicate', 0, round(J(a, c), 4))]]

@FAST
@given(texts_with_copies(), st.data())
def test_clean_frame_keeps_or_reports_every_row(texts, data):
    n = len(texts)
    rows = data.draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    df = pd.DataFrame({'text': texts, 'label': data.draw(st.lists(st.sampled_from('ab'), min_size=n, max_size=n)), 'row': rows})
    s = dict(near_dup=data.draw(st.sampled_from([None, 0.5, 0.8])), conflicts=data.draw(st.sampled_from(['drop', 'keep_first'])),
             dedup=data.draw(st.booleans()), min_chars=data.draw(st.integers(1, 5)))
    out, rep = clean_frame(df, **s)
    removed = [r for v in rep.removed.values() for r in v]
    assert sorted(out.row.tolist() + removed) == sorted(rows), 'kept rows plus removed rows must equal the input rows'
    assert (rep.n_in, rep.n_out) == (n, len(out))
    assert {d['of'] for d in rep.duplicates} <= set(out.row), 'a removed copy names a row that was kept'
    assert sorted(d['row'] for d in rep.duplicates) == sorted(rep.removed['duplicate'] + rep.removed['near_duplicate'])

@FAST
@given(texts_with_copies(min_size=2), st.lists(any_text, max_size=4), st.sampled_from([0.5, 0.8, 0.95]))
def test_near_duplicates_agree_with_brute_force(texts, extra, threshold):
    S = [shingles(t) for t in texts]
    brute = [(i, j, round(jaccard(S[i], S[j]), 4)) for i in range(len(texts)) for j in range(i+1, len(texts))
             if jaccard(S[i], S[j]) >= threshold]
    assert near_duplicates(texts, threshold) == brute
    query = extra + texts[:2]
    Q = [shingles(t) for t in query]
    brute_q = sorted((i, j, round(jaccard(Q[i], S[j]), 4)) for i in range(len(query)) for j in range(len(texts))
                     if jaccard(Q[i], S[j]) >= threshold)
    assert near_duplicates(texts, threshold, query=query) == brute_q

# ---- splits

@st.composite
def labelled(draw):
    counts = draw(st.lists(st.integers(15, 40), min_size=2, max_size=4))
    labels = [f'class{k}' for k, c in enumerate(counts) for _ in range(c)]
    order = draw(st.permutations(range(len(labels))))
    texts = [f'review {i}: ' + draw(sentence) for i in range(len(labels))]
    return pd.DataFrame({'text': texts, 'label': [labels[i] for i in order], 'row': range(1, len(labels) + 1)})

@settings(FAST, max_examples=int(_N or 20))   # each example splits twice, with a leak search: fewer examples
@given(labelled(), st.floats(0.15, 0.3), st.floats(0.15, 0.3), st.integers(0, 3))
def test_splits_disjoint_stratified_deterministic(df, val_frac, test_frac, seed):
    corpus = Corpus('prop', df, None, 'hypothesis')
    try: sp = split_corpus(corpus, val_frac=val_frac, test_frac=test_frac, seed=seed)
    except SpecftDataError as e:
        assert 'row' in str(e); return   # too few rows of a label for these fractions: a clear error
    parts = {k: set(getattr(sp, k).row) for k in ('train', 'val', 'test')} | {'leaked': set(sp.leaked.row)}
    assert sum(map(len, parts.values())) == len(df) and set().union(*parts.values()) == set(df.row)   # disjoint, nothing lost
    n, counts = len(df), df.label.value_counts()
    test = pd.concat([sp.test, sp.leaked[sp.leaked.split == 'test']])
    n_test = math.ceil(test_frac * n)
    assert len(test) == n_test
    for label, c in counts.items():   # each label's share of the test split is its share of the data, to within one row
        assert abs((test.label == label).sum() - n_test * c / n) < 1
    again = split_corpus(corpus, val_frac=val_frac, test_frac=test_frac, seed=seed)
    for k in ('train', 'val', 'test'): assert getattr(again, k).row.tolist() == getattr(sp, k).row.tolist()

# ---- personal data

PII = ['jane.doe@example.com', 'https://www.example.org/a?b=1', '192.168.0.12', '4111 1111 1111 1111', '+1 (555) 123-4567',
       'June 5, 2015', '12/03/2019', 'MRN 12345678', 'Dr. Patel', 'Jane Doe', '078-05-1120', 'DE89 3704 0044 0532 0130 00']
PLACEHOLDER_TEXTS = [placeholder(k) for k in PII_DETECTORS]
pii_text = st.lists(st.one_of(st.sampled_from(PII), st.sampled_from(PLACEHOLDER_TEXTS), st.sampled_from(WORDS),
                              st.text(max_size=12), st.sampled_from([' ', '.', ',', '/', '-', '@', ':', '[', ']'])),
                    max_size=14).map(''.join)
names = st.lists(st.one_of(st.sampled_from(['Dr. Patel', 'Jane Doe', 'Patel', 'name', 'date', 'May', 'email']), st.text(max_size=6)), max_size=3)

@FAST
@given(pii_text, names)
def test_mask_pii_idempotent_and_never_inside_a_placeholder(text, names):
    masked, counts = mask_pii(text, names=names)
    assert mask_pii(masked, names=names)[0] == masked, 'masking its own output changes it'
    holders = [(m.start(), m.end()) for p in set(PLACEHOLDER_TEXTS) for m in __import__('re').finditer(__import__('re').escape(p), text)]
    for a, b, kind in find_pii(text, names=names):
        for s, e in holders: assert b <= s or a >= e, f'{kind} span {text[a:b]!r} cuts into the placeholder {text[s:e]!r}'

# ---- reading files

table_bytes = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.lists(st.lists(st.text(alphabet='ab ,;\t|"\n{}[]:\\', max_size=6), min_size=1, max_size=4), min_size=1, max_size=6)
      .flatmap(lambda rows: st.sampled_from([',', ';', '\t', '|']).map(
          lambda sep: ('\n'.join(sep.join(r) for r in rows)).encode())),
    st.lists(st.dictionaries(st.sampled_from(['text', 'label', 'x']), st.one_of(st.text(max_size=5), st.integers(), st.none(),
                                                                               st.lists(st.integers(), max_size=2))), max_size=4)
      .map(lambda recs: '\n'.join(__import__('json').dumps(r) for r in recs).encode()))

@FAST
@given(table_bytes, st.sampled_from(['.csv', '.tsv', '.txt', '.jsonl', '.parquet']))
def test_read_table_returns_a_frame_or_fails_clearly(raw, suffix):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d)/f'data{suffix}'
        p.write_bytes(raw)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            try: df, info = read_table(p)
            except SpecftDataError: return
    assert isinstance(df, pd.DataFrame) and len(df) > 0 and df.row.tolist() == list(range(1, len(df) + 1))
    assert info['bytes'] == len(raw)
