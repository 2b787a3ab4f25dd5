"The recommendation case: the MovieLens 100K reader, the leave-last-out split, the baselines' metrics and `specft recommend`."
import importlib.util, json, os, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest
from safetensors.torch import load_file
from specft.cli import main
from specft.domains import MOVIELENS_PIP, load_movielens
from specft.recommend import (leave_last_out, hold_out_items, sample_users, user_item_matrix, target_ranks,
                              popularity_scores, item_knn_scores, hr_ndcg, item_buckets, training_pairs, user_texts, item_texts)

SPECFT = str(Path(sys.executable).parent/'specft')

@pytest.fixture(scope='module')
def movielens(): return load_movielens()

@pytest.fixture(scope='module')
def split(movielens): return leave_last_out(movielens[0])

def test_reader_counts(movielens):
    ratings, items = movielens
    assert (len(ratings), ratings.user.nunique(), ratings.item.nunique(), len(items)) == (100_000, 943, 1_682, 1_682)
    assert list(ratings.columns) == ['user', 'item', 'rating', 'timestamp'] and list(items.columns) == ['item', 'title', 'year', 'genres']
    assert set(ratings.rating) == {1, 2, 3, 4, 5} and items.item.is_unique
    assert items.set_index('item').loc[1, 'title'] == 'Toy Story' and 'Comedy' in items.set_index('item').loc[1, 'genres'].split('|')

def test_split_is_leave_last_liked_out(movielens, split):
    ratings, _ = movielens
    liked_n = ratings[ratings.rating >= 4].groupby('user').size()
    assert set(split.test.user) == set(liked_n[liked_n >= 3].index) and split.skipped == 943 - (liked_n >= 3).sum()
    assert len(split.train) + len(split.val) + len(split.test) == len(ratings)
    assert split.test.user.is_unique and split.val.user.tolist() == split.test.user.tolist()
    # nothing held out is in train; every liked training rating comes no later than validation, validation no later than test
    pairs = set(zip(split.train.user, split.train.item))
    assert not pairs & set(zip(split.test.user, split.test.item)) and not pairs & set(zip(split.val.user, split.val.item))
    liked = split.train[split.train.rating >= 4].groupby('user').timestamp.max().reindex(split.val.user).to_numpy()
    assert (split.val.timestamp.to_numpy() >= liked).all() and (split.test.timestamp.to_numpy() >= split.val.timestamp.to_numpy()).all()
    assert (split.val.rating >= 4).all() and (split.test.rating >= 4).all()

def test_split_on_a_toy_history():
    r = pd.DataFrame({'user': [1] * 5 + [2] * 3, 'item': [10, 11, 12, 13, 14, 10, 11, 12],
                      'rating': [5, 2, 4, 5, 1, 5, 5, 3], 'timestamp': [1, 2, 3, 3, 9, 1, 2, 3]})
    s = leave_last_out(r)
    # user 1 liked 10, 12, 13 (12 and 13 at the same time: the item id breaks the tie); user 2 liked only two
    assert s.test.item.tolist() == [13] and s.val.item.tolist() == [12] and s.skipped == 1
    assert sorted(zip(s.train.user, s.train.item)) == [(1, 10), (1, 11), (1, 14), (2, 10), (2, 11), (2, 12)]

def test_cold_items_leave_training_entirely(movielens, split):
    _, items = movielens
    s, cold = hold_out_items(split, items.item, 0.1, seed=3)
    assert len(cold) == 168 and not s.train.item.isin(cold).any() and len(s.test) == len(split.test)
    q, d = training_pairs(s.train, items, per_user=3)
    text = dict(zip(items.item, item_texts(items)))
    only_cold = {text[i] for i in cold} - {text[i] for i in items.item if i not in set(cold)}   # (a few titles occur twice)
    assert len(q) == len(d) > 0 and not set(d) & only_cold
    assert item_buckets(s.test, s.train, cold).eq('cold').sum() == s.test.item.isin(cold).sum()
    assert len(sample_users(s, 25).test) == 25

