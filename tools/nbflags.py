"""The test flags of notebook cells, in one place: `#| slow` and `#| cuda` (settings.ini's `tst_flags`, which
`nbdev_test` skips unless asked). nbs/conftest.py (nbval), tools/run_nb.py and tools/run_cells.py import it."""
import configparser, re
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
