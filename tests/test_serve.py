"specft.serve on loopback with a tiny run: access control, every limit, errors as JSON, metrics, masked logs, a load test, and `specft serve`'s one-line errors."
import asyncio, json, logging, os, socket, subprocess, sys, time
from pathlib import Path
import numpy as np, pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from specft.pipeline import Predictor, run, RunConfig
from specft.serve import ServeConfig, create_app, load_reference, ServerThread, load_test, read_token, log

SPECFT = str(Path(sys.executable).parent/'specft')
TOKEN = 'a-test-token-of-some-length'
AUTH = {'Authorization': f'Bearer {TOKEN}'}

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp('serve')
    res = run(RunConfig(model='tiny', epochs=1, max_len=48, max_train_rows=90, device='cpu', out=str(d/'run')))
    pred = Predictor.load(res.run_dir, 'cpu')
    return res.run_dir, pred, load_reference(res.run_dir, pred)

@pytest.fixture()
def client(tiny):
    _, pred, ref = tiny
    cfg = ServeConfig(token=TOKEN, max_texts=4, max_chars=100, max_body_bytes=1500, drift_min=5)
    with TestClient(create_app(pred, cfg, ref)) as c: yield c

def post(c, body=None, headers=AUTH, **kw):
    return c.post('/predict', json=body if body is not None else {'texts': ['Good drug.']}, headers=headers, **kw)

def test_health_is_open_and_predict_needs_the_token(client, tiny):
    assert client.get('/health').json()['status'] == 'ok'
    r = post(client, headers={})
    assert r.status_code == 401 and r.headers['www-authenticate'] == 'Bearer' and r.json()['request_id']
    assert post(client, headers={'Authorization': 'Bearer wrong'}).status_code == 403
    assert post(client, headers={'Authorization': TOKEN}).status_code == 401   # no "Bearer "
    r = post(client, {'texts': ['Good drug.', 'Bad drug.']})
    assert r.status_code == 200 and r.headers['x-request-id'] == r.json()['request_id']
    preds = r.json()['predictions']
    labels = tiny[1].labels
    assert [p['label'] for p in preds] == [tiny[1].predict(['Good drug.', 'Bad drug.'])[i]['label'] for i in range(2)]
    assert all(abs(sum(p['probabilities'].values()) - 1) < 1e-4 and set(p['probabilities']) == set(labels) for p in preds)

@pytest.mark.parametrize('kw,status,msg', [
    (dict(body={'texts': ['x' * 90] * 20}), 413, 'bytes'),
    (dict(content=b'{"texts": [' + b'"x",' * 600 + b'"x"]}', headers={**AUTH, 'Content-Type': 'application/json'}), 413, 'bytes'),
    (dict(body={'texts': ['x'] * 5}), 422, 'limit is 4'),
    (dict(body={'texts': ['x' * 101]}), 422, 'over 100 characters'),
    (dict(body={'texts': []}), 422, 'non-empty list'),
    (dict(body={'texts': [1, 2]}), 422, 'list of strings'),
    (dict(body=['x']), 422, 'texts'),
    (dict(content=b'texts=x', headers={**AUTH, 'Content-Type': 'text/plain'}), 415, 'application/json'),
    (dict(content=b'{"texts": ["x"]}', headers=AUTH), 415, 'application/json'),
    (dict(content=b'{"texts": [', headers={**AUTH, 'Content-Type': 'application/json'}), 400, 'malformed JSON'),
    (dict(content=b'\xff\xfe', headers={**AUTH, 'Content-Type': 'application/json'}), 400, 'malformed JSON'),
])
def test_limits_and_malformed_requests(client, kw, status, msg):
    body = kw.pop('body', None)
    r = client.post('/predict', json=body, **{'headers': AUTH, **kw}) if body is not None else client.post('/predict', **kw)
    assert r.status_code == status, r.text
    assert msg in r.json()['error'] and r.json()['request_id'] and 'Traceback' not in r.text

def test_unknown_paths_and_methods_are_json(client):
    for r, status in [(client.get('/nope'), 404), (client.get('/predict'), 405)]:
        assert r.status_code == status and 'error' in r.json()

