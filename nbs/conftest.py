"""nbval runs notebooks in a real Jupyter kernel but does not know nbdev's cell flags: skip the cells flagged
`#| slow` (unless SPECFT_SLOW=1) and `#| cuda` (unless torch sees a GPU), as `nbdev_test` does."""
import os, sys
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'tools'))
from nbflags import cell_flags

def pytest_collection_modifyitems(config, items):
    skip = set() if os.environ.get('SPECFT_SLOW') == '1' else {'slow'}
    try:
        import torch
        if not torch.cuda.is_available(): skip.add('cuda')
    except ImportError: skip.add('cuda')
    for item in items:
        cell = getattr(item, 'cell', None)
        if cell is not None and cell.get('cell_type') == 'code' and (hit := cell_flags(cell.source) & skip):
            item.add_marker(pytest.mark.skip(reason=f"#| {' '.join(sorted(hit))} cell"))

def pytest_itemcollected(item):
    "nbdev_clean drops execution counts; nbval would take a cell with outputs but no count for an unrun one"
    cell = getattr(item, 'cell', None)
    if cell is not None and cell.get('cell_type') == 'code' and cell.get('outputs') and cell.get('execution_count') is None:
        cell['execution_count'] = 1
