"""A learner's first minutes, in a real browser: JupyterLab opens notebook 00, runs it, and the
memory calculator answers when the model size changes.

Uses Debian's chromium (/usr/bin/chromium, installed by `make setup` where apt-get works) driven
by Playwright; Playwright's own browser downloads are not used. Without chromium the test skips,
except under CI=true, where a missing browser is a failure.
"""
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/00_welcome.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SERVER_START_S = 90
NOTEBOOK_RUN_S = 420   # from "Run All" to the calculator on screen (the check() cells run tests)
GB_NUMBER = re.compile(r"([\d,]+\.\d+)\s*GB")

pytestmark = pytest.mark.browser


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} not found: install Debian's chromium (make setup does, as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + " -- CI must run the browser test", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_settings(folder: Path) -> Path:
    """User settings for this server only: autosave off, so running cells never writes outputs
    into the committed notebook; no question about fetching news."""
    settings = {("docmanager-extension", "plugin"): {"autosave": False},
                ("apputils-extension", "notification"): {"fetchNews": "false"}}
    for (extension, plugin), values in settings.items():
        path = folder / "@jupyterlab" / extension / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return folder


def start_lab(tmp: Path, port: int, token: str) -> subprocess.Popen:
    env = {**os.environ, "LABS_IMPL": "solutions", "LABS_PRESET": "quick", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
    env.pop("MPLBACKEND", None)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.token={token}", "--ServerApp.port_retries=0",
           f"--ServerApp.root_dir={ROOT}", f"--LabApp.user_settings_dir={lab_settings(tmp / 'settings')}",
           f"--LabApp.workspaces_dir={tmp / 'workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp / "jupyter.log", "w")
    # Own process group: the kernels it starts can be stopped with it, and nothing else.
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_server(proc: subprocess.Popen, base: str, token: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}", pytrace=False)
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"jupyter lab did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}", pytrace=False)


def stop_lab(proc: subprocess.Popen, base: str, token: str) -> None:
    """Ask the server to shut down (it stops its kernels), then make sure the group is gone."""
    try:
        req = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
        urllib.request.urlopen(req, timeout=10).close()
        proc.wait(timeout=20)
    except Exception:  # the server may already be gone or stuck: fall through to signals
        pass
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)  # the group this test started (server and its kernels)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue


def gb_value(text: str) -> float:
    match = GB_NUMBER.search(text)
    assert match, f"the calculator's total shows no 'N.NN GB' figure: {text!r}"
    return float(match.group(1).replace(",", ""))


def settled_total(total, before: str, timeout_s: float) -> str:
    """The calculator's total once it shows a GB figure and differs from `before`."""
    deadline = time.monotonic() + timeout_s
    text = before
    while time.monotonic() < deadline:
        text = total.text_content() or ""
        if text != before and GB_NUMBER.search(text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"the calculator's total did not change to a new 'N.NN GB' figure within "
                         f"{timeout_s:.0f} s: it read {before!r} before and {text!r} after")


def run_all_cells(page) -> None:
    """Run > Run All Cells, as a person would from the menu bar."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def test_memory_calculator_in_jupyterlab(tmp_path):
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    notebook_file = ROOT / NOTEBOOK
    committed = notebook_file.read_bytes()
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    proc = start_lab(tmp_path, port, token)
    try:
        wait_for_server(proc, base, token, tmp_path / "jupyter.log")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}", timeout=120_000)
                page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
                # the kernel is up when the status bar shows it idle
                page.get_by_text(re.compile(r"\| Idle")).first.wait_for(timeout=120_000)
                run_all_cells(page)

                total = page.locator(".labs-memory-total")
                total.wait_for(timeout=NOTEBOOK_RUN_S * 1000)
                expect(total).to_contain_text("GB", timeout=30_000)
                # A busy kernel answers widget changes only after its queued cells: wait for all.
                expect(page.locator(".jp-InputPrompt", has_text="[*]")).to_have_count(0, timeout=NOTEBOOK_RUN_S * 1000)
                # JupyterLab renders only the cells near the viewport: bring the calculator back into
                # view, then read its figure (text_content, not what happens to be painted).
                total.scroll_into_view_if_needed()
                before = settled_total(total, "", timeout_s=30)
                page.screenshot(path=str(tmp_path / "calculator-before.png"), full_page=False)

                select = page.locator(".labs-memory-model select")
                labels = [o.strip() for o in select.locator("option").all_inner_texts()]
                current = select.evaluate("el => el.options[el.selectedIndex].text").strip()
                larger = next(l for l in reversed(labels) if l.startswith("70B"))
                assert current != larger, f"the calculator should not start on the largest model ({current})"
                select.select_option(label=larger)
                # The widget rewrites its HTML on each change, so the element can read empty for
                # a moment: wait for a new text with a figure in it, not just any other text.
                after = settled_total(total, before, timeout_s=30)
                total.scroll_into_view_if_needed()
                page.screenshot(path=str(tmp_path / "calculator-after.png"), full_page=False)
                assert gb_value(after) > gb_value(before), (
                    f"choosing {larger} instead of {current} should raise the total: {before!r} -> {after!r}")
            finally:
                browser.close()
    finally:
        stop_lab(proc, base, token)
    assert notebook_file.read_bytes() == committed, f"the browser session modified {NOTEBOOK}"
