"Headless tests of specft.widgets: the panel is built, set and clicked from code, with no kernel or browser"
import dataclasses, html, json, re, shlex
from pathlib import Path
from types import SimpleNamespace
import pandas as pd
import pytest
import torch
import ipywidgets as W
import specft.pipeline as pipeline
from specft.core import SpecftError, SpecftConfigError, choose_precision, cpu_has_bf16
from specft.pipeline import RunConfig
from specft.train import Callback
from specft.widgets import (TrainPanel, config_defaults, config_to_code, config_to_command, read_head, uploaded_files,
                            save_upload, show, plot_progress)

TINY = dict(model='tiny', epochs=1, max_len=64, batch_size=8, max_train_rows=40)

def tiny_panel(**kw)->TrainPanel:
    "A panel set, by its controls, to a run of seconds"
    p = TrainPanel(**kw)
    for k, v in TINY.items(): p.controls[k].value = v
    return p

@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    "Every test runs in its own folder, so auto-named run folders never meet"
    monkeypatch.chdir(tmp_path)
    return tmp_path

@pytest.fixture
def tickets(tmp_path)->Path:
    "A small user file whose columns are not called text and label"
    df = pd.DataFrame({'id': range(1, 13), 'body': [f'ticket {i} about {t}' for i, t in enumerate(['billing', 'login', 'refund'] * 4)],
                       'team': ['finance', 'it', 'finance'] * 4})
    df.to_csv(tmp_path/'tickets.csv', index=False)
    return tmp_path/'tickets.csv'

# --- settings ---------------------------------------------------------------------------------------------------

def test_defaults_are_the_cli_defaults():
    p = TrainPanel()
    d = config_defaults()
    assert d == {f.name: f.default for f in dataclasses.fields(RunConfig)}
    from specft.cli import build_parser
    assert d == {k: v for k, v in vars(build_parser().parse_args(['train'])).items() if k != 'command'}
    assert p.config() == RunConfig()
    assert (p.lr.value, p.epochs.value, p.batch_size.value, p.max_len.value, p.warmup.value, p.weight_decay.value,
            p.seed.value, p.device.value) == (pipeline.DEFAULT_LR[d['method']], pipeline.DEFAULT_EPOCHS[d['method']], d['batch_size'], d['max_len'], d['warmup'],
                                              d['weight_decay'], d['seed'], d['device'])
    assert (p.class_weights.value, p.logit_adjust.value) == (pipeline.DEFAULT_CLASS_WEIGHTS[d['method']], pipeline.DEFAULT_LOGIT_ADJUST[d['method']])

def test_methods_follow_the_pipeline(monkeypatch):
    assert [v for _, v in TrainPanel().method.options] == list(pipeline.METHODS)
    monkeypatch.setattr(pipeline, 'METHODS', (*pipeline.METHODS, 'lora'))
    assert ('LoRA', 'lora') in TrainPanel().method.options

def test_lr_and_epochs_follow_the_method():
    p = TrainPanel()
    p.method.value = 'lora'
    assert p.lr.value == pytest.approx(pipeline.DEFAULT_LR['lora']) and p.config().lr is None
    assert p.epochs.value == pipeline.DEFAULT_EPOCHS['lora'] != pipeline.DEFAULT_EPOCHS['full'] and p.config().epochs is None
    assert p.config().train_config().epochs == pipeline.DEFAULT_EPOCHS['lora']
    p.lr.value = 3e-4; p.epochs.value = 7; p.method.value = 'adapter'
    assert (p.config().lr, p.config().epochs) == (3e-4, 7)   # a value the user set stays
    p.epochs.value = pipeline.DEFAULT_EPOCHS['adapter']; p.method.value = 'lora'
    assert p.epochs.value == pipeline.DEFAULT_EPOCHS['lora'] and p.config().epochs is None

