"specft.peft: every method on the tiny model; peft interop; run folders; the pipeline and the command line."
import copy, json, subprocess, sys
from pathlib import Path
import pytest, torch
from torch import nn
from safetensors.torch import load_file
from transformers import AutoModel
from specft.core import SpecftConfigError, SpecftModelError
from specft.model import build_classifier, count_params
from specft.peft import (PeftSettings, apply_lora, build_peft_classifier, export_peft, find_targets, import_peft,
                         load_peft, lora_layers, merge_to_plain, peft_state_dict, save_peft)

TEXTS = ['It worked.', 'Lisinopril made me dizzy all day, and I stopped after a week.', 'No change at all.']
LABELS = ['negative', 'neutral', 'positive']

@pytest.fixture(scope='module')
def tiny():
    clf, tok = build_classifier('tiny', num_labels=3, seed=0)
    b = tok(TEXTS, padding=True, return_tensors='pt')
    return clf, tok, dict(input_ids=b['input_ids'], attention_mask=b['attention_mask'])

def trained_lora(seed=0, **kw):
    torch.manual_seed(seed)
    clf, tok, info = build_peft_classifier('tiny', 3, PeftSettings(**{'lora_r': 4, **kw}), seed=0)
    for l in lora_layers(clf).values(): nn.init.normal_(l.lora_B, std=0.1)
    return clf.eval(), tok, info

def test_fresh_lora_is_the_backbone_exactly(tiny):
    clf, _, xb = tiny
    lclf = apply_lora(copy.deepcopy(clf), r=4, targets='query,key,value,dense').eval()
    with torch.no_grad(): assert torch.equal(lclf(**xb), clf.eval()(**xb))
    assert all(l.lora_B.abs().sum() == 0 for l in lora_layers(lclf).values())

def test_trainable_counts_and_freezing(tiny):
    clf, _, _ = tiny
    lclf = apply_lora(copy.deepcopy(clf), r=4, targets='query,value')
    assert count_params(lclf)['trainable'] == 2 * 2 * 4 * 64 + 32 * 3 + 3
    trainable = {n for n, p in lclf.named_parameters() if p.requires_grad}
    assert trainable and all('lora_' in n or n.startswith('head.') for n in trainable)

def test_unknown_target_lists_the_names(tiny):
    clf, _, _ = tiny
    with pytest.raises(SpecftConfigError, match='attention.self.query, attention.self.key'):
        apply_lora(copy.deepcopy(clf), targets='query,q_proj')

def test_merged_equals_unmerged(tiny):
    _, _, xb = tiny
    lclf, _, _ = trained_lora(lora_targets='query,key,value,dense')
    with torch.no_grad():
        a = lclf(**xb); b = merge_to_plain(copy.deepcopy(lclf)).eval()(**xb)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert not torch.allclose(a, build_classifier('tiny', 3, seed=0)[0].eval()(**xb), atol=1e-3)   # the update matters

@pytest.mark.parametrize('kw', [dict(lora_r=0), dict(lora_alpha=0), dict(prefix_len=0), dict(adapter_size=0),
                                dict(adalora_init_r=4, adalora_target_r=6), dict(adapter_kind='x')])
def test_bad_settings(kw):
    with pytest.raises(SpecftConfigError): PeftSettings(**kw).check()

def test_same_weights_as_peft_same_logits(tiny):
    from peft import LoraConfig, get_peft_model
    clf, _, xb = tiny
    lclf, _, _ = trained_lora()
    pm = get_peft_model(copy.deepcopy(clf), LoraConfig(r=4, lora_alpha=16, target_modules=['query', 'value'],
                                                        modules_to_save=['head'])).eval()
    with torch.no_grad():
        for name, l in lora_layers(lclf).items():
            m = pm.base_model.model.get_submodule(name)
            m.lora_A['default'].weight.copy_(l.lora_A); m.lora_B['default'].weight.copy_(l.lora_B)
        torch.testing.assert_close(pm(**xb), lclf(**xb), atol=1e-5, rtol=0)

