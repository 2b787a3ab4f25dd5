"specft.distributed: data-parallel training under torchrun and accelerate launch (gloo, 2 CPU processes), memory estimates."
import json, os, runpy, socket, subprocess, sys, time
from pathlib import Path
import pandas as pd, pytest, torch
from torch import nn
from safetensors.torch import load_file
from transformers import BertConfig, BertModel
from specft.batch import make_loader
from specft.cli import main
from specft.core import SpecftConfigError
from specft.distributed import MemoryReport, enable_grad_checkpointing, fit, shard_batches
from specft.model import Classifier, build_classifier
from specft.pipeline import Predictor
from specft.train import TrainConfig, latest_checkpoint

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TIMEOUT = 240   # seconds for one launch of two processes (about 30 on an idle 2-core machine)

def free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def launch(*cmd)->subprocess.CompletedProcess:
    "Run a launcher command with this checkout's specft importable, on one thread per process"
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]),
           'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'TOKENIZERS_PARALLELISM': 'false'}
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=TIMEOUT, cwd=ROOT)

def torchrun(*args): return launch(BIN/'torchrun', '--nproc_per_node', 2, '--master_addr', '127.0.0.1', '--master_port', free_port(), *args)

TOY = '''
import sys, torch
from torch import nn
from safetensors.torch import save_model
from specft.batch import make_loader
from specft.model import build_classifier
from specft.train import TrainConfig
from specft.distributed import finish_distributed, fit, init_distributed, is_main

def rows(n, seed):
    "Token ids of random length whose label is a function of the first token"
    g = torch.Generator().manual_seed(seed)
    ids = [[101] + torch.randint(1000, 1030, (int(torch.randint(2, 16, (1,), generator=g)),), generator=g).tolist() + [102]
           for _ in range(n)]
    return ids, [0 if x[1] < 1015 else 1 if x[1] < 1025 else 2 for x in ids]

def train(out, grad_accum):
    "44 rows in batches of 4 (11 batches: the last step pads), class weights on, dropout off, fp32"
    torch.set_num_threads(1); init_distributed('cpu')
    clf, _ = build_classifier('tiny', 3, seed=0)
    for m in clf.modules():
        if isinstance(m, nn.Dropout): m.p = 0.0
    (ids, y), (vids, vy) = rows(44, 0), rows(16, 1)
    cfg = TrainConfig(epochs=2, lr=1e-3, device='cpu', precision='fp32', grad_accum=grad_accum, class_weights='auto',
                      log_every=1)
    torch.manual_seed(123); caller = torch.get_rng_state()
    fit(clf, make_loader(ids, y, 4, 0, shuffle=True, seed=0), make_loader(vids, vy, 8, 0), cfg, out_dir=out)
    assert torch.equal(torch.get_rng_state(), caller), 'fit did not give the caller its generator back'
    if is_main(): save_model(clf, f'{out}/final.safetensors')
    finish_distributed()

if __name__ == '__main__': train(sys.argv[1], int(sys.argv[2]))
'''

TOLERANCE = 1e-5   # fp32: the two runs differ only in the order of floating-point sums

def test_two_processes_end_with_the_weights_of_one(tmp_path):
    (tmp_path/'toy.py').write_text(TOY)
    t0 = time.time(); r = torchrun(tmp_path/'toy.py', tmp_path/'two', 1); t_two = time.time() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    t0 = time.time(); runpy.run_path(str(tmp_path/'toy.py'))['train'](str(tmp_path/'one'), 2); t_one = time.time() - t0
    a, b = load_file(tmp_path/'one/final.safetensors'), load_file(tmp_path/'two/final.safetensors')
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"\n1 vs 2 processes: max weight difference {diff:.2e} (tolerance {TOLERANCE:g}); "
          f"{t_one:.1f} s in-process vs {t_two:.1f} s for torchrun with 2 processes")
    assert diff < TOLERANCE
    h1, h2 = (pd.read_csv(tmp_path/d/'history.csv') for d in ('one', 'two'))
    assert (h1.step == h2.step).all() and (h1.split == h2.split).all()
    assert (h1.loss - h2.loss).abs().max() < 1e-5                          # the logged loss: the global batch's mean
    assert h1[h1.split == 'val'][['accuracy', 'macro_f1']].equals(h2[h2.split == 'val'][['accuracy', 'macro_f1']])
    d = json.loads((tmp_path/'two/distributed.json').read_text())
    assert d['world_size'] == 2 and d['backend'] == 'gloo' and d['global_batch'] == 8
    assert d['rows_per_process'] == [48, 40]   # 6 and 5 whole batches of 4 per epoch; the padding batch is not counted
    r = torchrun(tmp_path/'toy.py', tmp_path/'two', 1)   # the same folder again: the first process refuses it, and only it
    refusals = [l for l in r.stderr.splitlines() if 'holds a run already' in l]
    assert r.returncode != 0 and refusals and all(l.startswith('[rank0]') for l in refusals), r.stderr[-3000:]