def test_class_weights_and_logit_adjust_follow_the_method():
    p = TrainPanel()
    assert (p.class_weights.value, p.logit_adjust.value) == ('sqrt', 0.0) and p.config() == RunConfig()   # full: the CV's recipe
    p.method.value = 'lora'   # LoRA keeps no class weights and the logit-adjusted loss
    assert (p.class_weights.value, p.logit_adjust.value) == ('none', 0.5)
    assert (p.config().class_weights, p.config().logit_adjust) == (None, None)
    assert (p.config().train_config().class_weights, p.config().train_config().logit_adjust) == ('none', 0.5)
    p.class_weights.value = 'auto'; p.method.value = 'full'   # a value the user set stays; the untouched one follows
    assert (p.config().class_weights, p.logit_adjust.value, p.config().logit_adjust) == ('auto', 0.0, None)
    p.logit_adjust.value = 0.25
    assert p.config().logit_adjust == 0.25
    assert config_to_command(p.config()).endswith('--class-weights auto --logit-adjust 0.25')

def test_precision_shown_next_to_the_device():
    p = TrainPanel()
    p.device.value = 'cpu'
    assert f"<b>{'bf16' if cpu_has_bf16() else 'fp32'}</b>" in p.precision_info.value
    p.device.value = 'auto'
    assert f"<b>{choose_precision('auto', 'auto')}</b>" in p.precision_info.value
    if not torch.cuda.is_available():
        p.device.value = 'cuda'
        assert 'no CUDA GPU' in p.precision_info.value
        p.start()  # a message, not a raise
        assert not p.running and 'no CUDA GPU' in p.message

def test_controls_build_the_config():
    p = tiny_panel()
    p.class_weights.value, p.logit_adjust.value, p.lr.value, p.seed.value, p.task.value = 'auto', 0.1 + 0.2, 3e-5, 7, 'condition'
    assert p.config().non_default() == {**TINY, 'class_weights': 'auto', 'logit_adjust': 0.3, 'lr': 3e-5, 'seed': 7,
                                        'task': 'condition'}
    p.max_train_rows.value, p.out.value = 0, '  '
    assert p.config().max_train_rows is None and p.config().out is None
    p.lr.value, p.warmup.value = 10**-4.1, 0.1 + 0.05  # what dragging a slider gives: 7.943e-05, 0.15000000000000002
    assert (p.config().lr, p.config().warmup) == (7.9e-05, 0.15)

def test_add_control():
    p = TrainPanel()
    w = p.add_control('pooling', W.Dropdown(options=['mean', 'cls'], value=p.defaults['pooling']), tab='Model')
    assert w in p.tabs['Model'].children
    w.value = 'cls'
    assert p.config().pooling == 'cls' and 'pooling' in p.show_code()
    with pytest.raises(SpecftConfigError, match="no field 'poolng'"): p.add_control('poolng', W.Text())

# --- show code --------------------------------------------------------------------------------------------------

def test_code_is_exact_python():
    cfg = RunConfig(data="it's here.csv", model='tiny', lr=3e-5, warmup=0.25, max_train_rows=40, mask_pii=False, overwrite=True)
    code = config_to_code(cfg)
    assert code.splitlines()[0] == 'from specft.pipeline import RunConfig, run'
    ns = {}
    exec(code.replace('run(RunConfig', 'got = (RunConfig'), ns)
    assert ns['got'] == cfg
    assert config_to_code(RunConfig()).endswith('\nrun(RunConfig())')

def test_command_has_kebab_flags_and_bare_booleans():
    cfg = RunConfig(data='my data.csv', text_col='body', max_len=64, overwrite=True, mask_pii=False)
    cmd = config_to_command(cfg)
    assert cmd == "specft train --data 'my data.csv' --text-col body --max-len 64 --overwrite --no-mask-pii"
    assert config_to_command(RunConfig()) == 'specft train'

def test_command_parses_back_with_the_cli():
    from specft.cli import build_parser, config_from_args
    cfg = RunConfig(data='my data.csv', text_col='body', lr=3e-5, max_len=64, resume=True, mask_pii=False, max_train_rows=40)
    args = build_parser().parse_args(shlex.split(config_to_command(cfg))[1:])
    assert config_from_args(args) == cfg

# --- data -------------------------------------------------------------------------------------------------------

