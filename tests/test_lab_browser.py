"""JupyterLab in a real browser: ``jupyter lab`` on 127.0.0.1 with a token, notebook 01 opened in headless Chromium
(Debian's ``chromium`` and ``chromium-driver``, driven by Selenium), Run All Cells; the ipywidgets sliders render and
no cell shows an error, and no prompt asks to fetch Jupyter news (``make lab``'s offline flags, ``LAB_FLAGS``, read
from the Makefile); a screenshot (scrolled to the widget) is saved to ``runs/lab_browser/notebook01.png``.

``make test`` installs the browser first (``make browser``, apt as root). Without it (or without Selenium) this test
is skipped, saying so."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "01_non_iid_partitioning.ipynb"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.path.exists(p)), None
)
# a closed network: without the background-networking flags Chromium's own connections are refused and it stalls
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1800",
]


def lab_flags() -> list[str]:
    """``make lab``'s ``LAB_FLAGS``, as the Makefile states them (one definition for both)."""
    line = next(x for x in (ROOT / "Makefile").read_text().splitlines() if x.startswith("LAB_FLAGS :="))
    return line.split(":=", 1)[1].replace("$(CURDIR)", str(ROOT)).split()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 (token auth) with its own config and runtime dirs, serving a copy of the
    notebook (JupyterLab autosaves outputs: the repository's stripped notebook is never touched)."""
    port, token = _free_port(), "fedlib-test-token"
    served = tmp_path / "notebooks"
    served.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, served / NOTEBOOK)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("MPLBACKEND", None)  # make test exports Agg; a user's kernel draws inline, as JupyterLab shows
    env.pop("FEDLIB_PROGRESS", None)  # the suite runs nbval's kernels as headless; a user's JupyterLab is not
    cmd = [
        str(Path(sys.executable).parent / "jupyter-lab"),
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={served}",
        "--allow-root",
        *lab_flags(),
    ]
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "lab.log").read_text()[-3000:]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.3)
    else:
        pytest.fail("jupyter lab did not listen within 90 s:\n" + (tmp_path / "lab.log").read_text()[-3000:])
    yield f"http://127.0.0.1:{port}", token
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)
    log.close()


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None, reason="needs Debian's chromium and chromium-driver")
def test_notebook_01_runs_in_jupyterlab_in_chromium(lab, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, token = lab
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    shot = ROOT / "runs" / "lab_browser" / "notebook01.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    try:
        browser.get(f"{url}/lab/tree/{NOTEBOOK}?token={token}")
        wait = WebDriverWait(browser, 120)
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell")))
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".jp-Notebook-ExecutionIndicator")))
        time.sleep(2)  # the kernel connects
        menu = wait.until(
            EC.element_to_be_clickable((By.XPATH, "//div[contains(@class,'lm-MenuBar-itemLabel')][.='Run']"))
        )
        menu.click()
        item = wait.until(
            EC.element_to_be_clickable((By.XPATH, "//div[contains(@class,'lm-Menu-itemLabel')][.='Run All Cells']"))
        )
        item.click()

        def finished(driver):
            prompts = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputPrompt")]
            return prompts and all(p.startswith("[") and p[1:-2].strip().isdigit() for p in prompts)

        WebDriverWait(browser, 600, poll_frequency=1).until(finished)
        sliders = WebDriverWait(browser, 60).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".jupyter-widgets.widget-slider, .widget-hslider")
        )
        errors = browser.find_elements(By.CSS_SELECTOR, "[data-mime-type='application/vnd.jupyter.stderr']")
        tracebacks = [e.text for e in errors if "Traceback" in e.text or "Error" in e.text.split("\n")[0]]
        images = browser.find_elements(By.CSS_SELECTOR, ".jp-RenderedImage img")
        news = browser.find_elements(By.XPATH, "//*[contains(text(), 'Jupyter news')]")
        browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", sliders[0])  # the widget on screen
        time.sleep(1)
        browser.save_screenshot(str(shot))
    except Exception:
        browser.save_screenshot(str(shot))
        raise
    finally:
        browser.quit()
    assert len(sliders) >= 2, "the ipywidgets sliders did not render"
    assert not tracebacks, tracebacks
    assert images, "no figure rendered"
    assert not news, "JupyterLab asks to fetch news: make lab's offline settings were not applied"
    assert shot.stat().st_size > 10_000