def test_model_error_is_500_and_the_server_keeps_serving(tiny, caplog):
    _, pred, _ = tiny
    class Flaky(Predictor):
        def predict_proba(self, texts):
            if 'BOOM' in texts: raise RuntimeError('simulated')
            return super().predict_proba(texts)
    flaky = Flaky(pred.model, pred.tok, pred.labels, pred.prep, 'cpu')
    with TestClient(create_app(flaky, ServeConfig())) as c, caplog.at_level(logging.ERROR, 'specft.serve'):
        bad = c.post('/predict', json={'texts': ['BOOM']})
        good = c.post('/predict', json={'texts': ['fine']})
    assert bad.status_code == 500 and bad.json()['request_id'] in bad.json()['error'] and 'simulated' not in bad.text
    assert good.status_code == 200
    assert bad.json()['request_id'] in caplog.text

def test_metrics_parse_and_count(client):
    for _ in range(6): post(client)
    post(client, headers={})
    assert client.get('/metrics').status_code == 401   # metrics sit behind the token too
    fams = {f.name: f for f in text_string_to_metric_families(client.get('/metrics', headers=AUTH).text)}
    by_status = {(s.labels['path'], s.labels['status']): s.value for s in fams['specft_requests'].samples if s.name.endswith('_total')}
    assert by_status[('/predict', '200')] == 6 and by_status[('/predict', '401')] == 1
    assert sum(s.value for s in fams['specft_predictions'].samples if s.name.endswith('_total')) == 6
    assert {'specft_request_seconds', 'specft_batch_size', 'specft_input_tokens', 'specft_drift_psi', 'specft_drift_alert'} <= set(fams)
    assert {s.labels['kind'] for s in fams['specft_drift_psi'].samples} == {'label', 'length'}

def test_drift_alert_fires_on_shifted_texts(tiny, caplog):
    _, pred, ref = tiny
    with TestClient(create_app(pred, ServeConfig(drift_min=40, drift_window=100), ref)) as c, caplog.at_level(logging.WARNING, 'specft.serve'):
        for i in range(12): c.post('/predict', json={'texts': [f'reset {i}'] * 4})
        fams = {f.name: f for f in text_string_to_metric_families(c.get('/metrics').text)}
    assert fams['specft_drift_alert'].samples[0].value == 1.0
    assert 'drift alert' in caplog.text

def test_request_log_holds_no_personal_data(tiny, caplog):
    _, pred, _ = tiny
    secret = 'Write to jane.doe@example.com or call +1 415 555 0100 about card 4111 1111 1111 1111.'
    for log_requests in (False, True):
        caplog.clear()
        with TestClient(create_app(pred, ServeConfig(log_requests=log_requests))) as c, caplog.at_level(logging.INFO, 'specft.serve'):
            assert c.post('/predict', json={'texts': [secret]}).status_code == 200
        assert caplog.records, 'a request line is logged'
        for s in ('jane.doe@example.com', '555 0100', '4111 1111'): assert s not in caplog.text
        assert ('[EMAIL]' in caplog.text) == log_requests

def test_load_2000_requests_16_clients(tiny):
    "A real uvicorn server on a free loopback port: 2,000 requests from 16 concurrent clients, no errors"
    _, pred, _ = tiny
    with ServerThread(create_app(pred, ServeConfig(token=TOKEN))) as srv:
        t0 = time.perf_counter()
        r = asyncio.run(asyncio.wait_for(load_test(srv.url, n=2000, concurrency=16, headers=AUTH), timeout=600))
    print(f"\nload test: {r['n']} requests, {r['errors']} errors, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
          f"{r['rps']:.0f} requests/s")
    assert r['n'] == 2000 and r['errors'] == 0

def test_read_token_and_bind_checks(tmp_path):
    (tmp_path/'t').write_text(TOKEN + '\n')
    assert read_token(str(tmp_path/'t')) == TOKEN
    assert read_token(None, env={'SPECFT_TOKEN': TOKEN}) == TOKEN

def sh(*args, env=None):
    return subprocess.run([SPECFT, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, 'HF_HUB_OFFLINE': '1', **(env or {})})