def test_export_to_peft_and_import_back(tiny, tmp_path):
    from peft import PeftModel
    _, _, xb = tiny
    lclf, tok, info = trained_lora()
    save_peft(lclf, tok, tmp_path/'run', LABELS, info)
    export_peft(tmp_path/'run', tmp_path/'adapter')
    assert {'adapter_config.json', 'adapter_model.safetensors'} <= {p.name for p in (tmp_path/'adapter').iterdir()}
    keys = set(load_file(str(tmp_path/'adapter'/'adapter_model.safetensors')))
    assert 'base_model.model.backbone.encoder.layer.0.attention.self.query.lora_A.weight' in keys
    assert 'base_model.model.head.weight' in keys
    theirs = PeftModel.from_pretrained(build_classifier('tiny', 3, seed=0)[0], str(tmp_path/'adapter')).eval()
    ours, _, _ = import_peft(tmp_path/'adapter')
    with torch.no_grad():
        torch.testing.assert_close(theirs(**xb), lclf(**xb), atol=1e-5, rtol=0)
        assert torch.equal(ours(**xb), lclf(**xb))

def test_run_folder_small_and_backbone_hash_checked(tiny, tmp_path):
    _, _, xb = tiny
    lclf, tok, info = trained_lora()
    save_peft(lclf, tok, tmp_path, LABELS, info)
    saved = load_file(str(tmp_path/'peft.safetensors'))
    assert set(saved) == set(peft_state_dict(lclf)) and not any('.base.' in k for k in saved)
    back, _ = load_peft(tmp_path)
    with torch.no_grad(): assert torch.equal(back(**xb), lclf(**xb))
    cfg = json.loads((tmp_path/'config.json').read_text()); cfg['specft']['peft']['seed'] = 5
    (tmp_path/'config.json').write_text(json.dumps(cfg))
    with pytest.raises(SpecftModelError, match='its weights changed'): load_peft(tmp_path)

@pytest.mark.parametrize('kind,n', [('houlsby', 4), ('pfeiffer', 2)])
def test_adapters_near_identity_and_counts(tiny, kind, n):
    from specft.peft import apply_adapters
    clf, _, xb = tiny
    torch.manual_seed(0)
    aclf = apply_adapters(copy.deepcopy(clf), size=8, kind=kind).eval()
    with torch.no_grad(): torch.testing.assert_close(aclf(**xb), clf.eval()(**xb), atol=1e-4, rtol=0)
    assert count_params(aclf)['trainable'] == n * (2 * 32 * 8 + 8 + 32) + 32 * 3 + 3

def test_prefix_masked_out_is_the_backbone(tiny):
    from specft.peft import apply_prefix
    clf, _, xb = tiny
    pclf = apply_prefix(copy.deepcopy(clf), P=5).eval()
    enc = pclf.backbone.prefix_encoder
    enc.visible = False
    with torch.no_grad(): torch.testing.assert_close(pclf(**xb), clf.eval()(**xb), atol=1e-6, rtol=0)
    enc.visible = True
    with torch.no_grad(): assert (pclf(**xb) - clf(**xb)).abs().max() > 1e-4
    assert count_params(pclf)['trainable'] == 5 * 2 * 2 * 32 + 32 * 3 + 3

@pytest.mark.parametrize('method', ['adapter', 'prefix'])
def test_other_methods_save_and_load_identically(tiny, tmp_path, method):
    _, _, xb = tiny
    torch.manual_seed(0)
    clf, tok, info = build_peft_classifier('tiny', 3, PeftSettings(method, adapter_size=4, prefix_len=3, prefix_mlp=8), seed=0)
    with torch.no_grad():
        for p in clf.parameters():
            if p.requires_grad: p.add_(torch.randn_like(p) * 0.05)
    clf.eval(); save_peft(clf, tok, tmp_path, LABELS, info)
    back, _ = load_peft(tmp_path)
    with torch.no_grad(): assert torch.equal(back(**xb), clf(**xb))
    with pytest.raises(SpecftConfigError, match='--format peft writes LoRA and AdaLoRA runs'): export_peft(tmp_path, tmp_path/'x')

