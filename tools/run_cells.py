#!/usr/bin/env python
"""Run a notebook's code cells in one plain Python namespace, without Jupyter: for machines that have torch but
no Jupyter stack (a bare GPU box). Skips the Colab set-up cell, nbdev's showdoc import and cells whose flags
are not asked for: `python tools/run_cells.py nbs/00_core.ipynb --flags cuda` runs ordinary and `cuda` cells.
"""
import argparse, codeop, json, re, sys, time
from nbflags import cell_flags

def code_cells(path):
    for c in json.load(open(path))['cells']:
        if c['cell_type'] == 'code': yield ''.join(c['source'])

def display(*objs):
    "IPython's display where IPython is installed, else print"
    try: from IPython.display import display as show
    except ImportError: show = print
    show(*objs)

def main():
    ap = argparse.ArgumentParser(); ap.add_argument('notebooks', nargs='+'); ap.add_argument('--flags', nargs='*', default=[])
    a = ap.parse_args()
    for nb in a.notebooks:
        ns, t0, n = {'__name__': '__main__', 'display': display}, time.time(), 0
        compile_cell = codeop.Compile()   # remembers `from __future__ import ...` across cells, as a kernel does
        for src in code_cells(nb):
            if cell_flags(src) - set(a.flags) or '# Colab set-up' in src: continue
            src = re.sub(r'^from nbdev\.showdoc import \*$', '', src, flags=re.M)
            src = re.sub(r'^%.*$', '', src, flags=re.M)   # IPython magics (%matplotlib inline) mean nothing here
            exec(compile_cell(src, f'{nb} cell {n}', 'exec'), ns); n += 1
        print(f'{nb}: {n} cells ran in {time.time()-t0:.1f} s', flush=True)

if __name__ == '__main__':
    sys.exit(main())
