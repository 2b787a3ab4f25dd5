"The customer-service case: the construction FAQ loaders, the matching metrics and loss, the matching run folder and `specft match`."
import json, warnings
import numpy as np, pandas as pd, pytest, torch
import torch.nn.functional as F
from sklearn.metrics import label_ranking_average_precision_score, ndcg_score, top_k_accuracy_score
from specft import SpecftError
from specft.cli import main
from specft.corpus import load_corpus
from specft.domains import FAQ_AREAS, faq_frame, faq_pairs
from specft.matching import (Matcher, MatchConfig, build_biencoder, choose_threshold, coverage_accuracy, fit_biencoder,
                             in_batch_loss, load_pairs, mrr, ndcg_at_k, ranks_from_scores, recall_at_k, run_matching)

def test_metrics_against_sklearn():
    rng = np.random.default_rng(1)
    S, g = rng.normal(size=(100, 20)), rng.integers(0, 20, 100)
    r, onehot = ranks_from_scores(S, g), np.eye(20)[g]
    for k in (1, 3, 10):
        assert recall_at_k(r, k) == pytest.approx(top_k_accuracy_score(g, S, k=k, labels=np.arange(20)))
        assert ndcg_at_k(r, k) == pytest.approx(ndcg_score(onehot, S, k=k))
    assert mrr(r) == pytest.approx(label_ranking_average_precision_score(onehot, S))

def test_ties_count_against_the_gold_document():
    assert ranks_from_scores(np.zeros((3, 4)), [0, 1, 3]).tolist() == [4, 4, 4]
    assert ranks_from_scores(torch.tensor([[1., 1., 0.]]), [1]).tolist() == [2]

def test_in_batch_loss_is_cross_entropy_over_scaled_cosines():
    q, d = F.normalize(torch.randn(5, 7), dim=1), F.normalize(torch.randn(5, 7), dim=1)
    S = torch.tensor([[7.0 * float(q[i] @ d[j]) for j in range(5)] for i in range(5)])
    assert in_batch_loss(q, d, scale=7.0).item() == pytest.approx(F.cross_entropy(S, torch.arange(5)).item(), abs=1e-5)

def test_coverage_accuracy_brute_force():
    rng = np.random.default_rng(2)
    conf, ok = rng.integers(0, 10, 60) / 10, rng.random(60) < 0.6
    for t, cov, acc in coverage_accuracy(conf, ok)[['threshold', 'coverage', 'accuracy']].itertuples(index=False):
        assert cov == pytest.approx((conf >= t).mean()) and acc == pytest.approx(ok[conf >= t].mean())
    ch = choose_threshold(conf, ok, 0.7)
    if ch['reached']: assert ok[conf >= ch['threshold']].mean() >= 0.7

def test_faq_loaders():
    faq = faq_frame()
    assert len(faq) == 503 and faq.category.nunique() == 39
    c = load_corpus('construction-faq')
    assert len(c.train) == 503 and set(c.train.label) == set(FAQ_AREAS) and c.train.label.value_counts().min() >= 60
    assert 'CC BY 4.0' in c.citation and '10.5281/zenodo.19630803' in c.citation
    pairs = faq_pairs()
    assert len(pairs) == 497 and pairs['id'].is_unique and not pairs['query'].duplicated().any()
    ps = load_pairs('construction-faq')
    assert (len(ps.queries), len(ps.docs)) == (497, 497)
    assert (ps.docs.text.iloc[ps.queries.doc] .tolist() == pairs['doc'].tolist())

def test_fit_lowers_the_loss_and_save_load_gives_identical_search(tmp_path):
    pairs = faq_pairs().iloc[:40]
    bi = build_biencoder('tiny', seed=0)
    losses = fit_biencoder(bi, pairs['query'], pairs['doc'], epochs=8, lr=1e-3, batch_size=8, device='cpu')
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    m = Matcher(bi, pairs['id'], pairs['doc'], threshold=0.3)
    m.save(tmp_path/'run')
    m2 = Matcher.load(tmp_path/'run', device='cpu')
    qs = faq_pairs()['query'].iloc[40:60].tolist()
    (i1, s1), (i2, s2) = m.search(qs, 5), m2.search(qs, 5)
    assert i1 == i2 and np.allclose(s1, s2, atol=1e-6)
    assert m2.threshold == 0.3 and m2.doc_ids == m.doc_ids
    assert [a['to_human'] for a in m2.answer(qs)] == [bool(s < 0.3) for s in s1[:, 0]]

def _pairs_csv(path, n=30):
    topics = [f'topic{i}' for i in range(n)]
    pd.DataFrame({'question': [f'What about {t}?' for t in topics], 'answer': [f'{t} is explained here.' for t in topics]}).to_csv(path, index=False)
    return path

def test_cli_match_exit_codes(tmp_path, capsys):
    assert main(['match', '--data', 'no-such-data', '--model', 'tiny']) == 2
    assert 'not a named pair set' in capsys.readouterr().err
    bad = tmp_path/'bad.csv'; pd.DataFrame({'question': ['a', 'b'], 'reply': ['x', 'y']}).to_csv(bad, index=False)
    assert main(['match', '--data', str(bad), '--model', 'tiny']) == 2
    assert "doc column 'answer' not found" in capsys.readouterr().err
    f, out = _pairs_csv(tmp_path/'pairs.csv'), tmp_path/'run'
    assert main(['match', '--data', str(f), '--model', 'tiny', '--epochs', '1', '--batch-size', '8', '--out', str(out)]) == 0
    assert 'run folder' in capsys.readouterr().out
    assert {'model.safetensors', 'config.json', 'matching.json', 'documents.jsonl', 'metrics.json', 'coverage.csv', 'card.md'} <= {p.name for p in out.iterdir()}
    assert not list(out.glob('*.pkl')) and not list(out.glob('*.bin'))
    m = json.loads((out/'metrics.json').read_text())
    assert set(m['test']) == {'bm25', 'untuned', 'finetuned'} and m['n_docs'] == 30
    assert main(['match', '--data', str(f), '--model', 'tiny', '--out', str(out)]) == 2   # exists, no --overwrite
    capsys.readouterr()
    assert main(['predict', str(out), 'What about topic3?']) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row['query'] == 'What about topic3?' and {'id', 'score', 'answer', 'to_human', 'top'} <= set(row)

def test_run_matching_on_the_faq_with_tiny(tmp_path):
    res = run_matching(MatchConfig(model='tiny', epochs=1, out=str(tmp_path/'faq'), device='cpu'))
    m = res.metrics
    assert m['n_docs'] == 497 and m['n_train'] + m['n_val'] + m['n_test'] == 497
    assert m['test']['bm25']['mrr'] > 0.3   # lexical overlap between a question and its answer is strong here
    assert 0 <= m['threshold']['coverage'] <= 1
    assert set(res.curves.split) == {'val', 'test'}
