"Financial sentiment monitoring: the teaching corpus, its loader and time split, the monitor's maths and guards, and `specft train --data fin-news`."
import json, os, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest
from specft.core import SpecftConfigError, SpecftDataError
from specft.corpus import load_corpus, named_data, data_task
from specft.domains import fin_news_path, read_fin_news, split_by_date, load_fin_news, FIN_PHRASEBANK
from specft.monitor import AlertRule, Monitor, add_trailing, alerts, apply_rule, daily_index, score_alerts, stream_frame

SPECFT = str(Path(sys.executable).parent/'specft')

# --- the corpus file -------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def raw(): return json.loads(fin_news_path().read_text(encoding='utf-8'))

def test_corpus_schema(raw):
    assert fin_news_path().parent.name == 'specft' and set(raw) == {'metadata', 'records'}
    recs = raw['records']
    assert 360 <= len(recs) <= 480 and raw['metadata']['n_records'] == len(recs)
    for i, r in enumerate(recs, 1):
        assert set(r) == {'id', 'date', 'ticker', 'company', 'text', 'label'} and r['id'] == i
        assert r['label'] in ('positive', 'negative', 'neutral') and len(r['text'].split()) >= 5
        assert pd.Timestamp(r['date']).year == 2026 and pd.Timestamp(r["date"]).day_of_week < 5
    assert [r['date'] for r in recs] == sorted(r['date'] for r in recs)             # in date order
    tickers = {r['ticker']: r['company'] for r in recs}
    assert 6 <= len(tickers) <= 8 and tickers == raw['metadata']['companies']

def test_corpus_balance_and_unique_texts(raw):
    df = pd.DataFrame(raw['records'])
    share = df.label.value_counts(normalize=True)
    assert 0.25 <= share['positive'] <= 0.35 and 0.20 <= share['negative'] <= 0.30 and 0.40 <= share['neutral'] <= 0.50
    assert share.idxmax() == 'neutral'                                              # neutral is the largest class
    assert df.text.is_unique and df.text.str.lower().str.strip().is_unique
    assert df.date.nunique() >= 80 and (pd.Timestamp(df.date.max()) - pd.Timestamp(df.date.min())).days >= 110

def test_data_card(raw):
    m = raw['metadata']
    assert 'Apache-2.0' in m['licence'] and 'invented' in m['fictional'] and 'not' in m['not_a_benchmark'].lower()
    assert len(m['known_flaws']) >= 4 and 'CC BY-NC-SA 3.0' in m['swap_in_public_data']
    df = pd.DataFrame(raw['records'])
    for ep in m['episodes']:   # each planted episode is a real burst of negative news in the records
        burst = df[(df.ticker == ep['ticker']) & df.date.between(ep['start'], ep['burst_end'])]
        assert (burst.label == 'negative').mean() >= 0.6 and len(burst) >= 8
    test_ep = [ep for ep in m['episodes'] if ep['start'] >= m['test_split']['first_test_day']]
    assert len(test_ep) == 1 and test_ep[0]['ticker'] == 'LMQD'

# --- loader and time split -------------------------------------------------------------------------------------------
def test_split_by_date_keeps_days_whole():
    df = pd.DataFrame({'date': ['2026-01-05'] * 3 + ['2026-01-06', '2026-01-07'] + ['2026-01-08'] * 2, 'x': range(7)})
    tr, te = split_by_date(df, 0.5)     # 4 days: the last 2 are test
    assert tr.x.tolist() == [0, 1, 2, 3] and te.x.tolist() == [4, 5, 6]
    with pytest.raises(SpecftConfigError, match='between 0 and 1'): split_by_date(df, 0)
    with pytest.raises(SpecftDataError, match='each side needs a day'): split_by_date(df.iloc[:3], 0.5)

def test_fin_news_loader_and_registration():
    assert 'fin-news' in named_data() and data_task('fin-news') == 'sentiment'
    c = load_corpus('fin-news')
    news, card = read_fin_news()
    assert list(c.train.columns) == ['text', 'label', 'row'] and len(c.train) + len(c.test) == len(news)
    dates = news.set_index('id').date
    assert dates[c.train.row].max() < dates[c.test.row].min()                      # every test day after every train day
    assert str(dates[c.test.row].min().date()) == card['test_split']['first_test_day'] == c.report['first_test_day']
    assert dates[c.test.row].nunique() == round(0.2 * news.date.nunique())
    assert 'teaching' in c.citation and c.task == 'sentiment'
    with pytest.raises(SpecftConfigError, match='--task sentiment'): load_corpus('fin-news', task='rating')

