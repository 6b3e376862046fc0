"""Screenshots of the web page for the README: the demo sweep, run for real, in headless Chromium.

Uses the database and demo assets under SHARPMIX_HOME (the assets are built when missing). When
tenant ``demo`` has no succeeded sweep there yet, runs the demo's sweep (``sharpmix.demo``) first.
Then serves the API, opens the sweeps list and the newest succeeded sweep's page in Debian's
chromium and writes ``docs/img/sweeps-list.png`` and ``docs/img/sweep-page.png``.

Run: SHARPMIX_HOME=... .venv/bin/python tools/page_screenshot.py  (needs Debian's chromium)
"""

from __future__ import annotations

import shutil
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"


def main() -> int:
    """Find or run the demo sweep, then take the two screenshots; returns the exit code."""
    sys.path.insert(0, str(ROOT))
    import uvicorn
    from playwright.sync_api import sync_playwright

    from service.api.main import create_app
    from service.client import SharpmixClient
    from service.config import get_settings
    from service.db.engine import make_engine, make_session_factory
    from service.db.migrate import upgrade
    from service.db.tenants import create_api_key, create_tenant
    from sharpmix.assets.demo import build_demo_assets
    from sharpmix.demo import demo_spec, demo_sweep

    chromium = shutil.which("chromium")
    if chromium is None:
        print("needs Debian's chromium: apt-get install chromium", file=sys.stderr)
        return 2
    settings = get_settings()
    assets = build_demo_assets(settings.home)
    settings = settings.model_copy(
        update={"allowed_roots": [*settings.allowed_roots, assets.model_dir.parent]}
    )
    upgrade(settings.resolved_database_url)  # a fresh SHARPMIX_HOME has no tables yet
    engine = make_engine(settings.resolved_database_url)
    with make_session_factory(engine)() as session:
        key = create_api_key(session, create_tenant(session, "demo").id)[1]
    engine.dispose()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        with SharpmixClient(url, key) as client:
            done = [s for s in client.list_sweeps(limit=100).items if s.state == "succeeded"]
        if not done:
            spec = demo_spec(assets.model_dir, assets.general_path, assets.math_path)
            if demo_sweep(settings, spec, plot_dir=assets.model_dir.parent) != 0:
                return 1
            with SharpmixClient(url, key) as client:
                done = [s for s in client.list_sweeps(limit=100).items if s.state == "succeeded"]
        sweep_id = done[0].id
        OUT.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(url)
            page.get_by_label("Your API key").fill(key)
            page.get_by_role("button", name="Use this key").click()
            page.locator("#sweeps tbody tr a").first.wait_for()
            page.screenshot(path=str(OUT / "sweeps-list.png"))
            page.goto(f"{url}/sweeps/{sweep_id}")
            page.locator("#chart-sharpness .main-svg").first.wait_for()
            page.wait_for_timeout(500)  # let plotly finish its layout
            page.screenshot(path=str(OUT / "sweep-page.png"), full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join()
    print(f"wrote {OUT / 'sweeps-list.png'} and {OUT / 'sweep-page.png'} (sweep {sweep_id})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