def test_cli_serve_errors_are_one_line_exit_2(tiny, tmp_path, capsys, monkeypatch):
    "Each error a user can cause: one line, exit 2; the command itself for the first, `specft.cli.main` in this process for the rest"
    from specft.cli import main
    monkeypatch.setenv('SPECFT_TOKEN', '')
    run_dir = str(tiny[0])
    (tmp_path/'unreadable').mkdir()
    (tmp_path/'plain').mkdir()
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0)); busy.listen(); port = str(busy.getsockname()[1])
        cases = [((str(tmp_path/'missing'),), 'not a finished specft run folder'),
                 ((str(tmp_path/'plain'),), 'not a finished specft run folder'),
                 ((run_dir, '--port', port), 'in use'),
                 ((run_dir, '--token-file', str(tmp_path/'nope.txt')), 'cannot read it'),
                 ((run_dir, '--token-file', str(tmp_path/'unreadable')), 'cannot read it'),
                 ((run_dir, '--host', '0.0.0.0'), '--token-file')]
        r = sh('serve', *cases[0][0], env={'SPECFT_TOKEN': ''})
        assert r.returncode == 2 and cases[0][1] in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        for args, msg in cases[1:]:
            code, err = main(['serve', *args]), capsys.readouterr().err
            assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, (args, err)

def worker_pids(pid:int)->list[int]:
    "The uvicorn worker processes `pid` started (Linux: read from /proc): children running multiprocessing's spawn"
    out = []
    for d in Path('/proc').iterdir():
        try:
            ppid = int((d/'stat').read_text().rsplit(')', 1)[1].split()[1])
            if ppid == pid and b'spawn_main' in (d/'cmdline').read_bytes(): out.append(int(d.name))
        except (OSError, ValueError, IndexError): continue
    return out

