"""The test flags of notebook cells, in one place: `#| slow` and `#| cuda` (settings.ini's `tst_flags`, which
`nbdev_test` skips unless asked). nbs/conftest.py (nbval), tools/run_nb.py and tools/run_cells.py import it; the
Makefile runs it (`python tools/nbflags.py slow`: the notebooks with a `slow` cell, one file name a line)."""
import configparser, json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def tst_flags()->list[str]:
    "The flags listed in settings.ini's `tst_flags`"
    c = configparser.ConfigParser(); c.read(ROOT/'settings.ini')
    return c['DEFAULT']['tst_flags'].split()

FLAG_RE = re.compile(r'^#\|\s*(' + '|'.join(map(re.escape, tst_flags())) + r')\s*$', flags=re.M)

def cell_flags(source:str)->set[str]:
    "The test flags on a code cell's own lines, e.g. {'slow'} for a cell with a `#| slow` line"
    return set(FLAG_RE.findall(source))

def notebooks_with(flag:str)->list[Path]:
    "The notebooks under nbs/ with at least one code cell flagged `flag`"
    nbs = sorted(p for p in (ROOT/'nbs').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)
    return [p for p in nbs if any(c['cell_type'] == 'code' and flag in cell_flags(''.join(c['source']))
                                  for c in json.loads(p.read_text())['cells'])]

if __name__ == '__main__':
    print('\n'.join(p.name for p in notebooks_with(sys.argv[1])))
