#!/usr/bin/env bash
# Compose mode: the same targets as deploy/local.sh, on a Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."
if docker compose version >/dev/null 2>&1; then DC=(docker compose); else DC=(docker-compose); fi
token="$(grep -E '^UPSTOX_ACCESS_TOKEN=.+' .env 2>/dev/null || true)"
profile=(); [ -z "$token" ] && [ -z "${UPSTOX_ACCESS_TOKEN:-}" ] && profile=(--profile sim)

ensure_api_key() { # the api listens on 0.0.0.0 inside its container, which requires a key
  if ! grep -qE '^API_KEY=.+' .env 2>/dev/null; then
    echo "API_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')" >> .env
    echo "==> wrote a new API_KEY to .env (send it as X-API-Key on POST/PATCH requests)"
  fi
}

ensure_credentials_key() { # encrypts a hot-swapped access token at rest in Redis (see README, Tokens)
  if ! grep -qE '^CREDENTIALS_KEY=.+' .env 2>/dev/null; then
    echo "CREDENTIALS_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')" >> .env
    chmod 600 .env
    echo "==> wrote a new CREDENTIALS_KEY to .env (it encrypts a replaced access token in Redis)"
  fi
}

case "${1:-}" in
  up) ensure_api_key; ensure_credentials_key; "${DC[@]}" "${profile[@]}" up -d --build --wait ;;
  down) "${DC[@]}" "${profile[@]}" down ;;
  restart) "${DC[@]}" "${profile[@]}" restart ;;
  status) "${DC[@]}" "${profile[@]}" ps ;;
  stop) shift; "${DC[@]}" "${profile[@]}" stop "$@" ;;  # some services (demo-blackout)
  start) shift; "${DC[@]}" "${profile[@]}" start "$@" ;;
  logs) shift; if [ $# -ge 1 ]; then docker logs -f "upstox_$1"; else "${DC[@]}" "${profile[@]}" logs -f; fi ;;
  *) echo "usage: $0 up|down|restart|status|logs [SERVICE]" >&2; exit 2 ;;
esac