@pytest.mark.parametrize('workers', [1, 2])
def test_cli_serve_runs_and_answers(tiny, tmp_path, workers):
    "`specft serve [--workers 2]` as a user starts it: health, predictions with the token from every worker, then a clean stop"
    from specft.serve import free_port
    import httpx
    port = free_port()
    (tmp_path/'tok').write_text(TOKEN)
    p = subprocess.Popen([SPECFT, 'serve', str(tiny[0]), '--port', str(port), '--token-file', str(tmp_path/'tok'),
                          '--workers', str(workers)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    try:
        for _ in range(600):
            try:
                if httpx.get(f'http://127.0.0.1:{port}/health', timeout=1).status_code == 200: break
            except httpx.HTTPError: time.sleep(0.1)
        rs = [httpx.post(f'http://127.0.0.1:{port}/predict', json={'texts': ['Good drug.']}, headers=AUTH, timeout=30)
              for _ in range(20)]   # a new connection each: the kernel spreads them over the workers
        assert all(r.status_code == 200 and r.json()['predictions'][0]['label'] in tiny[1].labels for r in rs)
        assert len({json.dumps(r.json()['predictions']) for r in rs}) == 1   # every worker holds the same model
        if sys.platform == 'linux':
            pids = worker_pids(p.pid)
            assert len(pids) == (workers if workers > 1 else 0), pids   # one process serves when workers == 1
    finally:
        p.terminate(); out = p.communicate(timeout=60)[0]
    assert p.returncode is not None and 'Good drug' not in out and TOKEN not in out
    if sys.platform == 'linux' and workers > 1:
        for _ in range(50):
            if not any(Path(f'/proc/{w}').exists() for w in pids): break
            time.sleep(0.1)
        assert not any(Path(f'/proc/{w}').exists() for w in pids), 'a worker outlived the server'

# Runs trained with domain knowledge (lesson 20): pairs travel with their texts, rules apply as in Predictor

@pytest.fixture(scope='module')
def knowledge(tmp_path_factory):
    "Run folders of a pair + rule-offset run and a rule-override run, and their predictors"
    from specft.knowledge import DRUG_RULES
    d, kn = tmp_path_factory.mktemp('serve-knowledge'), dict(model='tiny', epochs=1, max_len=32, max_train_rows=60, device='cpu')
    pair = run(RunConfig(**kn, text_pair_col='condition', rules=str(DRUG_RULES), out=str(d/'pair'))).run_dir
    over = run(RunConfig(**kn, rules=str(DRUG_RULES), rules_mode='override', out=str(d/'over'))).run_dir
    return {'pair': (pair, Predictor.load(pair, 'cpu')), 'override': (over, Predictor.load(over, 'cpu'))}

TEXTS = ['Honestly I would not recommend it.', 'A life saver, no side effects.', 'It was fine.', 'Made me dizzy.']
PAIRS = ['Pain', 'Acne', '', 'Migraine']

def probs(r):
    assert r.status_code == 200, r.text
    return [list(p['probabilities'].values()) for p in r.json()['predictions']]

def served_app(run_dir, monkeypatch):
    "The app `specft serve RUN_DIR` would run (uvicorn stubbed out)"
    import uvicorn
    from specft.serve import serve
    apps = []
    monkeypatch.setattr(uvicorn, 'run', lambda app, **kw: apps.append(app))
    serve(run_dir, ServeConfig())
    return apps[0]

def test_a_pair_run_is_served_with_one_pair_per_text(knowledge, monkeypatch):
    run_dir, pred = knowledge['pair']
    with TestClient(served_app(run_dir, monkeypatch)) as c:
        np.testing.assert_allclose(probs(c.post('/predict', json={'texts': TEXTS, 'pairs': PAIRS})), pred.predict_proba(TEXTS, PAIRS), atol=1e-6)
        for body, msg in [({'texts': TEXTS}, "trained with text pairs (its 'condition' field as a second segment)"),
                          ({'texts': TEXTS, 'pairs': PAIRS[:3]}, '4 texts but 3 pairs'),
                          ({'texts': TEXTS, 'pairs': [1, 2, 3, 4]}, 'must be a list of 4 strings'),
                          ({'texts': TEXTS, 'pairs': 'Pain'}, '4 texts but a str'),
                          ({'texts': TEXTS[:1], 'pairs': ['x' * 20_001]}, 'over 20000 characters')]:
            r = c.post('/predict', json=body)
            assert r.status_code == 422 and msg in r.json()['error'], (body, r.text)

def test_pairs_stay_with_their_texts_in_shared_batches(knowledge):
    "Concurrent requests are batched together; each text still meets its own pair"
    import httpx
    _, pred = knowledge['pair']
    app = create_app(pred, ServeConfig(max_wait_ms=50))
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url='http://t') as c:
            return await asyncio.gather(*[c.post('/predict', json={'texts': [t], 'pairs': [p]}) for t in TEXTS for p in PAIRS])
    got = [probs(r)[0] for r in asyncio.run(go())]
    passes = next(s.value for s in app.state.metrics.batch.collect()[0].samples if s.name.endswith('_count'))
    assert passes < len(TEXTS) * len(PAIRS)   # some forward passes served several requests
    np.testing.assert_allclose(got, pred.predict_proba([t for t in TEXTS for _ in PAIRS], [p for _ in TEXTS for p in PAIRS]), atol=1e-6)

def test_rules_are_applied_as_predictor_applies_them(knowledge, monkeypatch, tmp_path):
    from specft.deploy import export_run
    over_dir, over = knowledge['override']
    export_run(over_dir, tmp_path/'onnx', 'onnx')   # an exported folder serves the same rules
    for folder in (over_dir, tmp_path/'onnx'):
        with TestClient(served_app(folder, monkeypatch)) as c:
            P = probs(c.post('/predict', json={'texts': TEXTS}))
            r = c.post('/predict', json={'texts': TEXTS, 'pairs': PAIRS})
        np.testing.assert_allclose(P, over.predict_proba(TEXTS), atol=1e-4 if folder != over_dir else 1e-6)
        assert r.status_code == 422 and 'trained on texts alone' in r.json()['error']
    assert (np.array(P) == 1).any(1).tolist() == (over.knowledge['rules'].hits(TEXTS) * np.array(over.knowledge['active'])).any(1).tolist()
