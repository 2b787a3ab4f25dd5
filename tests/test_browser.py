"""The control panel in a real browser (slow): lesson 11's panel cell in JupyterLab, in headless Chromium driven by
selenium; Start is clicked with the tiny model and the finished run's metrics and run folder are read off the page.

Runs with `SPECFT_SLOW=1 pytest -q tests/test_browser.py` (part of `make test-slow`). It needs Debian's `chromium` and
`chromium-driver` packages (`apt-get install chromium chromium-driver`); without them it skips and says so. Nothing is
downloaded: selenium is given the driver's path, so Selenium Manager never runs. JupyterLab listens on a free port of
127.0.0.1 only, behind a random token; every process the test starts (the server, its kernel, the browser) is ended."""
from specft.serve import free_port
import json, os, re, secrets, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

pytestmark = pytest.mark.skipif(os.environ.get('SPECFT_SLOW') != '1',
                                reason='slow: a real browser; run with SPECFT_SLOW=1 pytest tests/test_browser.py (make test-slow)')

NB = Path(__file__).parent.parent/'nbs'/'11_widgets.ipynb'
PANEL_CELL = 'panel = TrainPanel()\npanel'   # the lesson's cell that shows the panel
TINY = "panel.model.value, panel.epochs.value, panel.max_len.value, panel.batch_size.value, panel.max_train_rows.value = 'tiny', 1, 64, 8, 40"
TIMEOUT = 420  # seconds for the whole test: server, kernel, the lesson's definitions, a tiny run
INSTALL = "install Debian's chromium and chromium-driver: sudo apt-get install chromium chromium-driver"

def browser_paths()->tuple[str, str]:
    "The chromium binary and its chromedriver, or skip saying what to install"
    chromium = next(filter(None, map(shutil.which, ('chromium', 'chromium-browser'))), None)
    driver = shutil.which('chromedriver') or next((p for p in ('/usr/bin/chromedriver', '/usr/lib/chromium/chromedriver')
                                                   if os.access(p, os.X_OK)), None)
    if chromium is None or driver is None:
        pytest.skip(f"no {'chromium' if chromium is None else 'chromedriver'} on PATH; to run this test, {INSTALL}")
    return chromium, driver

def panel_notebook(dest:Path)->Path:
    "A copy of lesson 11 with its set-up cells, its exported definitions and its panel cell, set to a tiny run"
    nb = json.loads(NB.read_text())
    cells, title_seen = [], False
    for c in nb['cells']:
        src = ''.join(c['source'])
        title_seen = title_seen or (c['cell_type'] == 'markdown' and src.startswith('# '))
        if c['cell_type'] == 'code' and (not title_seen or src.startswith('#| export')): cells.append(c)
        if src == PANEL_CELL:
            cells.append(c); break
    else: raise AssertionError(f"{NB} has no cell {PANEL_CELL!r}; the browser test needs the lesson's panel cell")
    cells.append({'cell_type': 'code', 'metadata': {}, 'execution_count': None, 'outputs': [], 'source': TINY})
    for i, c in enumerate(cells): c.update(id=f'c{i}', outputs=[], execution_count=None)
    nb.update(cells=cells, metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})
    (dest/NB.name).write_text(json.dumps(nb))
    return dest/NB.name

def lab_settings(folder:Path):
    "JupyterLab settings for a quiet, fully rendered page: no news or update toasts, no windowed notebook"
    for name, s in {'apputils-extension/notification': {'fetchNews': 'false', 'checkForUpdates': False},
                    'notebook-extension/tracker': {'windowingMode': 'none'}}.items():
        f = folder/'@jupyterlab'/f'{name}.jupyterlab-settings'
        f.parent.mkdir(parents=True, exist_ok=True); f.write_text(json.dumps(s))

def descendants(pid:int)->list:
    "The processes started by `pid`, found now (psutil comes with ipykernel)"
    import psutil
    try: return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess: return []

def end(procs, grace:float=10):
    "Terminate `procs` (psutil processes), then kill those still alive after `grace` seconds"
    import psutil
    for p in procs:
        try: p.terminate()
        except psutil.NoSuchProcess: pass
    for p in psutil.wait_procs(procs, timeout=grace)[1]:
        try: p.kill()
        except psutil.NoSuchProcess: pass