def test_read_head_reads_as_training_reads(tmp_path):
    from specft.corpus import read_table
    good = 'text,label\n' + 'fine,a\n' * 5
    (tmp_path/'f.csv').write_text(good + 'broken,"unclosed\n' + 'x,y,z,w\n' * 3)
    with pytest.raises(SpecftError) as head_err: read_head(tmp_path/'f.csv', nrows=5)  # a file training refuses
    with pytest.raises(SpecftError) as train_err: read_table(tmp_path/'f.csv')
    assert str(head_err.value) == str(train_err.value)  # is refused by the preview, with training's message
    with pytest.raises(SpecftError, match='not found'): read_head(tmp_path/'missing.csv')
    (tmp_path/'sheet.csv').write_bytes(b'PK\x03\x04' + bytes(64))
    with pytest.raises(SpecftError, match='looks like a zip archive'): read_head(tmp_path/'sheet.csv')
    (tmp_path/'latin.csv').write_bytes('text,label\ncafé,a\nnaïve,b\n'.encode('cp1252'))
    with pytest.warns(UserWarning, match='cp1252'): assert read_head(tmp_path/'latin.csv').text.tolist() == ['café', 'naïve']
    with pytest.warns(UserWarning), pytest.raises(SpecftError, match="no column 'body'"): read_head(tmp_path/'latin.csv', columns=['body'])

def test_uploads_of_both_widget_versions(tmp_path):
    v8 = SimpleNamespace(value=({'name': 'a.csv', 'type': 'text/csv', 'size': 4, 'content': memoryview(b'x,y\n')},))
    v7 = SimpleNamespace(value={'a.csv': {'metadata': {'name': 'a.csv', 'size': 4}, 'content': b'x,y\n'}})
    evil = SimpleNamespace(value=({'name': '../../a.csv', 'content': b'x,y\n'},))
    for up in (v8, v7, evil): assert uploaded_files(up) == [('a.csv', b'x,y\n')]
    assert save_upload(evil, tmp_path/'up') == tmp_path/'up'/'a.csv'
    assert save_upload(SimpleNamespace(value=()), tmp_path) is None and save_upload(SimpleNamespace(value={}), tmp_path) is None

def test_bundled_preview():
    p = TrainPanel()
    assert p.text_col.disabled and (p.text_col.value, p.label_col.value) == ('text', 'label')
    table = p.preview_out.outputs[2]['data']['text/plain']
    assert all(k in table for k in ('negative', 'neutral', 'positive', 'train', 'test'))

def test_preview_shows_what_training_sees():
    from specft.corpus import load_corpus
    from specft.clean import prepare_corpus
    p = TrainPanel()
    rows = p.preview_rows
    assert rows.columns.tolist() == ['text', 'label', 'raw text'] and rows.index.name == 'row'
    trained = prepare_corpus(load_corpus('drug-reviews'), pipeline.preprocessing_of(RunConfig()))[0].train.set_index('row')
    assert rows.text.tolist() == trained.text[rows.index].tolist()
    shown = p.preview_out.outputs[1]['data']['text/html']
    assert "didn't want" in shown and 'didn&amp;#039;t' in shown  # the cleaned text, and the raw one (escaped for html) beside it
    assert '\\r\\r\\n' in ''.join(rows['raw text']) and not any('\r' in t or t.startswith('"') for t in rows.text)

def test_preview_masks_as_configured(tmp_path):
    (tmp_path/'m.csv').write_text('text,label\nwrite to jo@example.com,a\n"call 555-123-4567\r\nsoon",b\n')
    p = TrainPanel()
    p.source.value, p.path.value = 'file', str(tmp_path/'m.csv')
    assert p.preview_rows.text.tolist() == ['write to [EMAIL]', 'call [PHONE] soon']
    assert p.preview_rows['raw text'].tolist() == ['write to jo@example.com', 'call 555-123-4567\\r\\nsoon']
    assert 'personal data masked' in p.preview_out.outputs[0]['data']['text/plain']
    p.add_control('mask_pii', W.Checkbox(value=True)).value = False  # the preview follows the setting
    assert p.preview_rows.text.tolist() == ['write to jo@example.com', 'call 555-123-4567 soon']
    assert 'personal data not masked' in p.preview_out.outputs[0]['data']['text/plain']

