"specft.pretrain: masking statistics against transformers, the tied MLM head, the held-out loss falls, the backbone folder fine-tunes, test texts never reach pretraining, bad input exits 2."
import contextlib, dataclasses, io, json
import numpy as np, pandas as pd, pytest, torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, RobertaConfig, RobertaModel
import specft.corpus as corpus_mod, specft.pretrain as pt
from specft.cli import main, build_parser
from specft.core import SpecftConfigError, SpecftDataError, SpecftModelError
from specft.clean import preprocess_texts, preprocessing_settings
from specft.corpus import read_drug_reviews
from specft.model import load_backbone, load_tokenizer, build_classifier
from specft.pipeline import RunConfig, run
from specft.pretrain import (IGNORE, PretrainConfig, SparseMLM, build_mlm, choose_tokens, mask_spec, mask_tokens, mlm_loader,
                             mlm_loss, pretrain, pretrain_texts, split_texts)

TINY = dict(model='tiny', max_len=32, device='cpu', batch_size=8)

@pytest.fixture(scope='module')
def tok(): return load_tokenizer('tiny')

@pytest.fixture(scope='module')
def spec(tok): return mask_spec(tok)

@pytest.fixture(scope='module')
def batch(tok):
    enc = tok(read_drug_reviews('train').review.tolist(), truncation=True, max_length=256, padding=True, return_tensors='pt')
    return enc

@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    "One sentence in 120 rotations (17 distinct; the repeats are dropped): a tiny model can learn it"
    d = tmp_path_factory.mktemp('corpus')
    words = 'the patient took the drug twice a day and felt much better after a week of treatment'.split()
    rng = np.random.default_rng(0)
    pd.DataFrame({'review': [' '.join(words[i:] + words[:i]) for i in rng.integers(0, len(words), 120)]}).to_csv(d/'c.csv', index=False)
    return d/'c.csv'

@pytest.fixture(scope='module')
def tapt(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp('tapt')/'backbone'
    return pretrain(PretrainConfig(data=str(corpus), text_col='review', out=str(out), epochs=8, lr=2e-2, **TINY))

def call(*argv):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e): code = main(list(argv))
    return code, o.getvalue(), e.getvalue()

def shares(x, x_tilde, y, eligible, mask_id):
    M = y != IGNORE
    masked, kept = x_tilde[M] == mask_id, x_tilde[M] == x[M]
    return np.array([(M.sum() / eligible.sum()).item(), masked.float().mean().item(), (~masked & ~kept).float().mean().item(),
                     kept.float().mean().item()])

def test_masking_statistics_match_transformers_and_never_touch_special_tokens(tok, spec, batch):
    x, am = batch['input_ids'], batch['attention_mask']
    eligible = am.bool() & ~torch.isin(x, spec.special)
    assert eligible.sum() > 60_000
    hf_coll = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)   # its `seed=` works only in DataLoader workers
    torch.manual_seed(0)
    target = np.array([0.15, 0.8, 0.1, 0.1])
    for seed in range(3):
        ours = mask_tokens(x, am, spec, generator=torch.Generator().manual_seed(seed))
        hf_b = hf_coll([{'input_ids': r[m.bool()].tolist()} for r, m in zip(x, am)])
        hf = hf_b['input_ids'], hf_b['labels']
        for x_tilde, y in (ours, hf):
            assert np.abs(shares(x, x_tilde, y, eligible, spec.mask_id) - target).max() < 0.02
            assert not ((y != IGNORE) & ~eligible).any()                       # never [CLS], [SEP] or padding
            assert torch.equal(x_tilde[~(y != IGNORE)], x[~(y != IGNORE)])     # nothing else changes
        assert not torch.isin(ours[0][ours[1] != IGNORE], spec.special[spec.special != spec.mask_id]).any()  # random tokens are never special

def test_whole_word_masking_chooses_words_with_all_their_pieces(tok, spec, batch):
    x, am = batch['input_ids'], batch['attention_mask']
    M = choose_tokens(x, am, spec, 0.15, whole_word=True, generator=torch.Generator().manual_seed(0))
    words = chosen = 0   # 150 texts: ~16,000 words
    for i in range(150):
        ids = pd.Series(batch.word_ids(i))
        for _, pos in pd.Series(range(len(ids))).groupby(ids, dropna=True):
            c = M[i, pos.tolist()]
            assert bool(c.all()) or not bool(c.any())        # a word is chosen whole or not at all
            words += 1; chosen += bool(c.all())
    assert abs(chosen / words - 0.15) < 0.01
    assert not (M & ~(am.bool() & ~torch.isin(x, spec.special))).any()