@pytest.fixture
def lab(tmp_path):
    "JupyterLab on a free loopback port with a token, serving a folder with the panel notebook; ended afterwards"
    pytest.importorskip('jupyterlab', reason='JupyterLab is not installed: pip install jupyterlab')
    root, port, token = tmp_path/'nbs', free_port(), secrets.token_hex(16)
    root.mkdir(); panel_notebook(root)
    for d in ('config', 'data', 'runtime', 'settings', 'workspaces', 'ipython', 'tmp'): (tmp_path/d).mkdir()
    lab_settings(tmp_path/'settings')
    env = {**os.environ, 'PATH': f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # the kernel's python
           'JUPYTER_CONFIG_DIR': str(tmp_path/'config'), 'JUPYTER_RUNTIME_DIR': str(tmp_path/'runtime'),
           'JUPYTERLAB_SETTINGS_DIR': str(tmp_path/'settings'), 'JUPYTERLAB_WORKSPACES_DIR': str(tmp_path/'workspaces'),
           'IPYTHONDIR': str(tmp_path/'ipython'), 'TMPDIR': str(tmp_path/'tmp'),
           'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}
    log = open(tmp_path/'jupyter.log', 'w')
    server = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--ServerApp.ip=127.0.0.1',
                               f'--ServerApp.port={port}', '--ServerApp.port_retries=0', f'--IdentityProvider.token={token}',
                               f'--ServerApp.root_dir={root}', '--ServerApp.terminals_enabled=False',
                               '--LabApp.extension_manager=readonly',  # no extension index asked: offline
                               *(['--allow-root'] if hasattr(os, 'geteuid') and os.geteuid() == 0 else [])],  # CI runs as root
                              env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}'
    def api(path, method='GET'):
        req = urllib.request.Request(url + path, method=method, headers={'Authorization': f'token {token}'})
        with urllib.request.urlopen(req, timeout=5) as r: return r.read()
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None: raise AssertionError(f"jupyter lab exited ({server.returncode}):\n{(tmp_path/'jupyter.log').read_text()[-3000:]}")
            try: api('/api/status'); break
            except OSError:
                if time.monotonic() > deadline: raise AssertionError(f"jupyter lab did not answer in 90 s:\n{(tmp_path/'jupyter.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield dict(url=url, token=token, root=root, log=tmp_path/'jupyter.log')
    finally:
        started = descendants(server.pid)  # its kernels run in sessions of their own: end them by pid
        try: api('/api/shutdown', 'POST')  # shuts its kernels down too
        except OSError: pass
        try: server.wait(15)
        except subprocess.TimeoutExpired: server.kill(); server.wait(5)
        end(started)
        log.close()

@pytest.fixture
def browser():
    "Headless Debian chromium, driven through its chromedriver (no Selenium Manager, no download); quit afterwards"
    chromium, driver_path = browser_paths()
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed: pip install selenium')
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--window-size=1400,3000',
              '--no-first-run', '--disable-extensions', '--disable-background-networking'): opts.add_argument(a)
    service = Service(executable_path=driver_path)
    drv = webdriver.Chrome(service=service, options=opts)
    drv.set_page_load_timeout(60)
    started = descendants(service.process.pid)
    try: yield drv
    finally:
        try: drv.quit()
        finally: end([*started, *descendants(service.process.pid)], grace=5)

def wait_for(what:str, f, timeout:float, every:float=0.5):
    "Poll `f` until it returns something truthy and return that; fail saying `what` after `timeout` seconds"
    deadline = time.monotonic() + timeout
    while True:
        try: got = f()
        except Exception: got = None  # an element not there yet, or replaced while read
        if got: return got
        if time.monotonic() > deadline: raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)

def button(drv, label:str):
    "The panel's button labelled `label`"
    from selenium.webdriver.common.by import By
    return drv.find_element(By.XPATH, f"//button[contains(@class,'widget-button')][normalize-space()='{label}']")

def looks(b)->tuple[bool, bool]:
    "Whether a button is disabled, and whether it is coloured (a primary, danger, ... style)"
    return b.get_attribute('disabled') is not None, bool(re.search(r'\bmod-(primary|success|info|warning|danger)\b', b.get_attribute('class')))

