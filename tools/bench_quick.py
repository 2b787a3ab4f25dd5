"""Run every benchmark in bench/ in its --quick mode (a smoke test: a missing dependency or an API drift fails here),
plus the extra quick commands `make test-slow` names, several at a time. Most of a quick run is importing torch and
preparing data on one core, so two at a time on two cores take about half the wall time of one after another; each
process gets its share of the cores as its torch thread count. Output goes to one log per command; a failed command's
log is printed whole. Exit status 1 if any command failed.

Usage: python tools/bench_quick.py [--jobs N] [--also "SCRIPT ARGS" ...]"""
import argparse, os, shlex, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def commands(also:list[str], root:Path=ROOT)->list[list[str]]:
    "Each bench/*.py under `root` with --quick and the `also` commands (a script path and its arguments), the longest-known first"
    cmds = [[str(p.relative_to(root)), '--quick'] for p in sorted((root/'bench').glob('*.py'))] + [shlex.split(c) for c in also]
    first = ('bench/peft_methods.py', 'bench/infer_latency.py')   # the longest quick runs start first: less idle time at the end
    return sorted(cmds, key=lambda c: c[0] not in first)

def run_one(i:int, cmd:list[str], threads:int, root:Path, logs:Path)->tuple[list[str], int, float, Path]:
    "Run `python cmd` (the i-th command) in `root` with `threads` torch threads; its output goes to a log file"
    log = logs/f'{i:02d}-{Path(cmd[0]).stem}.log'
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads)}
    t = time.time()
    with open(log, 'w') as f: rc = subprocess.call([sys.executable, *cmd], cwd=root, env=env, stdout=f, stderr=subprocess.STDOUT)
    return cmd, rc, time.time() - t, log

def run_all(cmds:list[list[str]], jobs:int=2, root:Path=ROOT)->int:
    "Run `cmds` `jobs` at a time, printing a line each and the whole log of each that failed; 1 if any failed, else 0"
    jobs = max(1, jobs); threads = max(1, (os.cpu_count() or 1) // jobs)
    logs, t0, failed = Path(tempfile.mkdtemp(prefix='specft-bench-quick-')), time.time(), []
    with ThreadPoolExecutor(jobs) as pool:
        for cmd, rc, secs, log in pool.map(lambda ic: run_one(*ic, threads, root, logs), enumerate(cmds)):
            print(f"{'ok    ' if rc == 0 else 'FAILED'} {secs:6.1f} s  {shlex.join(cmd)}", flush=True)
            if rc: failed.append((cmd, rc, log))
    for cmd, rc, log in failed: print(f'\n==== {shlex.join(cmd)}: exit status {rc} ====\n{log.read_text()}', flush=True)
    print(f'{len(failed)} of {len(cmds)} failed; {time.time() - t0:.0f} s in all, {jobs} at a time; logs in {logs}')
    return 1 if failed else 0

def main(argv=None)->int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--jobs', type=int, default=2, help='commands at a time (default 2)')
    ap.add_argument('--also', action='append', default=[], help='another quick command: a script and its arguments, quoted')
    a = ap.parse_args(argv)
    return run_all(commands(a.also), a.jobs)

if __name__ == '__main__': sys.exit(main())