def test_masks_are_seeded_and_drawn_afresh_for_every_batch(tok, spec):
    ids = [tok(t)['input_ids'] for t in ['a review of a drug that helped a lot'] * 32]
    dl = mlm_loader(ids, tok.pad_token_id, spec, batch_size=32, seed=3)
    first, second = next(iter(dl)), next(iter(dl))
    assert not torch.equal(first['labels'], second['labels'])           # dynamic: a new mask each time
    again = next(iter(mlm_loader(ids, tok.pad_token_id, spec, batch_size=32, seed=3)))
    assert torch.equal(again['labels'], first['labels']) and torch.equal(again['input_ids'], first['input_ids'])
    assert torch.equal(first['masked'], first['labels'] != IGNORE)

def test_mlm_loss_is_cross_entropy_over_the_chosen_positions_only():
    z = torch.randn(3, 7, 13); y = torch.full((3, 7), IGNORE); y[0, 2], y[2, 6] = 5, 1
    ref = torch.nn.functional.cross_entropy(torch.stack([z[0, 2], z[2, 6]]), torch.tensor([5, 1]))
    assert torch.allclose(mlm_loss(z, y), ref) and torch.allclose(mlm_loss(z[y != IGNORE], y), ref)
    assert mlm_loss(z, torch.full((3, 7), IGNORE)).item() == 0.0

def test_minilm_gets_a_fresh_head_tied_to_its_embeddings_and_keeps_its_encoder():
    mlm, _, head = build_mlm('minilm')
    assert head == 'initialised'
    p = mlm.cls.predictions
    assert p.decoder.weight is mlm.bert.embeddings.word_embeddings.weight and p.decoder.bias is p.bias
    assert p.bias.abs().max() == 0 and abs(p.transform.dense.weight.std().item() - mlm.config.initializer_range) < 2e-3
    ref = load_backbone('minilm').state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in mlm.bert.state_dict().items()) and set(ref) == set(mlm.bert.state_dict())

def test_a_checkpoint_with_a_head_keeps_it_and_other_families_fail(tmp_path, tok):
    torch.manual_seed(0)
    ref = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    ref.save_pretrained(tmp_path/'b'); tok.save_pretrained(tmp_path/'b')
    mlm, _, head = build_mlm(tmp_path/'b')
    assert head == 'kept'
    for k, v in ref.cls.state_dict().items(): assert torch.equal(mlm.cls.state_dict()[k], v), k
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight
    RobertaModel(RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path/'r')
    with pytest.raises(SpecftModelError, match="is a 'roberta' model"): build_mlm(tmp_path/'r')

def test_sparse_logits_equal_bert_for_masked_lm_at_the_chosen_positions(tok, spec):
    mlm, _, _ = build_mlm('tiny', seed=1)
    b = next(iter(mlm_loader([tok(t)['input_ids'] for t in read_drug_reviews('train').review[:16]], tok.pad_token_id, spec, 16)))
    with torch.no_grad():
        full = mlm(input_ids=b['input_ids'], attention_mask=b['attention_mask'], labels=b['labels'])
        z = SparseMLM(mlm)(b['input_ids'], b['attention_mask'], b['masked'])
    assert torch.allclose(z, full.logits[b['masked']], atol=1e-5)
    assert torch.allclose(mlm_loss(z, b['labels']), full.loss, atol=1e-5)

def test_heldout_loss_falls_on_a_repeated_corpus(tapt):
    L = tapt.heldout_loss
    assert len(L) == 9 and all(a > b for a, b in zip(L, L[1:])) and L[-1] < 0.5 * L[0], L
    rec = json.loads((tapt.out/'pretrain.json').read_text())
    assert rec['heldout_loss'] == L and rec['mlm_head'] == 'initialised' and rec['texts'] == {'train': 15, 'heldout': 2}
    assert (rec['data']['rows'], rec['data']['repeats'], rec['data']['texts']) == (120, 103, 17) and len(rec['data']['sha256']) == 64 and rec['config']['epochs'] == 8

def test_the_backbone_folder_fine_tunes_from_the_pretrained_weights(tapt, tmp_path):
    saved = load_file(str(tapt.out/'model.safetensors'))
    assert not any(k.startswith('cls.') for k in saved)                        # the encoder alone
    clf, _ = build_classifier(tapt.out, num_labels=3)
    state = clf.backbone.state_dict()
    assert state and all(torch.equal(v, saved[k]) for k, v in state.items())
    assert not all(torch.equal(v, load_backbone('tiny').state_dict()[k]) for k, v in state.items())
    code, out, err = call('train', '--model', str(tapt.out), '--max-train-rows', '30', '--epochs', '1', '--max-len', '32',
                          '--device', 'cpu', '--out', str(tmp_path/'ft'))
    assert code == 0, err
    assert json.loads((tmp_path/'ft'/'run.json').read_text())['config']['model'] == str(tapt.out)
    mlm, _, head = build_mlm(tapt.out)                                            # continuing keeps the trained head
    assert head == 'kept'
    assert torch.equal(mlm.cls.predictions.bias, load_file(str(tapt.out/'mlm_head.safetensors'))['cls.predictions.bias'])