KILL = '''
import os, signal, sys
import specft.cli as cli
from specft.train import Callback
from specft.distributed import rank

class KillAt(Callback):
    "Process 1 dies (SIGKILL, no clean-up) at the end of step 3, in epoch 2"
    def on_step_end(self, s):
        if s.step == 3 and rank() == 1: os.kill(os.getpid(), signal.SIGKILL)

run = cli.run
cli.run = lambda cfg, callbacks=(): run(cfg, [*callbacks, KillAt()])
sys.exit(cli.main(sys.argv[1:]))
'''
TRAIN = ['train', '--model', 'tiny', '--epochs', '2', '--max-len', '32', '--max-train-rows', '60', '--device', 'cpu',
         '--precision', 'fp32']

def test_a_killed_process_stops_the_run_and_resume_finishes_it(tmp_path):
    (tmp_path/'kill.py').write_text(KILL); out = tmp_path/'run'
    r = torchrun(tmp_path/'kill.py', *TRAIN, '--out', out)
    assert r.returncode != 0
    assert 'specft train: error: process 0 of 2: another process of this run stopped' in r.stderr, r.stderr[-3000:]
    assert f'--resume --out {out}' in r.stderr and 'Traceback' not in r.stderr.split('specft train: error')[0][-500:]
    assert latest_checkpoint(out).name == 'step-2' and not (out/'metrics.json').exists()   # 60 rows: 2 steps an epoch
    with pytest.raises(SpecftConfigError, match='trained on 2 processes'):   # one process cannot resume a run of two
        fit(None, None, None, out_dir=out, resume=True)
    r = torchrun('-m', 'specft', 'train', '--resume', '--out', out)
    assert r.returncode == 0, r.stderr[-3000:]
    h = pd.read_csv(out/'history.csv')
    assert h.step.tolist() == [2, 4] and h.split.tolist() == ['val', 'val'] and h.epoch.tolist() == [1, 2]
    assert not (out/'checkpoints').exists() and json.loads((out/'metrics.json').read_text())['best_epoch'] == 2
    assert r.stdout.count('run folder:') == 1   # only the first process prints
    preds = Predictor.load(out, device='cpu').predict(['It worked well.', 'Terrible side effects.'])
    assert [set(p['probabilities']) for p in preds] == [set(json.loads((out/'labels.json').read_text()))] * 2

ACCELERATE = ['--main_process_port', None, '-m', 'specft', *TRAIN[:4], '1', *TRAIN[5:]]

def test_accelerate_launch_on_cpus_splits_the_batches(tmp_path):
    "--multi_gpu on a machine without GPUs: two processes; specft sets ACCELERATE_USE_CPU and each sees half the batches"
    out = tmp_path/'run'
    r = launch(BIN/'accelerate', 'launch', '--multi_gpu', '--num_processes', 2, '--num_machines', 1, '--mixed_precision', 'no',
               '--dynamo_backend', 'no', *[free_port() if a is None else a for a in ACCELERATE], '--out', out)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads((out/'distributed.json').read_text())
    # 60 rows in 4 batches (16, 16, 16, 12): two whole batches each
    assert d['world_size'] == 2 and sorted(d['rows_per_process']) == [28, 32] and d['steps'] == 2
    assert Predictor.load(out, device='cpu').predict(['Fine.'])[0]['label'] in json.loads((out/'labels.json').read_text())

