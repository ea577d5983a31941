"""The console's page and static files as served by the real app (the browser tests are in test_console.py)."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from matchdb.config import Settings
from matchdb.storage.database import make_engine, upgrade
from matchdb.web.app import create_app
from matchdb.web.console import ASSETS


def test_page_and_assets_are_served_with_a_strict_policy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    with TestClient(create_app(Settings(database_url=url))) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/console/app.js">' in page.text
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy
        shipped = sorted(path.name for path in ASSETS.iterdir())
        assert {"app.js", "api.js", "style.css", "index.html"} <= set(shipped)
        for name in shipped:
            asset = client.get(f"/console/{name}")
            assert asset.status_code == 200, name
            assert asset.content == (ASSETS / name).read_bytes()
        assert client.get("/console/app.js").headers["content-type"].startswith("text/javascript")
        # nothing outside the folder, nothing unknown
        for path in ("/console/nope.js", "/console/..%2Fweb%2Fconsole.py", "/console/%2e%2e%2fconsole.py"):
            assert client.get(path).status_code == 404, path
        # every module the page imports is shipped (no CDN, no build step)
        for name in shipped:
            if name.endswith(".js"):
                for line in (ASSETS / name).read_text().splitlines():
                    if line.startswith("import "):
                        target = line.rsplit('"', 2)[1]
                        assert target.startswith("./") and (ASSETS / target[2:]).is_file(), (name, line)
