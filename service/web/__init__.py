"""The browser side of the API: the sweeps page, and Swagger UI / ReDoc that work offline.

Nothing here is built by the user and nothing is fetched from another host at run time:

- The page (``static/``: one HTML file, one script, one style sheet) is plain files. It asks for
  the API key once, keeps it in the tab's ``sessionStorage`` and sends it as the
  ``Authorization`` header of every call to ``/v1``: the same auth and tenant rules as any
  client, and the key never appears in a URL.
- Its charts are drawn by plotly.js, served from the copy the ``plotly`` Python package ships
  (``plotly/package_data/plotly.min.js``); the version is pinned in ``constraints.txt``.
- ``/docs`` and ``/redoc`` load Swagger UI and ReDoc from the copies the ``fastapi-offline``
  package ships (its ``static/`` folder), pinned the same way.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
PAGE = STATIC / "page.html"

# The page's own policy: scripts and data only from this server. plotly.js writes style
# elements, hence inline styles; images are PNGs fetched with the key and shown as blob: URLs.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; connect-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
# Swagger UI's page starts it with an inline script and ReDoc runs a blob: worker; neither may
# reach another host (ReDoc would fetch its logo from its vendor's CDN).
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; "
    "connect-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_CACHE = "public, max-age=86400"


def vendor_file(package: str, *parts: str) -> Path:
    """The path of a file shipped inside an installed package.

    Raises:
        RuntimeError: when the package is installed without the file (a broken install).
    """
    path = Path(str(resources.files(package).joinpath(*parts)))
    if not path.is_file():
        raise RuntimeError(
            f"{package} is installed without {'/'.join(parts)}; reinstall it "
            f"(pip install --force-reinstall -c constraints.txt {package})"
        )
    return path


def install_web(app: FastAPI) -> None:
    """Add the page (``/``, ``/sweeps/{id}``), its assets and the offline docs to ``app``.

    The app must be created with ``docs_url=None`` and ``redoc_url=None``: the routes added here
    replace FastAPI's, which load their scripts from a CDN.
    """
    plotly_js = vendor_file("plotly", "package_data", "plotly.min.js")
    docs_assets = vendor_file("fastapi_offline", "static", "swagger-ui-bundle.js").parent
    app.mount("/web/static", StaticFiles(directory=STATIC), name="web-static")
    app.mount("/docs/assets", StaticFiles(directory=docs_assets), name="docs-assets")

    def page() -> FileResponse:
        return FileResponse(
            PAGE,
            media_type="text/html",
            headers={
                "Content-Security-Policy": PAGE_POLICY,
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-cache",
            },
        )

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/sweeps/{sweep_id}", page, methods=["GET"], include_in_schema=False)

    def plotly() -> FileResponse:
        return FileResponse(
            plotly_js, media_type="text/javascript", headers={"Cache-Control": _CACHE}
        )

    app.add_api_route("/web/vendor/plotly.min.js", plotly, methods=["GET"], include_in_schema=False)

    openapi_url = app.openapi_url or "/openapi.json"

    def swagger() -> HTMLResponse:
        return _with_policy(
            get_swagger_ui_html(
                openapi_url=openapi_url,
                title=f"{app.title} API",
                swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                swagger_css_url="/docs/assets/swagger-ui.css",
                swagger_favicon_url="/docs/assets/favicon.png",
                swagger_ui_parameters={"persistAuthorization": False},
            )
        )

    def redoc() -> HTMLResponse:
        return _with_policy(
            get_redoc_html(
                openapi_url=openapi_url,
                title=f"{app.title} API",
                redoc_js_url="/docs/assets/redoc.standalone.js",
                redoc_favicon_url="/docs/assets/favicon.png",
                with_google_fonts=False,
            )
        )

    app.add_api_route("/docs", swagger, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", redoc, methods=["GET"], include_in_schema=False)


def _with_policy(response: HTMLResponse) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = DOCS_POLICY
    return response
