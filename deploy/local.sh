#!/usr/bin/env bash
# Local mode (no Docker engine): every service as a process supervised by supervisord.
# supervisord rather than honcho: it daemonizes (so `make up` can return), restarts a crashed service,
# tracks pids and answers `supervisorctl status`; honcho only runs a Procfile in the foreground.
#   deploy/local.sh up | down | restart | status | logs [SERVICE]
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
RUN="$ROOT/.run"
LOGS="$ROOT/logs"
DATA="$ROOT/data"
CONF="$RUN/supervisord.conf"
UP_TIMEOUT_S="${UP_TIMEOUT_S:-90}"
# shellcheck source=deploy/lib.sh
. "$ROOT/deploy/lib.sh"

setting() { # print one setting as the services will see it (.env + environment)
  "$PY" -c "from libs.common.settings import load_settings; s = load_settings(); print($1)"
}

redis_answers() {
  "$PY" - "$1" <<'PY' >/dev/null 2>&1
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1, socket_timeout=1).ping()
PY
}

ensure_redis() {
  local url; url="$(setting s.redis_url)"
  if redis_answers "$url"; then echo "==> Redis answers on $url"; return; fi
  local host port
  host="$("$PY" -c "from urllib.parse import urlparse; print(urlparse('$url').hostname or '127.0.0.1')")"
  port="$("$PY" -c "from urllib.parse import urlparse; print(urlparse('$url').port or 6379)")"
  case "$host" in 127.*|localhost|::1) ;; *) echo "Redis at $url does not answer and is not local; start it first" >&2; exit 1;; esac
  echo "==> starting a local Redis on port $port (AOF persistence under data/)"
  start_redis "$port" "$DATA" redis
  echo "$port" > "$RUN/redis.started"
  for _ in $(seq 50); do redis_answers "$url" && return; sleep 0.1; done
  echo "Redis did not come up; see logs/redis.log" >&2; exit 1
}

write_conf() {
  local sim_autostart="$1"
  mkdir -p "$RUN" "$LOGS"
  sed -e "s#@ROOT@#$ROOT#g" -e "s#@RUN@#$RUN#g" -e "s#@LOGS@#$LOGS#g" -e "s#@PY@#$PY#g" \
      -e "s#@SIM_AUTOSTART@#$sim_autostart#g" deploy/supervisord.conf.in > "$CONF"
}

services() { if [ "$(setting 'int(s.simulator_mode)')" = 1 ]; then echo "sim feed monitor api alerts"; else echo "feed monitor api alerts"; fi; }

wait_healthy() {
  local pending start; pending="$(services)"; start=$(date +%s)
  local spin='|/-\' i=0
  while [ -n "$pending" ]; do
    local still=""
    for svc in $pending; do "$PY" -m "services.$svc" --check >/dev/null 2>&1 || still="$still $svc"; done
    pending="$(echo "$still" | xargs)"
    [ -z "$pending" ] && break
    if [ $(( $(date +%s) - start )) -ge "$UP_TIMEOUT_S" ]; then
      printf '\n'
      echo "Timed out after ${UP_TIMEOUT_S}s: not healthy: $pending" >&2
      for svc in $pending; do
        echo "--- last lines of logs/$svc.log and logs/$svc.err:" >&2
        tail -n 15 "$LOGS/$svc.log" "$LOGS/$svc.err" 2>/dev/null >&2 || true
      done
      exit 1
    fi
    printf '\r  %s waiting for: %-30s' "${spin:i++%4:1}" "$pending"
    sleep 0.5
  done
  printf '\r  every service is healthy: %-30s\n' "$(services)"
}

ensure_credentials_key() { # encrypts a hot-swapped access token at rest in Redis (see README, Tokens)
  if ! grep -qE '^CREDENTIALS_KEY=.+' .env 2>/dev/null; then
    echo "CREDENTIALS_KEY=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(32))')" >> .env
    chmod 600 .env
    echo "==> wrote a new CREDENTIALS_KEY to .env (it encrypts a replaced access token in Redis)"
  fi
}

up() {
  ensure_venv
  ensure_credentials_key
  mkdir -p "$RUN" "$LOGS"
  local sim_mode; sim_mode="$(setting 'int(s.simulator_mode)')"
  ensure_redis
  if [ "$sim_mode" = 1 ]; then echo "==> no UPSTOX_ACCESS_TOKEN: running on the simulator"; else echo "==> UPSTOX_ACCESS_TOKEN set: running on Upstox"; fi
  write_conf "$([ "$sim_mode" = 1 ] && echo true || echo false)"
  if supervisor_running; then
    "$ROOT/.venv/bin/supervisorctl" -c "$CONF" update >/dev/null
    for svc in $(services); do "$ROOT/.venv/bin/supervisorctl" -c "$CONF" start "$svc" >/dev/null || true; done
  else
    "$ROOT/.venv/bin/supervisord" -c "$CONF"
  fi
  wait_healthy
  local api; api="http://$(setting s.api_host):$(setting s.api_port)"
  cat <<TXT

Up (local processes under supervisord). Try:
  open $api/          # the live dashboard
  curl -s $api/api/v1/monitoring/connection-health | jq
  curl -s $api/api/v1/monitoring/status | jq
  redis-cli HGETALL price:BOSCHLTD
  make logs            # every service, prefixed      make logs-feed | logs-monitor | logs-api | logs-sim | logs-alerts
  curl -s -X POST $api/api/v1/alerts/test | jq   # a test message to every ALERT_URLS target
  make demo-outage     # the guide's Example 1 on the simulator
  make status | make restart | make down
TXT
}

down() {
  if supervisor_running; then
    echo "==> stopping the services"
    "$ROOT/.venv/bin/supervisorctl" -c "$CONF" shutdown >/dev/null || true
    local pid; pid="$(cat "$RUN/supervisord.pid" 2>/dev/null || true)"
    for _ in $(seq 100); do [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  if [ -f "$RUN/redis.started" ]; then
    echo "==> stopping the local Redis this checkout started (its data stays in data/)"
    redis-cli -p "$(cat "$RUN/redis.started")" shutdown >/dev/null 2>&1 || true
    rm -f "$RUN/redis.started"
  fi
  echo "==> down"
}

status() {
  if supervisor_running; then "$ROOT/.venv/bin/supervisorctl" -c "$CONF" status || true; else echo "supervisord is not running"; fi
  for svc in sim feed monitor api alerts; do
    if "$PY" -m "services.$svc" --check >/dev/null 2>&1; then echo "  $svc: healthy"; else echo "  $svc: no fresh heartbeat"; fi
  done
}

logs() {
  if [ $# -ge 1 ]; then exec tail -n 50 -F "$LOGS/$1.log"; fi
  exec "$PY" "$ROOT/deploy/follow_logs.py" "$LOGS"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  restart) down; up ;;
  status) status ;;
  stop) shift; "$ROOT/.venv/bin/supervisorctl" -c "$CONF" stop "$@" ;;  # some services (demo-blackout)
  start) shift; "$ROOT/.venv/bin/supervisorctl" -c "$CONF" start "$@" ;;
  logs) shift; logs "$@" ;;
  *) echo "usage: $0 up|down|restart|status|logs [SERVICE]" >&2; exit 2 ;;
esac