def test_phrasebank_shaped_dataset_offline(tmp_path):
    "The hf: path's loader, offline: a saved dataset with PhraseBank's columns and ClassLabel ids"
    import datasets
    feats = datasets.Features({'sentence': datasets.Value('string'), 'label': datasets.ClassLabel(names=['negative', 'neutral', 'positive'])})
    ds = datasets.Dataset.from_dict({'sentence': [f'Sales fell {i}%.' for i in range(6)] + [f'Profit rose {i}%.' for i in range(6)],
                                     'label': [0] * 6 + [2] * 6}, features=feats)
    ds.save_to_disk(str(tmp_path/'pb'))
    c = load_corpus(tmp_path/'pb', text_col='sentence', label_col='label')
    assert c.train.label.tolist() == ['negative'] * 6 + ['positive'] * 6 and c.test is None
    assert FIN_PHRASEBANK.startswith('hf:takala/financial_phrasebank')

# --- the monitor's maths on hand-made streams -----------------------------------------------------------------------
def busy_and_quiet(last_b=('negative',) * 4 + ('neutral',), last_q=('negative',)):
    days = pd.bdate_range('2026-02-02', periods=11)
    rows = [(d, 'Q', 'neutral') for d in days[:10]] + [(days[10], 'Q', l) for l in last_q]
    rows += [(d, 'B', l) for d in days[:10] for l in ('negative', 'neutral', 'neutral', 'positive')]
    rows += [(days[10], 'B', l) for l in last_b]
    return days, stream_frame(pd.DataFrame(rows, columns=['date', 'entity', 'label']))

def test_daily_index_by_hand():
    s = stream_frame([{'date': '2026-03-02', 'entity': 'A', 'probabilities': {'negative': 0.6, 'neutral': 0.3, 'positive': 0.1}},
                      {'date': '2026-03-02', 'entity': 'A', 'probabilities': {'negative': 0.1, 'neutral': 0.2, 'positive': 0.7}},
                      {'date': '2026-03-04', 'entity': 'A', 'label': 'neutral'}])
    d = daily_index(s, days=pd.bdate_range('2026-03-02', '2026-03-04'), entities=['A', 'NONE'])
    a = d[d.entity == 'A']
    assert a.n.tolist() == [2, 0, 1] and a.n_neg.tolist() == [1, 0, 0]
    assert np.isclose(a['index'].iloc[0], ((0.1 - 0.6) + (0.7 - 0.1)) / 2) and np.isnan(a['index'].iloc[1]) and a['index'].iloc[2] == 0
    assert np.isclose(a.neg_share.iloc[0], 0.5) and d[d.entity == 'NONE'].n.sum() == 0
    assert set(daily_index(s, entities=['NONE']).entity) == {'A', 'NONE'}            # the stream's entities are never dropped
    with pytest.raises(SpecftDataError, match='outside the day grid: 2026-03-04'): daily_index(s, days=['2026-03-02'])

def test_argmax_ties_go_to_the_first_label():
    s = stream_frame([{'date': '2026-03-02', 'entity': 'A', 'probabilities': {'negative': 0.4, 'neutral': 0.4, 'positive': 0.2}},
                      {'date': '2026-03-02', 'entity': 'A', 'probabilities': {'negative': 0.2, 'neutral': 0.4, 'positive': 0.4}}])
    assert s.label.tolist() == ['negative', 'neutral']

def test_trailing_window_matches_a_loop():
    rng = np.random.default_rng(1)
    days = pd.bdate_range('2026-01-05', periods=25)
    s = stream_frame(pd.DataFrame({'date': rng.choice(days, 90), 'entity': rng.choice(['A', 'B'], 90),
                                   'label': rng.choice(['negative', 'neutral', 'positive'], 90)}))
    d = add_trailing(daily_index(s, days=days), window=4)
    for _, x in d.groupby('entity'):
        n, k = x.n.to_numpy(), x.n_neg.to_numpy()
        for t in range(len(x)):
            lo = max(0, t - 4)
            assert x.hist_n.iloc[t] == n[lo:t].sum() and x.hist_neg.iloc[t] == k[lo:t].sum()   # today excluded
            if n[lo:t].sum(): assert np.isclose(x.base.iloc[t], k[lo:t].sum() / n[lo:t].sum())