def test_preview_reports_what_training_would(tmp_path):
    (tmp_path/'e.csv').write_text('text,label\nfine,a\n,b\nok,b\n')
    p = TrainPanel()
    p.source.value, p.path.value = 'file', str(tmp_path/'e.csv')
    assert p.preview_rows is None and 'empty text (rows 2)' in p.message  # make_frame's message, before Start
    (tmp_path/'w.csv').write_bytes('text,label\ncafé,a\nthé,b\n'.encode('cp1252'))
    p.path.value = str(tmp_path/'w.csv')
    assert p.preview_rows.text.tolist() == ['café', 'thé'] and 'cp1252' in p.message

def test_file_columns_and_preview(tickets):
    p = TrainPanel()
    p.source.value = 'file'
    p.path.value = str(tickets)
    assert list(p.text_col.options) == ['id', 'body', 'team'] and p.text_col.value is None and not p.text_col.disabled
    assert 'as read' in p.preview_out.outputs[0]['data']['text/plain'] and 'Choose the text' in p.message
    p.text_col.value, p.label_col.value = 'body', 'team'
    assert p.preview_out.outputs[2]['data']['text/plain'].split() == ['count', 'team', 'finance', '8', 'it', '4']
    assert p.preview_rows.label.tolist() == ['finance', 'it', 'finance', 'finance', 'it'] and p.message == ''
    assert p.config().non_default() == {'data': str(tickets), 'text_col': 'body', 'label_col': 'team'}

def test_upload_is_saved_and_used(tickets, tmp_path):
    p = TrainPanel(upload_dir=tmp_path/'uploads')
    p.source.value = 'upload'
    content = tickets.read_bytes()
    if int(W.__version__.split('.')[0]) >= 8:
        import datetime
        p.upload.value = ({'name': 'tickets.csv', 'type': 'text/csv', 'size': len(content), 'content': memoryview(content),
                           'last_modified': datetime.datetime.now()},)
    else:
        p.upload.metadata, p.upload.data = [{'name': 'tickets.csv', 'type': 'text/csv', 'size': len(content)}], [content]
        p.upload._counter += 1
    saved = tmp_path/'uploads'/'tickets.csv'
    assert saved.read_bytes() == content and list(p.text_col.options) == ['id', 'body', 'team']
    p.text_col.value, p.label_col.value = 'body', 'team'
    assert p.config().data == str(saved)

def test_hub_source(monkeypatch):
    import specft.widgets as widgets
    calls = []
    def fake_head(name, nrows=200):
        calls.append(name)
        return pd.DataFrame({'sentence': ['good', 'bad', 'fine'], 'sentiment': ['pos', 'neg', 'pos']})
    monkeypatch.setattr(widgets, 'hub_head', fake_head)
    p = TrainPanel()
    p.source.value = 'hub'
    assert calls == []  # the hub is not asked until a name is given
    p.hub.value = 'hf:someone/reviews'
    assert list(p.text_col.options) == ['sentence', 'sentiment'] and p.text_col.value is None
    p.text_col.value, p.label_col.value = 'sentence', 'sentiment'
    assert calls == ['someone/reviews']  # streamed once, not again for each column choice
    assert 'pos' in p.preview_out.outputs[2]['data']['text/plain']
    assert p.config().non_default() == {'data': 'hf:someone/reviews', 'text_col': 'sentence', 'label_col': 'sentiment'}

def test_hub_errors_are_data_errors(monkeypatch):
    import datasets
    from specft.widgets import hub_head
    def offline(*a, **k): raise ConnectionError('no network')
    monkeypatch.setattr(datasets, 'load_dataset', offline)
    with pytest.raises(SpecftError, match='could not read its train split.*ConnectionError'): hub_head('someone/reviews')
    seen = []
    def rows(name, config=None, **kw): seen.append((name, config)); return iter([{'text': 'a', 'label': 'x'}] * 3)
    monkeypatch.setattr(datasets, 'load_dataset', rows)
    assert len(hub_head('nyu-mll/glue:sst2', nrows=2)) == 2 and len(hub_head('hf:imdb')) == 3
    assert seen == [('nyu-mll/glue', 'sst2'), ('imdb', None)]   # NAME:CONFIG read as specft.corpus reads it
    monkeypatch.setattr(datasets, 'load_dataset', offline)
    p = TrainPanel()
    p.source.value = 'hub'; p.hub.value = 'someone/reviews'
    assert 'ConnectionError' in p.message and p.preview_out.outputs == ()

