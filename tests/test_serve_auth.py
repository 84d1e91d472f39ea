"""`saelineage serve` beyond loopback: the access token (refusal without one, Bearer header, cookie login,
constant-time comparison, nothing in the access log)."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import sys
import threading
import time
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import saelineage.web.app as web_app
from saelineage.cli import app as cli_app
from saelineage.errors import SaelineageError
from saelineage.testing.sample_run import build_sample_run
from saelineage.web.app import AUTH_COOKIE, AUTH_ENV, TOKEN_HELP, create_app, is_loopback

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOKEN = secrets.token_urlsafe(32)
PAGES = ["/", "/graph", "/feature/1/3", "/feature/1/3/card", "/communities", "/search?q=the", "/prompt", "/docs"]
JSON_PATHS = ["/api/status", "/api/features/1/3", "/openapi.json", "/static/app.css", "/vendor/plotly.min.js"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return build_sample_run(tmp_path_factory.mktemp("serveauth") / "run", n_layers=3, d_sae=48)


@pytest.fixture(scope="module")
def guarded(run):
    return create_app(run.path, allowed_hosts=["testserver"], auth_token=TOKEN)


@pytest.fixture
def client(guarded):
    """A fresh client (empty cookie jar) per test: a login in one test must not let another pass."""
    return TestClient(guarded, follow_redirects=False)


@pytest.fixture
def no_serving(monkeypatch):
    """Nothing may be built or bound: `serve` must refuse before either."""

    def boom(*a: Any, **kw: Any) -> None:
        raise AssertionError("serve went on to build the app or bind a port")

    monkeypatch.delenv(AUTH_ENV, raising=False)
    monkeypatch.setattr(web_app, "create_app", boom)
    monkeypatch.setattr(uvicorn, "run", boom)


@pytest.fixture
def recorded(monkeypatch):
    """`serve` with the app and uvicorn replaced by recorders: what it would have served, and how."""
    calls: dict[str, Any] = {}
    monkeypatch.delenv(AUTH_ENV, raising=False)

    def fake_app(run_dir: Any, **kw: Any) -> str:
        calls["app"] = kw
        return "APP"

    def fake_run(app: Any, **kw: Any) -> None:
        assert app == "APP"
        calls["uvicorn"] = kw

    # `serve` looks both up when called, so these stand in for the real ones
    monkeypatch.setattr(web_app, "create_app", fake_app)
    monkeypatch.setattr(uvicorn, "run", fake_run)
    return calls


def serve(run, *args: str):
    return CliRunner().invoke(cli_app, ["serve", str(run.path), *args])


# ---- who needs a token -------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.4.5.6", "::1", "[::1]", "localhost", "LocalHost"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "192.168.0.7", "127.example.com", "localhost.evil"])
def test_other_hosts(host):
    assert not is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.0.7", "127.example.com"])
def test_serve_refuses_other_hosts_without_token(run, no_serving, host):
    res = serve(run, "--host", host)
    assert res.exit_code != 0
    exc = res.exception
    assert isinstance(exc, SaelineageError), res.output
    assert host in exc.problem and "no access token" in exc.problem
    assert exc.fix and "--auth-token" in exc.fix and AUTH_ENV in exc.fix and "--insecure" in exc.fix


def test_console_entry_point_prints_problem_and_fix(run, no_serving, monkeypatch, capsys):
    from saelineage.cli import main

    monkeypatch.setattr(sys, "argv", ["saelineage", "serve", str(run.path), "--host", "0.0.0.0"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "error:" in err and "no access token" in err and "fix:" in err and "--auth-token" in err


def test_short_token_is_refused(run, no_serving):
    res = serve(run, "--host", "0.0.0.0", "--auth-token", "short")
    assert isinstance(res.exception, SaelineageError) and "at least 16 characters" in res.exception.problem
    with pytest.raises(SaelineageError):
        create_app(run.path, auth_token="has spaces in the token")


def test_insecure_serves_without_token(run, recorded):
    res = serve(run, "--host", "0.0.0.0", "--insecure")
    assert res.exit_code == 0, res.output
    assert recorded["app"]["auth_token"] is None and recorded["app"]["allowed_hosts"] is None
    assert recorded["uvicorn"]["host"] == "0.0.0.0"


def test_token_flag_and_environment(run, recorded, monkeypatch):
    res = serve(run, "--host", "0.0.0.0", "--auth-token", TOKEN)
    assert res.exit_code == 0, res.output
    assert recorded["app"]["auth_token"] == TOKEN and TOKEN not in res.output
    recorded.clear()
    monkeypatch.setenv(AUTH_ENV, TOKEN)
    res = serve(run, "--host", "::")
    assert res.exit_code == 0, res.output
    assert recorded["app"]["auth_token"] == TOKEN and TOKEN not in res.output


def test_loopback_needs_no_token_but_enforces_one_given(run, recorded, monkeypatch):
    assert serve(run).exit_code == 0
    assert recorded["app"]["auth_token"] is None
    recorded.clear()
    monkeypatch.setenv(AUTH_ENV, TOKEN)
    assert serve(run).exit_code == 0
    assert recorded["app"]["auth_token"] == TOKEN


# ---- requests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES + JSON_PATHS)
def test_every_route_refuses_without_token(client, run, path):
    r = client.get(path)
    assert r.status_code == 401, path
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "content-security-policy" in r.headers  # refusals pass the security headers' middleware too
    assert run.path.name not in r.text  # nothing of the run before the token
    if path in JSON_PATHS:
        assert r.json() == {"detail": TOKEN_HELP}
    else:
        assert r.headers["content-type"].startswith("text/html") and "?token=TOKEN" in r.text


def test_post_refused_without_token(client):
    r = client.post("/api/prompt/tokens", json={"text": "hello"})
    assert r.status_code == 401 and r.json() == {"detail": TOKEN_HELP}


@pytest.mark.parametrize("path", PAGES + JSON_PATHS)
def test_bearer_header_passes(client, path):
    r = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, path


def test_bearer_scheme_is_case_insensitive(client):
    assert client.get("/api/status", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def test_wrong_token_of_same_length_is_refused(client):
    wrong = TOKEN[:-1] + ("A" if TOKEN[-1] != "A" else "B")
    assert len(wrong) == len(TOKEN) and wrong != TOKEN
    assert client.get("/api/status", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
    assert client.get("/api/status", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    r = client.get(f"/?token={wrong}")
    assert r.status_code == 401 and "set-cookie" not in r.headers
    client.cookies.set(AUTH_COOKIE, TOKEN)  # the cookie holds a value derived from the token, not the token
    assert client.get("/").status_code == 401


def test_cookie_login_by_query_token(client):
    r = client.get(f"/feature/1/3?sort=pearson&token={TOKEN}")
    assert r.status_code == 303
    assert r.headers["location"] == "/feature/1/3?sort=pearson"  # same URL, token dropped
    cookie = r.headers["set-cookie"]
    assert f"{AUTH_COOKIE}=" in cookie and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    assert TOKEN not in cookie and TOKEN not in r.text
    for path in [r.headers["location"], "/api/features/1/3", "/static/app.css", "/docs", "/openapi.json"]:
        assert client.get(path).status_code == 200, path
    client.cookies.clear()
    assert client.get("/").status_code == 401


def test_login_redirect_stays_on_this_site(client):
    for path in ["//evil.example/x", "/\\evil.example/x"]:
        r = client.get(f"http://testserver{path}?token={TOKEN}")
        assert r.status_code == 303
        loc = r.headers["location"]
        assert loc.startswith("/") and not loc.startswith("//") and not loc.startswith("/\\"), loc


def test_comparison_is_constant_time(client, monkeypatch):
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert client.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert (TOKEN.encode(), TOKEN.encode()) in seen
    seen.clear()
    assert client.get(f"/?token={TOKEN}").status_code == 303
    assert (TOKEN.encode(), TOKEN.encode()) in seen


# ---- logs ----------------------------------------------------------------------------------------


def test_token_never_reaches_the_access_log(run, caplog):
    """A real uvicorn server: its access log prints the path from the request's scope, from which the
    middleware has cut the token (valid or not) before answering."""
    app = create_app(run.path, auth_token=TOKEN)
    # log_config=None: uvicorn leaves logging alone, so its access records reach caplog
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=True))
    thread = threading.Thread(target=server.run, daemon=True)
    wrong = TOKEN[::-1]
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        thread.start()
        try:
            for _ in range(200):
                if server.started:
                    break
                time.sleep(0.05)
            assert server.started
            port = server.servers[0].sockets[0].getsockname()[1]
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, follow_redirects=False) as http:
                r = http.get(f"/search?q=the&token={TOKEN}")
                assert r.status_code == 303 and r.headers["location"] == "/search?q=the"
                assert http.get(r.headers["location"]).status_code == 200  # by the cookie
                http.cookies.clear()
                assert http.get(f"/api/status?token={wrong}").status_code == 401
                assert http.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        finally:
            server.should_exit = True
            thread.join(10)
    access = [rec.getMessage() for rec in caplog.records if rec.name == "uvicorn.access"]
    assert any('"GET /search?q=the HTTP/1.1" 303' in m for m in access), access
    assert any('"GET /api/status HTTP/1.1" 401' in m for m in access), access
    logged = "\n".join(rec.getMessage() for rec in caplog.records) + caplog.text
    assert TOKEN not in logged and wrong not in logged


def test_prompt_queue_option_reaches_the_app(run, recorded):
    """`serve --prompt-queue N` sizes the app's live-prompt queue (default: the queue's own default)."""
    from saelineage.query.prompt import MAX_WAITING

    assert serve(run).exit_code == 0 and recorded["app"]["prompt_queue"] == MAX_WAITING
    res = serve(run, "--prompt-queue", "3")
    assert res.exit_code == 0, res.output
    assert recorded["app"]["prompt_queue"] == 3