def test_the_test_split_never_reaches_pretraining(monkeypatch, tmp_path):
    real = read_drug_reviews
    calls, seen = [], []
    def poisoned(split='train'):
        calls.append(split)
        df = real(split)
        return df.assign(review='POISON ' + df.review) if split == 'test' else df
    monkeypatch.setattr(corpus_mod, 'read_drug_reviews', poisoned); monkeypatch.setattr(pt, 'read_drug_reviews', poisoned)
    real_encode = pt.encode_texts
    monkeypatch.setattr(pt, 'encode_texts', lambda tok, texts, *a, **k: (seen.extend(texts), real_encode(tok, texts, *a, **k))[1])
    cfg = PretrainConfig(data='drug-reviews', epochs=1, out=str(tmp_path/'p'), **{**TINY, 'max_len': 16, 'batch_size': 64})
    res = pretrain(cfg)
    assert 'test' not in calls and len(seen) == 600 and not any('POISON' in t for t in seen)
    assert set(seen) == set(preprocess_texts(real('train').review.tolist(), preprocessing_settings()))   # exactly the training split's
    assert res.record['data']['texts'] == 600

def test_split_texts_is_seeded_and_disjoint():
    texts = [f't{i}' for i in range(50)]
    tr, held = split_texts(texts, 0.1, seed=0)
    assert len(held) == 5 and not set(tr) & set(held) and sorted(tr + held) == sorted(texts)
    assert split_texts(texts, 0.1, seed=0) == (tr, held) and split_texts(texts, 0.1, seed=1) != (tr, held)
    assert [len(p) for p in split_texts(['a', 'b'], 0.9)] == [1, 1]             # at least one text on each side

def test_every_config_field_is_a_flag_with_help():
    p = build_parser()
    sub = next(a for a in p._actions if a.dest == 'command').choices['pretrain']
    flags = {a.dest: a for a in sub._actions}
    for f in dataclasses.fields(PretrainConfig):
        assert f.name in flags and flags[f.name].help and flags[f.name].default == f.default, f.name

@pytest.mark.parametrize('what, args, message', [
    ('missing text column', ['--text-col', 'txt'], "text column 'txt' not found"),
    ('empty corpus', ['--data', 'EMPTY'], 'non-empty text'),
    ('unreadable file', ['--data', 'BINARY'], 'binary'),
    ('no such file', ['--data', 'NOPE'], 'not found'),
    ('existing out', ['--out', 'EXISTING'], 'exists already'),
    ('mask-prob 0', ['--mask-prob', '0'], '--mask-prob must be in (0, 1)'),
    ('mask-prob 1', ['--mask-prob', '1'], '--mask-prob must be in (0, 1)'),
    ('no out', ['--out', ''], '--out DIR is required'),
    ('not BERT', ['--model', 'ROBERTA'], "is a 'roberta' model"),
])
def test_bad_input_is_one_line_and_exit_2(what, args, message, corpus, tmp_path):
    (tmp_path/'empty.csv').write_text('review,label\n"   ",a\n,b\n')
    (tmp_path/'binary.csv').write_bytes(bytes(range(256)) * 8)
    (tmp_path/'existing').mkdir(); (tmp_path/'existing'/'keep.txt').write_text('mine')
    RobertaModel(RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path/'rob')
    subst = {'EMPTY': tmp_path/'empty.csv', 'BINARY': tmp_path/'binary.csv', 'NOPE': tmp_path/'nope.csv', 'EXISTING': tmp_path/'existing',
             'ROBERTA': tmp_path/'rob'}
    argv = ['pretrain', '--data', str(corpus), '--text-col', 'review', '--model', 'tiny', '--out', str(tmp_path/'new'), '--device', 'cpu']
    argv += [str(subst.get(a, a)) for a in args]
    code, out, err = call(*argv)
    assert code == 2 and out == '' and len(err.strip().splitlines()) == 1 and message in err, (code, err)
    assert not (tmp_path/'new').exists() and (tmp_path/'existing'/'keep.txt').read_text() == 'mine'

def test_the_command_writes_a_folder_and_reports_the_loss(corpus, tmp_path):
    code, out, err = call('pretrain', '--data', str(corpus), '--text-col', 'review', '--model', 'tiny', '--epochs', '1',
                          '--max-len', '32', '--device', 'cpu', '--whole-word', '--out', str(tmp_path/'b'))
    assert code == 0, err
    assert 'held-out masked-LM loss on 2 texts' in out and f'specft train --model {tmp_path/"b"}' in out
    assert json.loads((tmp_path/'b'/'pretrain.json').read_text())['config']['whole_word'] is True
    code, _, err = call('pretrain', '--data', str(corpus), '--text-col', 'review', '--model', 'tiny', '--epochs', '1',
                        '--max-len', '32', '--device', 'cpu', '--out', str(tmp_path/'b'), '--overwrite')
    assert code == 0, err