def toy_loader(tok, n=64, seed=0):
    from specft.batch import make_loader
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(1000, 2000, (int(k),), generator=g).tolist() for k in torch.randint(5, 16, (n,), generator=g)]
    return make_loader(ids, [int(sum(s) % 3) for s in ids], 8, tok.pad_token_id, shuffle=True, seed=0)

def test_adalora_budget_runs_on_every_step_and_exports_to_peft(tiny, tmp_path):
    from peft import PeftModel
    from specft.train import TrainConfig, fit
    from specft.peft import AdaLoRABudget, adalora_ranks, budget
    _, tok, xb = tiny
    assert [budget(t, 100, 40, 10, 10, 20) for t in (10, 45, 81)] == [40, 13, 10]
    torch.manual_seed(0)
    clf, tok, info = build_peft_classifier('tiny', 3, PeftSettings('adalora', adalora_init_r=6, adalora_target_r=2), seed=0)
    with torch.no_grad(): assert torch.equal(clf.eval()(**xb), build_classifier('tiny', 3, seed=0)[0].eval()(**xb))
    cb = AdaLoRABudget(clf, target_r=2)
    state = fit(clf, toy_loader(tok), None, TrainConfig(epochs=3, lr=5e-3, precision='fp32', device='cpu'), callbacks=[cb])
    assert [h['step'] for h in cb.history] == list(range(1, state.total_steps + 1))   # every optimizer step
    assert cb.history[0]['budget'] == 24 and cb.history[-1]['budget'] == cb.history[-1]['kept'] == 8
    assert sum(adalora_ranks(clf).values()) == 8
    clf.eval(); save_peft(clf, tok, tmp_path/'run', LABELS, info)
    export_peft(tmp_path/'run', tmp_path/'adapter')
    theirs = PeftModel.from_pretrained(build_classifier('tiny', 3, seed=0)[0], str(tmp_path/'adapter')).eval()
    with torch.no_grad(): torch.testing.assert_close(theirs(**xb), clf(**xb), atol=1e-5, rtol=0)

# ---- through the pipeline, the run folder and a fresh process

from specft.pipeline import RunConfig, run, Predictor
from specft.train import Callback

QUICK = dict(model='tiny', epochs=2, max_len=48, max_train_rows=48, batch_size=8, precision='fp32', device='cpu')

class Crash(Callback):
    def __init__(self, k): self.k = k
    def on_step_end(self, state):
        if state.step == self.k: raise KeyboardInterrupt

PREDICT = """
import sys, numpy as np
from specft.pipeline import Predictor
np.save(sys.argv[2], Predictor.load(sys.argv[1], device='cpu').predict_proba(sys.argv[3:]))
"""

def test_lora_run_folder_small_and_fresh_process_bit_identical(tmp_path):
    r = run(RunConfig(method='lora', out=str(tmp_path/'run'), **QUICK))
    d = r.run_dir
    saved = load_file(str(d/'peft.safetensors'))
    assert saved and all('lora_' in k or k.startswith('head.') for k in saved)
    assert not (d/'model.safetensors').exists()   # transformers refuses the folder instead of loading a random backbone
    with pytest.raises(OSError, match='model.safetensors'): AutoModel.from_pretrained(d)
    rec = json.loads((d/'config.json').read_text())['specft']['peft']
    assert rec['backbone'] == 'tiny' and len(rec['backbone_sha256']) == 64 and rec['settings']['method'] == 'lora'
    info = json.loads((d/'run.json').read_text())
    assert info['params']['trainable'] < info['params']['total'] / 10
    here = Predictor.load(d, device='cpu').predict_proba(TEXTS)
    subprocess.run([sys.executable, '-c', PREDICT, str(d), str(tmp_path/'p.npy'), *TEXTS], check=True)
    import numpy as np
    assert np.array_equal(np.load(tmp_path/'p.npy'), here)   # bit for bit, in a fresh process

