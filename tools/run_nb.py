#!/usr/bin/env python
"""Execute notebooks top to bottom in a fresh Jupyter kernel and save their outputs in place.

Cells flagged `#| cuda` run only where torch sees a GPU; with `--skip slow` the `slow` cells are
skipped too. A skipped cell keeps the outputs it had, so committed notebooks show every result.
Usage: python tools/run_nb.py nbs/03a_corpus.ipynb [more.ipynb ...] [--skip slow] [--timeout 900]
"""
import argparse, copy, sys
from pathlib import Path
import nbformat
from nbclient import NotebookClient
from nbflags import cell_flags

def run(path, skip, timeout):
    nb = nbformat.read(path, as_version=4)
    work = copy.deepcopy(nb)
    skipped = []
    for i, cell in enumerate(work.cells):
        if cell.cell_type == 'code' and cell_flags(cell.source) & skip:
            cell.source = 'pass'; skipped.append(i)
    NotebookClient(work, timeout=timeout, kernel_name='python3',
                   resources={'metadata': {'path': str(Path(path).parent)}}).execute()
    for i, (old, new) in enumerate(zip(nb.cells, work.cells)):
        if old.cell_type == 'code' and i not in skipped:
            old.outputs, old.execution_count = new.outputs, new.execution_count
    nbformat.write(nb, path)
    return skipped

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('notebooks', nargs='+')
    ap.add_argument('--skip', nargs='*', default=[], help="flags to skip besides 'cuda' without a GPU")
    ap.add_argument('--timeout', type=int, default=1800)
    a = ap.parse_args()
    import torch
    skip = set(a.skip) | (set() if torch.cuda.is_available() else {'cuda'})
    for p in a.notebooks:
        print(p, 'skipped cells:', run(p, skip, a.timeout), file=sys.stderr)