def test_accelerate_launch_that_starts_one_process_is_refused(tmp_path):
    """Without GPUs, `accelerate launch --num_processes 2` runs the command once, with the variables its simple launcher
    sets (accelerate/utils/launch.py, prepare_simple_launcher_cmd_env): specft says so instead of training alone"""
    env = {'ACCELERATE_USE_CPU': 'False', 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': '29500', 'ACCELERATE_MIXED_PRECISION': 'no'}
    r = launch('env', *[f'{k}={v}' for k, v in env.items()], sys.executable, '-m', 'specft', 'train', '--model', 'tiny',
               '--device', 'cpu', '--out', tmp_path/'run')
    assert r.returncode == 2 and 'accelerate launch asked for several processes but started one' in r.stderr, r.stderr[-2000:]
    assert not (tmp_path/'run').exists()

def test_every_process_gets_whole_batches_and_the_same_count():
    for n in range(1, 12):
        batches = [[2 * k, 2 * k + 1] for k in range(n)]
        for world in (1, 2, 3, 4):
            shards = [shard_batches(batches, r, world) for r in range(world)]
            assert len({len(s) for s in shards}) == 1                     # the same number of steps everywhere
            real = sorted(b for s in shards for b in s if b[0] >= 0)
            assert real == batches                                         # each batch once, whole
            assert all(b in batches for s in shards for b in ([-1 - i for i in x] for x in s if x[0] < 0))

def measured(clf, b=16, s=128, steps=2):
    "Train `clf` for `steps` steps on `b` texts of `s` tokens; (estimated peak, measured peak)"
    rep = MemoryReport(b, s)
    ids = [[101] + [1000 + k % 50] * (s - 2) + [102] for k in range(b * steps)]
    fit(clf, make_loader(ids, [k % 3 for k in range(b * steps)], b, 0), None,
        TrainConfig(epochs=1, device='cpu', precision='fp32', warmup=0.0), callbacks=[rep])
    return rep.estimate['peak'], rep.peak

@pytest.mark.parametrize('checkpointing', [False, True])
def test_memory_estimate_within_a_quarter_of_the_measured_peak(checkpointing):
    clf, _ = build_classifier('tiny', 3)
    if checkpointing: enable_grad_checkpointing(clf)
    est, peak = measured(clf)
    print(f"\ntiny, batch 16 x 128, grad checkpointing {checkpointing}: estimate {est / 2**20:.1f} MB, "
          f"measured {peak / 2**20:.1f} MB ({est / peak - 1:+.1%})")
    assert abs(est / peak - 1) < 0.25

def test_a_bert_base_sized_model_from_a_config_trains():
    "12 layers, 768 wide (BertConfig's defaults: BERT-base, 110 M parameters), random weights: no download"
    torch.manual_seed(0)
    clf = enable_grad_checkpointing(Classifier(BertModel(BertConfig()), 3))
    before = clf.head.weight.detach().clone()
    t0 = time.time(); est, peak = measured(clf, b=4, s=32, steps=3)
    print(f"\nBERT-base from a config, 3 steps of 4 x 32 tokens with grad checkpointing: {time.time() - t0:.1f} s; "
          f"estimate {est / 2**30:.2f} GB, measured {peak / 2**30:.2f} GB")
    assert sum(p.numel() for p in clf.parameters()) > 100e6 and not torch.equal(before, clf.head.weight)
    assert all(torch.isfinite(p).all() for p in clf.parameters()) and abs(est / peak - 1) < 0.25

def test_cli_flag_and_memory_lines(tmp_path, capsys):
    out = tmp_path/'run'
    assert main([*TRAIN[:4], '1', *TRAIN[5:], '--grad-checkpointing', '--out', str(out)]) == 0
    err = capsys.readouterr().err
    assert 'memory estimate (batch 16 x 32 tokens, fp32, cpu): weights' in err and 'memory measured: peak' in err
    assert json.loads((out/'run.json').read_text())['config']['grad_checkpointing'] is True

def test_finish_distributed_leaves_the_group(tmp_path):
    "After a run the process leaves its group: a gloo group whose threads outlive the interpreter can abort the exit"
    import torch.distributed as dist
    from specft.distributed import finish_distributed, world_size
    finish_distributed()   # alone: nothing to leave, no error
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store', rank=0, world_size=1)
    try: assert dist.is_initialized() and world_size() == 1 and dist.get_backend() == 'gloo'
    finally: finish_distributed()
    assert not dist.is_initialized()