TOY = pd.DataFrame({'user': [1, 1, 2, 2, 3, 3, 4, 5, 5], 'item': [1, 2, 1, 2, 1, 2, 1, 3, 4]})
IDS = [1, 2, 3, 4, 5]   # item 5: rated by no one

def test_item_knn_and_popularity_on_a_toy_matrix():
    targets = pd.DataFrame({'user': [4, 5], 'item': [2, 5]})
    knn = item_knn_scores(TOY, TOY, [4, 5], IDS)
    # item 2 is rated by exactly the users who rated item 1 (cosine 3/sqrt(4*3)); user 5's items 3 and 4 are alike
    np.testing.assert_allclose(knn, [[0, 3 / np.sqrt(12), 0, 0, 0], [0, 0, 1, 1, 0]], atol=1e-6)
    r_knn = target_ranks(knn, targets, TOY, IDS)
    # user 4: item 2 first; user 5: the never-rated item 5 ties at 0 with items 1 and 2, and ties count against it
    assert r_knn.tolist() == [1, 3]
    pop = popularity_scores(TOY, [4, 5], IDS)
    assert pop[0].tolist() == [4, 3, 1, 1, 0]
    r_pop = target_ranks(pop, targets, TOY, IDS)
    assert r_pop.tolist() == [1, 3]
    m = hr_ndcg(r_knn, k=2)
    assert m == {'HR@2': 0.5, 'NDCG@2': 0.5, 'n': 2}
    assert hr_ndcg(r_knn, k=10)['NDCG@10'] == pytest.approx((1 + 1 / np.log2(4)) / 2)

def test_user_item_matrix_and_user_texts(movielens, split):
    _, items = movielens
    R = user_item_matrix(TOY, [1, 5], IDS).toarray()
    assert R.tolist() == [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0]]
    t = user_texts(split.train, items, split.test.user[:3], n_recent=2)
    assert all(x.startswith('Likes ') and x.count(';') == 1 for x in t)

def test_cli_tiny_few_users(tmp_path):
    out = tmp_path/'rec'
    r = subprocess.run([SPECFT, 'recommend', '--data', 'movielens', '--model', 'tiny', '--epochs', '1', '--max-users', '12',
                        '--max-len', '32', '--pairs-per-user', '1', '--device', 'cpu', '--out', str(out)],
                       capture_output=True, text=True, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert r.returncode == 0, r.stderr
    assert f'output folder: {out}' in r.stdout and 'item-kNN' in r.stdout
    res = json.loads((out/'results.json').read_text())
    assert res['data']['eval_users'] == 12 and res['config']['model'] == 'tiny' and 'Harper' in res['citation']
    assert set(res['metrics']['test']) == {'popularity', 'item-kNN', 'text (untuned)', 'text (fine-tuned)'}
    assert all(0 <= m['HR@10'] <= 1 and m['n'] == 12 for m in res['metrics']['test'].values())
    assert [e['epoch'] for e in res['epochs']] == [0, 1] and res['best_epoch'] in (0, 1)
    ranks = pd.read_csv(out/'ranks.csv')
    assert len(ranks) == 12 and (ranks['item-kNN'] >= 1).all()
    assert 'embeddings.word_embeddings.weight' in load_file(out/'encoder'/'model.safetensors')
    assert not list(out.rglob('*.bin')) and not list(out.rglob('*.pkl'))
    r = subprocess.run([SPECFT, 'recommend', '--model', 'tiny', '--out', str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and 'not empty' in r.stderr and 'Traceback' not in r.stderr

def test_missing_package_says_the_pip_command(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'recbole' else real(name, *a))
    code = main(['recommend', '--model', 'tiny', '--out', str(tmp_path/'r')])
    err = capsys.readouterr().err
    assert code == 2 and MOVIELENS_PIP in err and err.count('\n') == 1

def test_bad_flags_are_one_line(capsys, tmp_path):
    assert main(['recommend', '--data', 'netflix', '--out', str(tmp_path/'r')]) == 2
    assert 'knows only movielens' in capsys.readouterr().err
    assert main(['recommend', '--cold-frac', '1.5', '--out', str(tmp_path/'r')]) == 2
    assert '--cold-frac' in capsys.readouterr().err