def test_fit_then_fresh_process_bit_identical(tiny, tmp_path):
    from specft.train import TrainConfig, fit
    _, tok, xb = tiny
    torch.manual_seed(0)
    clf, tok, info = build_peft_classifier('tiny', 3, PeftSettings(lora_r=4), seed=0)
    fit(clf, toy_loader(tok), None, TrainConfig(epochs=2, lr=5e-3, device='cpu'))
    clf.eval(); save_peft(clf, tok, tmp_path, LABELS, info)
    with torch.no_grad(): mine = clf(**xb)
    torch.save({k: v for k, v in xb.items()}, tmp_path/'xb.pt')
    code = ("import sys, torch; from specft.peft import load_peft; m, _ = load_peft(sys.argv[1]); "
            "xb = torch.load(sys.argv[1] + '/xb.pt'); torch.save(m(**xb).detach(), sys.argv[1] + '/out.pt')")
    subprocess.run([sys.executable, '-c', code, str(tmp_path)], check=True)
    assert torch.equal(torch.load(tmp_path/'out.pt'), mine)

@pytest.mark.parametrize('method,precision', [('lora', 'fp32'), ('adalora', 'fp32'), ('lora', 'bf16')])   # bf16: frozen weights cast once
def test_kill_and_resume_is_exact(tmp_path, method, precision):
    kw = dict(method=method, adalora_init_r=4, adalora_target_r=2, **{**QUICK, 'precision': precision})
    ref = run(RunConfig(out=str(tmp_path/'a'), **kw))
    with pytest.raises(KeyboardInterrupt): run(RunConfig(out=str(tmp_path/'b'), **kw), callbacks=[Crash(ref.state.total_steps - 2)])
    res = run(RunConfig(out=str(tmp_path/'b'), resume=True))
    a, b = load_file(str(tmp_path/'a/peft.safetensors')), load_file(str(tmp_path/'b/peft.safetensors'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert res.metrics['macro_f1'] == ref.metrics['macro_f1'] and res.y_pred == ref.y_pred

def test_frozen_weights_cast_once_while_training_only():
    "Under bf16 autocast every frozen linear layer keeps one cast copy while training; afterwards the model is as before"
    from specft.peft import CastFrozenOnce, peft_callbacks
    from specft.train import Callback, TrainConfig, fit
    torch.manual_seed(0)
    clf, tok, _ = build_peft_classifier('tiny', 3, PeftSettings(lora_r=4), seed=0)
    cbs = peft_callbacks(clf, PeftSettings('lora'))
    assert [type(c) for c in cbs] == [CastFrozenOnce] and peft_callbacks(clf, PeftSettings('full')) == []
    frozen = [m for m in clf.modules() if isinstance(m, nn.Linear) and not m.weight.requires_grad]
    seen = []
    class Look(Callback):
        def on_step_end(self, state): seen.append([(id(m._cast[0]), m._cast[0].dtype) if m._cast else None for m in frozen])
    fit(clf, toy_loader(tok, n=24), None, TrainConfig(epochs=1, lr=5e-3, device='cpu', precision='bf16'), callbacks=[*cbs, Look()])
    assert len(seen) == 3 and len(frozen) > 10 and seen[0] == seen[-1]         # cast in the first step, the same copies after
    assert all(c is not None and c[1] == torch.bfloat16 for c in seen[0])
    assert not any('forward' in vars(m) or '_cast' in vars(m) for m in clf.modules())   # given back at the end

@pytest.mark.parametrize('method', ['adapter', 'prefix'])
def test_every_method_trains_through_the_pipeline(tmp_path, method):
    r = run(RunConfig(method=method, out=str(tmp_path/'r'), **QUICK))
    back = Predictor.load(r.run_dir, device='cpu').predict(TEXTS)
    assert len(back) == 3 and all(set(p['probabilities']) == set(r.labels) for p in back)

def test_predictor_refuses_a_changed_backbone(tmp_path):
    r = run(RunConfig(method='lora', out=str(tmp_path/'r'), **{**QUICK, 'epochs': 1}))
    cfg = json.loads((r.run_dir/'config.json').read_text()); cfg['specft']['peft']['backbone_sha256'] = '0' * 64
    (r.run_dir/'config.json').write_text(json.dumps(cfg))
    with pytest.raises(SpecftModelError, match='its weights changed'): Predictor.load(r.run_dir)

def test_cli_lora_run_and_bad_values(tmp_path, capsys):
    from specft.cli import main
    args = ['train', '--model', 'tiny', '--epochs', '1', '--max-len', '32', '--max-train-rows', '30', '--precision', 'fp32']
    assert main([*args, '--method', 'lora', '--lora-r', '2', '--lora-targets', 'query,key,value', '--out', str(tmp_path/'r')]) == 0
    rec = json.loads((tmp_path/'r'/'config.json').read_text())['specft']['peft']['settings']
    assert (rec['lora_r'], rec['lora_targets']) == (2, 'query,key,value')
    assert json.loads((tmp_path/'r'/'run.json').read_text())['config']['model_dropout'] == 0.0   # LoRA's default, resolved
    assert main([*args, '--method', 'lora', '--model-dropout', '0.1', '--out', str(tmp_path/'r1')]) == 0   # the backbone's own, given
    assert json.loads((tmp_path/'r1'/'run.json').read_text())['config']['model_dropout'] == 0.1
    for bad, msg in ((['--lora-r', '0'], '--lora-r must be at least 1'), (['--lora-alpha', '-1'], '--lora-alpha must be positive'),
                     (['--method', 'prefix', '--prefix-len', '0'], '--prefix-len must be at least 1'),
                     (['--method', 'adapter', '--adapter-size', '0'], '--adapter-size must be at least 1'),
                     (['--method', 'adalora', '--adalora-target-r', '20'], '--adalora-target-r 20 is above'),
                     (['--model-dropout', '1'], '--model-dropout must be in [0, 1)'), (['--model-dropout', '-0.1'], 'got -0.1')):
        capsys.readouterr()
        code = main([*args, '--method', 'lora', *bad, '--out', str(tmp_path/'bad')])
        err = capsys.readouterr().err
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err

def test_import_a_peft_adapter_as_model(tmp_path):
    lclf, tok, info = trained_lora()
    save_peft(lclf, tok, tmp_path/'run', LABELS, info)
    export_peft(tmp_path/'run', tmp_path/'adapter')
    r = run(RunConfig(method='lora', out=str(tmp_path/'r'), **{**QUICK, 'model': str(tmp_path/'adapter'), 'epochs': 1}))
    assert json.loads((r.run_dir/'config.json').read_text())['specft']['peft']['backbone'] == 'tiny'

def test_export_peft_refuses_a_run_with_rules(tmp_path):
    "An adapter folder has no place for a run's rules: --format peft refuses (one line) instead of dropping them, and writes nothing"
    from specft.pipeline import RunConfig, run
    from specft.knowledge import DRUG_RULES
    r = run(RunConfig(model='tiny', method='lora', epochs=1, max_len=32, max_train_rows=60, device='cpu',   # LoRA takes rules
                      rules=str(DRUG_RULES), rules_mode='override', out=str(tmp_path/'r')))                # in override mode only
    with pytest.raises(SpecftConfigError, match=r'trained with rules \(override mode\)'): export_peft(r.run_dir, tmp_path/'peft')
    assert not (tmp_path/'peft').exists()