@pytest.mark.parametrize('setup, message', [
    (lambda p, f: setattr(p.path, 'value', str(f)), 'no text column chosen'),
    (lambda p, f: setattr(p.path, 'value', str(f.parent/'missing.csv')), 'not found'),
    (lambda p, f: (f.with_suffix('.xlsx').write_bytes(b'PK\x03\x04'), setattr(p.path, 'value', str(f.with_suffix('.xlsx')))),
     'unknown file type'),
    (lambda p, f: setattr(p.path, 'value', ''), 'no file given'),
    (lambda p, f: (setattr(p.path, 'value', str(f)), setattr(p.text_col, 'value', 'body'), setattr(p.label_col, 'value', 'body')),
     'both the text and the label column'),
    (lambda p, f: (setattr(p.path, 'value', str(f)), setattr(p.text_col, 'value', 'body'), setattr(p.label_col, 'value', 'team'),
                   setattr(p.model, 'value', ' ')), 'model: empty'),
])
def test_bad_settings_are_a_message(tickets, setup, message):
    p = TrainPanel()
    p.source.value = 'file'
    setup(p, tickets)
    p.start_btn.click()
    assert not p.running and p._thread is None
    assert message in p.message and message in p.status.value
    p.code_btn.click()
    assert message in p.message

def test_nothing_uploaded_is_a_message():
    p = TrainPanel()
    p.source.value = 'upload'
    assert p.start() is None and not p.running and 'nothing uploaded yet' in p.message

# --- runs -------------------------------------------------------------------------------------------------------

def buttons(p)->list:
    "Each of Start and Stop: whether it is disabled, its style"
    return [(b.disabled, b.button_style) for b in (p.start_btn, p.stop_btn)]

def test_disabled_buttons_look_disabled():
    p = tiny_panel()
    assert buttons(p) == [(False, 'primary'), (True, '')]  # idle: Stop is grey, not red
    assert p.stop_btn.tooltip == 'No run is going'
    p.start_btn.click()
    assert buttons(p) == [(True, ''), (False, 'danger')] and 'Stop it first' in p.start_btn.tooltip
    p.stop_btn.click()
    assert p.stop_btn.disabled and p.stop_btn.button_style == '' and 'Stopping' in p.stop_btn.tooltip
    p.wait(timeout=300)
    assert buttons(p) == [(False, 'primary'), (True, '')]

def test_run_from_the_panel_and_its_code(in_tmp):
    p = tiny_panel(redraw_every=0)
    p.start_btn.click()
    assert p.running and buttons(p) == [(True, ''), (False, 'danger')]
    res = p.wait(timeout=300)
    run_dir = p.run_dir
    # auto-named like the CLI's, under ./runs, and shown in the panel
    assert run_dir.parent == Path('runs') and run_dir.name.startswith('drug-reviews-tiny-')
    assert str(run_dir.absolute()) in p.run_dir_info.value and str(res.run_dir) in p.message
    hist = pd.read_csv(run_dir/'history.csv')
    assert (hist.split == 'val').sum() == 1 and len(hist) >= 1
    metrics = json.loads((run_dir/'metrics.json').read_text())
    assert metrics['n_train'] == 40 and 'baseline' in metrics
    assert p.progress.value == p.progress.max == p.state.total_steps and p.progress.bar_style == 'success'
    assert buttons(p) == [(False, 'primary'), (True, '')]
    assert [list(o['data'])[0] for o in p.results_out.outputs] == ['text/html', 'image/png']
    assert 'accuracy' in p.results_out.outputs[0]['data']['text/html']
    # three decimals, as `specft train` prints them
    assert p.results_out.outputs[0]['data']['text/plain'] == res.table().to_string()
    decimals = re.findall(r'\d\.(\d+)', p.results_out.outputs[0]['data']['text/html'])
    assert len(decimals) == 3 * len(res.table()) and {len(d) for d in decimals} == {3}
    assert p.plot_out.outputs[0]['data']['image/png'] and p.val_history
    assert len(res.y_true) == len(res.y_pred) == metrics['n_test'] and res.labels == ['negative', 'neutral', 'positive']
    # "Show code" runs the same settings: executed, it writes a run whose recorded settings are the panel's
    code = p.show_code()
    assert code in html.unescape(p.code_info.value) and config_to_command(p.config()) in html.unescape(p.code_info.value)
    before = set(Path('runs').iterdir())
    exec(code, {})
    (new,) = set(Path('runs').iterdir()) - before
    cfg_panel = json.loads((run_dir/'run.json').read_text())['config']
    cfg_code = json.loads((new/'run.json').read_text())['config']
    assert {**cfg_code, 'out': None} == {**cfg_panel, 'out': None}

