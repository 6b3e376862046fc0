"""Screenshots of the web page for the README: the demo sweep, run for real, in headless Chromium.

Builds (or reuses) the demo assets under SHARPMIX_HOME, serves the API with an in-process worker
on a throwaway SQLite database, runs the demo's sweep (``service.demo.demo_spec``), then opens
the sweeps list and the sweep's page in Debian's chromium and writes
``docs/img/sweeps-list.png`` and ``docs/img/sweep-page.png``.

Run: .venv/bin/python tools/page_screenshot.py   (needs `apt-get install chromium`)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"


def main() -> int:
    """Run the demo sweep and take the two screenshots; returns the exit code."""
    sys.path.insert(0, str(ROOT))
    from playwright.sync_api import sync_playwright

    from service.client import SharpmixClient
    from service.config import get_settings
    from service.db.engine import make_engine, make_session_factory
    from service.db.tenants import create_api_key, create_tenant
    from service.demo import demo_spec
    from service.embedded import EmbeddedServer
    from workers.data.demo import build_demo_assets

    chromium = shutil.which("chromium")
    if chromium is None:
        print("needs Debian's chromium: apt-get install chromium", file=sys.stderr)
        return 2
    settings = get_settings()
    assets = build_demo_assets(settings.home)
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings.model_copy(
            update={
                "database_url": f"sqlite:///{tmp}/screenshot.db",
                "allowed_roots": [*settings.allowed_roots, assets.model_dir.parent],
            }
        )
        server = EmbeddedServer(settings, port=0)
        url = server.start()
        try:
            engine = make_engine(settings.resolved_database_url)
            with make_session_factory(engine)() as session:
                key = create_api_key(session, create_tenant(session, "demo").id)[1]
            engine.dispose()
            spec = demo_spec(assets.model_dir, assets.general_path, assets.math_path)
            with SharpmixClient(url, key) as client:
                sweep = client.submit(spec)
                done = client.wait(sweep.id, poll=1.0, max_poll=2.0)
            print(f"sweep {done.id} {done.state}", file=sys.stderr)
            OUT.mkdir(parents=True, exist_ok=True)
            with sync_playwright() as driver:
                browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1200, "height": 800})
                page.goto(url)
                page.get_by_label("Your API key").fill(key)
                page.get_by_role("button", name="Use this key").click()
                page.locator("#sweeps tbody tr a").first.wait_for()
                page.screenshot(path=str(OUT / "sweeps-list.png"))
                page.locator("#sweeps tbody tr a").first.click()
                page.locator("#chart-sharpness .main-svg").first.wait_for()
                page.wait_for_timeout(500)  # let plotly finish its layout
                page.screenshot(path=str(OUT / "sweep-page.png"), full_page=True)
                browser.close()
        finally:
            server.shutdown()
    print(f"wrote {OUT / 'sweeps-list.png'} and {OUT / 'sweep-page.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