def test_panel_trains_in_a_real_browser(browser, lab, tmp_path):  # browser first: without chromium it skips at once
    from selenium.webdriver.common.by import By
    start_time, drv = time.monotonic(), browser
    left = lambda: TIMEOUT - (time.monotonic() - start_time)
    try:
        drv.get(f"{lab['url']}/lab/tree/{NB.name}?token={lab['token']}")
        wait_for('the notebook to open', lambda: drv.find_elements(By.CSS_SELECTOR, '.jp-NotebookPanel .jp-Cell'), 120)
        wait_for('the kernel to be idle', lambda: drv.find_element(By.XPATH, "//*[contains(@class,'jp-StatusBar-Widget')]"
                                                                 "[contains(normalize-space(),'| Idle')]"), 120)
        run_menu = wait_for("the 'Run' menu", lambda: drv.find_element(By.XPATH, "//li[contains(@class,'lm-MenuBar-item')][normalize-space()='Run']"), 30)
        run_menu.click()
        wait_for("'Run All Cells'", lambda: drv.find_element(By.XPATH, "//li[contains(@class,'lm-Menu-item')]"
                                                        "[.//*[contains(@class,'lm-Menu-itemLabel')][normalize-space()='Run All Cells']]"), 10).click()
        # the panel shows, and the last cell (the tiny settings) has run
        start = wait_for('the panel', lambda: button(drv, 'Start'), min(180, left()))
        wait_for('the tiny settings cell to run', lambda: re.fullmatch(r'\[\d+\]:', drv.find_elements(
            By.CSS_SELECTOR, '.jp-Cell .jp-InputPrompt')[-1].text.strip()), min(60, left()))
        panel = drv.find_element(By.CSS_SELECTOR, '.jp-OutputArea-output .widget-vbox')
        # idle: Start live and blue, Stop disabled and grey
        assert looks(start) == (False, True) and looks(button(drv, 'Stop')) == (True, False)
        assert button(drv, 'Stop').get_attribute('title') == 'No run is going'
        # the Data tab's preview: the texts as training sees them, the raw texts beside them
        text = panel.text
        assert 'each text as training will see it' in text and "didn't want" in text and 'didn&#039;t' in text
        # the Model tab has the tiny model
        drv.find_element(By.XPATH, "//div[contains(@class,'lm-TabBar-tab')][normalize-space()='Model']").click()
        assert any(i.get_attribute('value') == 'tiny' for i in panel.find_elements(By.CSS_SELECTOR, 'input') if i.is_displayed())
        drv.find_element(By.XPATH, "//div[contains(@class,'lm-TabBar-tab')][normalize-space()='Data']").click()
        # Start: while the run goes, Stop is the live, red one
        drv.execute_script('arguments[0].scrollIntoView({block: "center"})', start)
        start.click()
        seen = wait_for('Stop to come alive', lambda: (looks(button(drv, 'Start')), looks(button(drv, 'Stop')))
                        if looks(button(drv, 'Stop'))[0] is False else None, 60, every=0.1)
        assert seen == ((True, False), (False, True))
        status = lambda: drv.find_element(By.XPATH, "//*[starts-with(normalize-space(), 'Done. Run folder:') or "
                                                    "contains(normalize-space(), 'Traceback') or ancestor-or-self::span[contains(@style,'b00020')]]").text
        said = wait_for('the run to finish', status, min(240, left()), every=1)
        assert said.startswith('Done. Run folder:'), f"the panel says: {said}"
        time.sleep(1)  # the last widget updates (results, buttons) follow the status line
        text = panel.text
        # the run folder it names exists, under the notebook's folder, with the metrics the page shows
        (run_dir,) = (lab['root']/'runs').iterdir()
        assert run_dir.name.startswith('drug-reviews-tiny-') and f'run folder: {run_dir}' in text
        assert said == f"Done. Run folder: {run_dir.relative_to(lab['root'])}"  # relative to the notebook's folder
        metrics = json.loads((run_dir/'metrics.json').read_text())
        tables = [t for t in panel.find_elements(By.CSS_SELECTOR, 'table.dataframe') if 'baseline' in t.text]
        assert len(tables) == 1, [t.text for t in panel.find_elements(By.CSS_SELECTOR, 'table.dataframe')]
        table = tables[0]
        rows = {r.find_element(By.TAG_NAME, 'th').text: [c.text for c in r.find_elements(By.TAG_NAME, 'td')]
                for r in table.find_elements(By.CSS_SELECTOR, 'tbody tr')}
        assert list(rows) == ['accuracy', 'macro_f1', 'f1[negative]', 'f1[neutral]', 'f1[positive]']
        assert all(re.fullmatch(r'-?\d\.\d{3}', c) for cells in rows.values() for c in cells), rows  # three decimals, as the CLI
        assert rows['accuracy'][:2] == [f"{metrics['accuracy']:.3f}", f"{metrics['baseline']['accuracy']:.3f}"]
        assert len(panel.find_elements(By.CSS_SELECTOR, "img[src^='data:image/png']")) == 2  # live curves, confusion matrix
        assert re.search(r'step (\d+)/\1', text)  # the progress line at its end
        assert looks(button(drv, 'Start')) == (False, True) and looks(button(drv, 'Stop')) == (True, False)
    finally:
        drv.execute_script('window.scrollTo(0, 0)')
        for el in drv.find_elements(By.CSS_SELECTOR, '.jp-OutputArea-output .widget-vbox')[:1]:
            drv.execute_script('arguments[0].scrollIntoView({block: "start"})', el)
            el.screenshot(str(tmp_path/'panel.png'))
        drv.save_screenshot(str(tmp_path/'page.png'))
        print(f"screenshots: {tmp_path/'panel.png'}, {tmp_path/'page.png'}")
