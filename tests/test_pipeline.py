"specft.pipeline: one source of truth for the training defaults, and the run folder's life cycle."
import dataclasses, json
import pytest
from specft.core import SpecftConfigError
from specft.pipeline import RunConfig, check_config, prepare_run_dir, run
from specft.train import Callback, TrainConfig, check_train_config

SHARED = sorted({f.name for f in dataclasses.fields(TrainConfig)} & {f.name for f in dataclasses.fields(RunConfig)})

def test_train_config_and_run_config_cannot_disagree():
    assert {'class_weights', 'logit_adjust', 'select_metric', 'epochs', 'lr'} <= set(SHARED)
    engine, front = TrainConfig(), RunConfig()
    for name in SHARED:
        assert getattr(front.train_config(), name) == getattr(engine, name), name
        # lr and epochs None mean the method's defaults, which for full fine-tuning are the engine's
        assert getattr(front, name) == getattr(engine, name) or (name in ('lr', 'epochs') and getattr(front, name) is None), name
    assert front.train_config() == engine

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
