"""`python -m services.api token set` and `python -m services.api login`: a new access token from the terminal.

`token set` reads the token from stdin (never from argv, so it stays out of the process list and the shell
history). `login` runs Upstox's OAuth dialog: it prints the dialog URL, catches the redirect on the loopback
port of `UPSTOX_REDIRECT_URI`, and exchanges the code with `UPSTOX_CLIENT_ID` / `UPSTOX_CLIENT_SECRET`.
Both end in the same hot swap as `POST /api/v1/auth/token` (services.api.token_swap), straight through Redis,
so they work with the api down too.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import ipaddress
import secrets
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from libs.common.clock import SystemClock
from libs.common.credentials import Credentials
from libs.common.logging import setup_logging
from libs.common.redis_client import create_redis
from libs.common.settings import ConfigError, Settings, load_settings
from services.api.token_swap import SwapRefused, swap_access_token

COMMANDS = ("token", "login")


class LoginFailed(Exception):
    """The OAuth dance did not produce a token; the message says why."""


def main(argv: list[str]) -> int:
    """Run `token set` or `login`; returns the exit code (0 done, 1 refused or failed, 2 bad configuration)."""
    parser = argparse.ArgumentParser(prog="python -m services.api", description="Replace the Upstox access token.")
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("token", help="token set: read a new access token from stdin")
    token.add_argument("action", choices=["set"])
    login = sub.add_parser("login", help="log in through Upstox's OAuth dialog")
    login.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the redirect")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc.code, file=sys.stderr)
        return 2
    setup_logging("api", settings, stream=sys.stderr)
    try:
        if args.command == "token":
            token_text = _read_token()
            if not token_text:
                print("no token on stdin", file=sys.stderr)
                return 1
            return asyncio.run(_swap(settings, token_text, "cli"))
        return asyncio.run(_login(settings, args.timeout))
    except LoginFailed as exc:
        print(f"login failed: {exc}", file=sys.stderr)
        return 1


def _read_token() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("Access token (not echoed): ").strip()
    return sys.stdin.read().strip()


async def _swap(settings: Settings, token: str, source: str) -> int:
    clock = SystemClock()
    redis = create_redis(settings)
    try:
        async with httpx.AsyncClient(timeout=settings.broker_timeout_s, verify=settings.tls_ca_file or True) as http:
            swapped = await swap_access_token(
                token,
                source=source,
                settings=settings,
                credentials=Credentials(settings, redis, clock),
                http=http,
                clock=clock,
                redis=redis,
            )
    except SwapRefused as exc:
        print(f"token not replaced: {exc}", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()
    print(
        f"access token replaced for user {swapped.user_id or 'unknown'}; valid until {swapped.expires_at or 'revoked'}"
    )
    return 0


async def _login(settings: Settings, timeout_s: float) -> int:
    client_id = settings.upstox_client_id
    secret = settings.upstox_client_secret.get_secret_value()
    redirect = settings.upstox_redirect_uri
    if not (client_id and secret and redirect):
        raise LoginFailed("set UPSTOX_CLIENT_ID, UPSTOX_CLIENT_SECRET and UPSTOX_REDIRECT_URI (see the README)")
    target = urlsplit(redirect)
    if target.scheme != "http" or not _loopback(target.hostname or "") or not target.port:
        raise LoginFailed("UPSTOX_REDIRECT_URI must be http://127.0.0.1:PORT/... so this command can catch it")
    state = secrets.token_urlsafe(16)
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect, "state": state}
    server = _callback_server(target.hostname or "127.0.0.1", target.port, target.path or "/")
    print("Open this URL in a browser, log in and allow the app:", flush=True)
    print(f"{settings.api_base}/v2/login/authorization/dialog?{urlencode(query)}", flush=True)
    try:
        params = await asyncio.to_thread(_wait_for_redirect, server, time.monotonic() + timeout_s)
    finally:
        server.server_close()
    if params is None:
        raise LoginFailed(f"no redirect within {timeout_s:g} s")
    if not secrets.compare_digest(params.get("state", ""), state):
        raise LoginFailed("the redirect's state does not match this login (ignored)")
    if "code" not in params:
        raise LoginFailed(f"the dialog returned no code ({params.get('error', 'no reason given')})")
    form = {
        "code": params["code"],
        "client_id": client_id,
        "client_secret": secret,
        "redirect_uri": redirect,
        "grant_type": "authorization_code",
    }
    async with httpx.AsyncClient(timeout=settings.broker_timeout_s, verify=settings.tls_ca_file or True) as http:
        try:
            resp = await http.post(
                f"{settings.api_base}/v2/login/authorization/token", data=form, headers={"Accept": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise LoginFailed(f"token exchange unreachable: {type(exc).__name__}") from None
    body: Any = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
    token = body.get("access_token") if isinstance(body, dict) else None
    if resp.status_code != 200 or not isinstance(token, str):
        raise LoginFailed(f"token exchange answered {resp.status_code}: {_first_error(body)}")
    return await _swap(settings, token, "login")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Callback(BaseHTTPRequestHandler):
    params: dict[str, str] | None = None
    path_wanted = "/"

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != self.path_wanted:
            self.send_error(404)
            return
        type(self).params = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        self.wfile.write(b"Login received by the guard. You can close this tab.\n")

    def log_message(self, format: str, *args: Any) -> None:
        return  # the query carries the single-use code: keep it out of every log


def _callback_server(host: str, port: int, path: str) -> HTTPServer:
    handler = type("Callback", (_Callback,), {"params": None, "path_wanted": path})
    try:
        server = HTTPServer((host, port), handler)
    except OSError as exc:
        raise LoginFailed(f"cannot listen on {host}:{port} for the redirect: {exc.strerror}") from None
    server.timeout = 1.0
    return server


def _wait_for_redirect(server: HTTPServer, deadline: float) -> dict[str, str] | None:
    handler: Any = server.RequestHandlerClass
    while handler.params is None and time.monotonic() < deadline:
        server.handle_request()  # returns after server.timeout when nothing comes
    return None if handler.params is None else dict(handler.params)


def _first_error(body: Any) -> str:
    try:
        err = body["errors"][0]
        return f"{err.get('error_code') or err.get('errorCode')}: {err.get('message')}"
    except (KeyError, IndexError, TypeError):
        return "no reason given"