def test_stop_ends_within_a_step():
    class StopAfterFirstStep(Callback):
        def __init__(self): self.first = self.last = None
        def on_step_end(self, state):
            if self.first is None: self.first = state.step; panel.stop_btn.click()
            self.last = state.step
    panel = tiny_panel(callbacks=[cb := StopAfterFirstStep()])
    panel.epochs.value, panel.max_train_rows.value = 2, 80
    panel.start()
    panel.wait(timeout=300)
    assert cb.last <= cb.first + 1
    assert panel.state.step <= cb.first + 1 < panel.state.total_steps
    assert (panel.run_dir/'metrics.json').exists() and panel.message.startswith('Stopped at step')

def test_stop_before_training_starts_and_no_second_start():
    p = tiny_panel()
    p.start(); t = p._thread
    p.start()  # refused while the first run goes
    assert p._thread is t and 'going already' in p.message
    p.stop()   # before the engine's first step: it stops after that step
    p.wait(timeout=300)
    assert p.state.step <= 1 and p.error is None

def test_error_inside_run_is_a_message(in_tmp):
    (in_tmp/'taken').mkdir(); (in_tmp/'taken'/'notes.txt').write_text('mine')
    p = tiny_panel()
    p.out.value = 'taken'
    p.start()
    assert p.wait(timeout=300) is None
    assert isinstance(p.error, SpecftError) and 'exists already' in p.message and '#b00020' in p.status.value
    assert p.progress.bar_style == 'danger' and buttons(p) == [(False, 'primary'), (True, '')]

def test_unexpected_error_is_shown_and_raised_again():
    class Broken(Callback):
        def on_step_end(self, state): raise RuntimeError('a bug in a callback')
    p = tiny_panel(callbacks=[Broken()])
    p.start()
    with pytest.raises(RuntimeError, match='a bug in a callback'): p.wait(timeout=300)
    assert 'RuntimeError' in p.message
    assert 'Traceback' in p.log_out.outputs[0]['data']['text/plain']

# --- display ----------------------------------------------------------------------------------------------------

def test_repr_is_one_line_of_text():
    p = TrainPanel()
    assert repr(p).startswith('TrainPanel(idle') and '\n' not in repr(p)
    if hasattr(p, '_repr_mimebundle_'): assert p._repr_mimebundle_()['text/plain'].startswith('TrainPanel(idle')  # ipywidgets 8

def test_show_fills_an_output_without_a_kernel():
    out = W.Output()
    show(out, pd.DataFrame({'a': [1]}), plot_progress([(1, 1.0)], [(1, {'loss': 1.0, 'accuracy': .5, 'macro_f1': .4})]), 'x')
    assert [list(o['data'])[0] for o in out.outputs] == ['text/html', 'image/png', 'text/plain']

def test_custom_tab_sets_knowledge_and_adversarial_fields(tmp_path):
    "The Custom tab's controls reach RunConfig: blank text is None, untouched controls stay at their defaults"
    p = TrainPanel()
    assert p.config() == RunConfig()   # an untouched panel is the default run
    rules = tmp_path/'rules.csv'; rules.write_text('pattern,label\nworst,negative\n')
    p.text_pair_col.value, p.rules.value, p.rules_mode.value = ' condition ', str(rules), 'override'
    p.adversarial.value, p.adv_eps.value = 'fgm', 0.5
    s = p.settings()
    assert (s['text_pair_col'], s['rules'], s['rules_mode'], s['adversarial'], s['adv_eps']) == ('condition', str(rules), 'override', 'fgm', 0.5)
    assert s['label_groups'] is None and s['adv_steps'] == RunConfig().adv_steps
    cmd = config_to_command(RunConfig(**s))
    assert all(f in cmd for f in ('--text-pair-col condition', '--rules-mode override', '--adversarial fgm', '--adv-eps 0.5')), cmd
