"specft.pipeline: one source of truth for the training defaults, and the run folder's life cycle."
import dataclasses, json
import pytest
from specft.core import SpecftConfigError
from specft.pipeline import RunConfig, check_config, prepare_run_dir, run, BY_METHOD, FULL_RECIPE, METHODS
from specft.train import Callback, TrainConfig, check_train_config

SHARED = sorted({f.name for f in dataclasses.fields(TrainConfig)} & {f.name for f in dataclasses.fields(RunConfig)})

def test_train_config_and_run_config_cannot_disagree():
    "Each shared setting has one default: the engine's, or for a per-method field (None) its method's, in BY_METHOD"
    assert {'class_weights', 'logit_adjust', 'select_metric', 'epochs', 'lr'} <= set(SHARED)
    assert set(FULL_RECIPE) <= set(BY_METHOD) and set(BY_METHOD) & set(SHARED) == set(FULL_RECIPE)
    engine = TrainConfig()
    for method in METHODS:
        front = RunConfig(method=method)
        for name in SHARED:
            if name in BY_METHOD:
                assert getattr(front, name) is None and getattr(front.train_config(), name) == BY_METHOD[name][method], (method, name)
            else: assert getattr(front, name) == getattr(engine, name) == getattr(front.train_config(), name), (method, name)
    # full fine-tuning trains the cross-validated recipe; head-only training and the PEFT methods keep the engine's loss
    assert RunConfig().train_config() == TrainConfig(**FULL_RECIPE) != engine
    assert FULL_RECIPE == dict(lr=5e-5, epochs=8, class_weights='sqrt', logit_adjust=0.0)
    assert RunConfig(method='head').train_config() == engine
    for method in set(METHODS) - {'full', 'head'}:
        tc = RunConfig(method=method).train_config()
        assert (tc.class_weights, tc.logit_adjust) == (engine.class_weights, engine.logit_adjust) == ('none', 0.5), method

def test_a_per_method_setting_given_wins_and_the_others_keep_their_defaults(tmp_path):
    "--class-weights none alone on full fine-tuning: no weights, the method's plain cross-entropy; run.json holds both"
    from specft.cli import build_parser, config_from_args
    cfg = config_from_args(build_parser().parse_args(['train', '--class-weights', 'none']))
    assert (cfg.class_weights, cfg.logit_adjust) == ('none', None)
    assert (cfg.train_config().class_weights, cfg.train_config().logit_adjust) == ('none', 0.0)
    res = run(RunConfig(**TINY, method='lora', logit_adjust=0.25, out=str(tmp_path/'r')))
    saved = json.loads((res.run_dir/'run.json').read_text())['config']
    assert (saved['class_weights'], saved['logit_adjust'], saved['epochs']) == ('none', 0.25, 2)
    assert 'logit-adjusted loss (tau = 0.25)' in (res.run_dir/'card.md').read_text()

def test_train_config_passes_every_shared_field():
    for name in SHARED:
        marker = object()   # no default can equal it: the value must come from the RunConfig
        assert getattr(dataclasses.replace(RunConfig(), **{name: marker}).train_config(), name) is marker, name

def test_each_training_setting_is_checked_once_by_the_engine():
    "check_config leaves the shared settings to check_train_config: the same message from both"
    for bad in (dict(select_metric='f1'), dict(class_weights='big'), dict(logit_adjust=-1.0), dict(warmup=1.5),
                dict(epochs=0), dict(lr=0.0), dict(precision='fp8')):
        with pytest.raises(SpecftConfigError) as a: check_config(RunConfig(**bad))
        with pytest.raises(SpecftConfigError) as b: check_train_config(TrainConfig(**bad))
        assert str(a.value) == str(b.value)

TINY = dict(model='tiny', epochs=2, max_len=32, max_train_rows=60, device='cpu')

class Folders(Callback):
    "What checkpoints/ holds after each checkpoint"
    def __init__(self): self.seen = []
    def on_checkpoint(self, state, path): self.seen.append(sorted(p.name for p in path.parent.iterdir()))

def test_run_folder_life_cycle(tmp_path):
    # select by a metric: kept/ exists while training, and goes with the rest at the end
    f = Folders(); res = run(RunConfig(**TINY, select_metric='macro_f1', out=str(tmp_path/'a')), [f])
    assert any('kept' in s for s in f.seen) and not (res.run_dir/'checkpoints').exists()
    # --keep-checkpoints keeps the step checkpoints, never a copy of the final weights
    res = run(RunConfig(**TINY, select_metric='macro_f1', keep_checkpoints=True, out=str(tmp_path/'b')))
    assert sorted(p.name for p in (res.run_dir/'checkpoints').iterdir()) == ['step-4', 'step-8']
    # the default ('last'): never a kept/ folder
    f = Folders(); res = run(RunConfig(**TINY, out=str(tmp_path/'c')), [f])
    assert f.seen and not any('kept' in s for s in f.seen)
    with pytest.raises(SpecftConfigError, match='has finished'): prepare_run_dir(RunConfig(out=str(res.run_dir), resume=True))

def test_a_stopped_run_keeps_its_checkpoints_and_resumes(tmp_path):
    class StopAt(Callback):
        def on_step_end(self, s): s.should_stop = s.should_stop or s.step == 3
    res = run(RunConfig(**TINY, out=str(tmp_path/'r')), [StopAt()])
    assert res.state.step == 3 and (res.run_dir/'checkpoints').is_dir()
    res = run(RunConfig(out=str(tmp_path/'r'), resume=True))
    assert res.state.step == res.state.total_steps and not (res.run_dir/'checkpoints').exists()
    assert json.loads((res.run_dir/'metrics.json').read_text())['best_epoch'] == 2   # DESIGN's key: the kept epoch
