"specft.train on a CUDA GPU: fp16 with a GradScaler, bf16, a real out-of-memory error, resume. Skipped without a GPU."
import warnings
import pytest, torch
from torch import nn
from transformers import BertModel
from specft.core import choose_precision
from specft.batch import make_loader
from specft.model import Classifier, tiny_config
from specft.train import Callback, TrainConfig, Trainer, fit, latest_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = [[101] + torch.randint(1000, 1030, (int(torch.randint(2, 40, (1,), generator=g)),), generator=g).tolist() + [102]
           for _ in range(n)]
    return ids, [0 if x[1] < 1015 else 1 if x[1] < 1025 else 2 for x in ids]

def loaders(bs=8):
    ids, y = data(); vids, vy = data(32, seed=1)
    return make_loader(ids, y, bs, 0, shuffle=True), make_loader(vids, vy, 16, 0)

def model(seed=0, dropout=True):
    torch.manual_seed(seed)
    clf = Classifier(BertModel(tiny_config(), add_pooling_layer=False), 3)   # no tokenizer needed
    if not dropout:
        for m in clf.modules():
            if isinstance(m, nn.Dropout): m.p = 0.0
    return clf

def cfg(**kw): return TrainConfig(**{**dict(epochs=2, lr=1e-3, device='cuda', log_every=2), **kw})

def test_auto_precision_and_bf16_trains():
    major, _ = torch.cuda.get_device_capability()
    tl, vl = loaders()
    t = Trainer(model(), tl, vl, cfg(precision='auto'))
    assert t.precision == ('bf16' if major >= 8 else 'fp16') == choose_precision('auto', 'cuda')
    s = t.fit()
    assert s.step == 2 * len(tl) and s.metrics['loss'] == s.metrics['loss']
    assert next(t.model.parameters()).dtype == torch.float32   # weights stay fp32; only the matmuls are 16-bit

def test_fp16_scaler_skips_do_not_advance_the_schedule():
    tl, vl = loaders()
    t = Trainer(model(), tl, vl, cfg(precision='fp16', warmup=0.2))
    t.scaler = torch.amp.GradScaler('cuda', init_scale=2.0 ** 40)   # overflows at first: the first steps are skipped
    scales = []
    class Scale(Callback):
        def on_step_end(self, s): scales.append(t.scaler.get_scale())
    t.callbacks.append(Scale())
    s = t.fit()
    skipped = sum(b < a for a, b in zip([2.0 ** 40] + scales, scales))
    assert skipped >= 1
    assert t.scheduler.last_epoch == s.step - skipped
    assert all(torch.isfinite(p).all() for p in t.model.parameters())

def test_real_out_of_memory_halves_the_batch():
    tl, _ = make_loader(*data(), 8, 0), None
    ref = model(dropout=False); fit(ref, tl, None, cfg(precision='fp32'))
    m = model(dropout=False); forward = m.forward
    free = torch.cuda.mem_get_info()[0]
    def hungry(input_ids, attention_mask):   # asks for (rows / 4) x the free memory: fails above 3 rows
        x = torch.empty(int(free * len(input_ids) / 4), dtype=torch.uint8, device='cuda'); del x
        return forward(input_ids, attention_mask)
    m.forward = hungry
    with pytest.warns(UserWarning, match='halving the batch'):
        s = fit(m, make_loader(*data(), 8, 0), None, cfg(precision='fp32'))
    assert s.micro_split == 4
    for a, b in zip(ref.state_dict().values(), m.state_dict().values()): assert torch.allclose(a, b, atol=1e-5)

def test_resume_on_cuda(tmp_path):
    c = cfg(epochs=2, save_every=3, precision='bf16', select_metric='macro_f1')   # the kept epoch comes from kept/
    ref = model(); tl, vl = loaders(); s_ref = fit(ref, tl, vl, c, out_dir=tmp_path/'a')
    class Crash(Callback):
        def on_step_end(self, s):
            if s.step == 5: raise KeyboardInterrupt
    tl, vl = loaders()
    with pytest.raises(KeyboardInterrupt): fit(model(), tl, vl, c, [Crash()], out_dir=tmp_path/'b')
    assert latest_checkpoint(tmp_path/'b').name == 'step-3'
    m = model(seed=7); tl, vl = loaders()
    s = fit(m, tl, vl, c, out_dir=tmp_path/'b', resume=True)
    assert s.kept_epoch == s_ref.kept_epoch
    diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(ref.state_dict().values(), m.state_dict().values()))
    print('max |resumed - uninterrupted| on CUDA:', diff)
    assert diff < 1e-4

def test_predict_moves_a_cpu_model_to_the_gpu():
    "predict_logits with device 'auto' runs a model that is still on the CPU (a fresh or reloaded one) on the GPU"
    from specft.train import predict_logits
    m = model(dropout=False).eval()
    _, vl = loaders()
    cpu = predict_logits(m, vl, device='cpu')
    gpu = predict_logits(m, vl)
    assert next(m.parameters()).is_cuda and gpu.shape == cpu.shape
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)