def test_alert_rule_by_hand_and_its_guards():
    days, s = busy_and_quiet()
    sc = apply_rule(daily_index(s), AlertRule(window=10))
    last = sc[sc.date == days[10]].set_index('entity')
    # B: base 10/40 = 0.25, share 4/5 = 0.8, sd = max(sqrt(.25*.75/5) = 0.194, 0.2) = 0.2, z = 2.75
    assert np.isclose(last.loc['B', 'z'], 2.75) and last.loc['B', 'alert']
    # Q: one negative article after ten neutral ones: z = (1 - 0) / 0.2 = 5, but n = 1 < min_count
    assert np.isclose(last.loc['Q', 'z'], 5.0) and not last.loc['Q', 'alert']
    assert apply_rule(daily_index(s), AlertRule(window=10, min_count=1)).alert.sum() == 2
    assert apply_rule(daily_index(s), AlertRule(window=10, min_history=41)).alert.sum() == 0
    assert apply_rule(daily_index(s), AlertRule(window=10, z=2.75)).alert.sum() == 1     # a tie at z* alerts
    # the floor: without it Q's spotless history gives an infinite z, and even 1 negative in 3 would alert
    _, s3 = busy_and_quiet(last_q=('negative', 'neutral', 'neutral'))
    q = apply_rule(daily_index(s3), AlertRule(window=10)).query("entity == 'Q'")
    assert np.isclose(q.z.iloc[-1], (1 / 3) / 0.2) and not q.alert.any()
    a = alerts(sc)
    assert a.entity.tolist() == ['B'] and list(a.columns) == ['date', 'entity', 'n', 'n_neg', 'neg_share', 'hist_n', 'base', 'z']
    for bad, msg in [(dict(window=0), 'window'), (dict(sd_floor=0), 'sd_floor'), (dict(spread='x'), 'spread'), (dict(min_count=1.5), 'min_count')]:
        with pytest.raises(SpecftConfigError, match=msg): AlertRule(**bad)

def test_missing_days_do_not_alert_and_still_count_in_the_window():
    days, s = busy_and_quiet()
    s = s[~((s.entity == 'B') & s.date.isin(days[2:5]))]
    b = apply_rule(daily_index(s), AlertRule(window=10)).query("entity == 'B'").reset_index(drop=True)
    assert b.z[2:5].isna().all() and not b.alert[2:5].any() and b.hist_n.iloc[10] == 28

def test_score_alerts():
    days, s = busy_and_quiet()
    found = alerts(apply_rule(daily_index(s), AlertRule(window=10)))
    ev = pd.DataFrame({'entity': ['B', 'Q'], 'start': [days[8], days[1]], 'end': [days[10], days[3]]})
    assert score_alerts(found, ev) == dict(events=2, detected=1, missed=['Q'], delays=[2], alerts=1, false_alerts=0)
    assert score_alerts(found, ev[ev.entity == 'Q'])['false_alerts'] == 1

def test_monitor_streams_day_by_day():
    class Words:
        labels = ['negative', 'neutral', 'positive']
        def predict_proba(self, texts): return np.array([[0.9, 0.05, 0.05] if 'bad' in t else [0.05, 0.9, 0.05] for t in texts])
    days, s = busy_and_quiet()
    feed = pd.DataFrame({'date': s.date, 'entity': s.entity, 'text': s.label.map({'negative': 'bad', 'neutral': 'meh', 'positive': 'meh'})})
    m = Monitor(Words(), AlertRule(window=10))
    got = [len(m.update(feed[feed.date == d])) for d in days]
    assert got == [0] * 10 + [1] and len(m.stream) == len(feed)
    with pytest.raises(SpecftConfigError, match="no 'bearish'"): Monitor(Words(), neg='bearish')
    with pytest.raises(SpecftDataError, match="'text'"): m.update([{'date': days[0], 'entity': 'B'}])

def test_planted_episodes_alert_with_the_true_labels():
    news, card = read_fin_news()
    found = alerts(apply_rule(daily_index(stream_frame(news.rename(columns={'ticker': 'entity'})))))
    ev = pd.DataFrame(card['episodes']).drop(columns='end').rename(columns={'ticker': 'entity', 'burst_end': 'end'})
    r = score_alerts(found, ev)
    assert r['detected'] == 2 and r['false_alerts'] == 0

# --- the command line ------------------------------------------------------------------------------------------------
def test_specft_train_fin_news_tiny(tmp_path):
    out = tmp_path/'run'
    r = subprocess.run([SPECFT, 'train', '--data', 'fin-news', '--model', 'tiny', '--epochs', '1', '--max-len', '64', '--out', str(out)],
                       capture_output=True, text=True, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert r.returncode == 0, r.stderr
    m = json.loads((out/'metrics.json').read_text())
    news, card = read_fin_news()
    n_test_days = news[news.date >= card['test_split']['first_test_day']]
    assert m['n_test'] == len(n_test_days) and m['n_train'] + m['n_val'] == len(news) - len(n_test_days)
    info = json.loads((out/'run.json').read_text())
    assert info['config']['task'] in (None, 'sentiment') and info['data']['name'] == 'fin-news' and sorted(info['labels']) == ['negative', 'neutral', 'positive']
