# What deploy/local.sh (make up) and deploy/ha/local.sh (make up-ha) share; sourced, not run.
# The caller sets ROOT (the checkout), RUN (pid and socket files) and CONF (its supervisord.conf).

ensure_venv() {
  if [ ! -x "$ROOT/.venv/bin/supervisord" ]; then
    echo "==> installing the project into .venv (first run)"
    make -s install
  fi
}

supervisor_running() { [ -S "$RUN/supervisor.sock" ] && "$ROOT/.venv/bin/supervisorctl" -c "$CONF" pid >/dev/null 2>&1; }

# start_redis PORT DIR NAME [redis-server option...]: a local Redis with AOF (everysec, no RDB snapshots), its
# pid in $RUN/NAME.pid and its log in LOGS/NAME.log (LOGS set by the caller).
start_redis() {
  local port="$1" dir="$2" name="$3"; shift 3
  command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
  mkdir -p "$dir" "$LOGS" "$RUN"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$dir" --appendonly yes \
    --appendfsync everysec --save "" --pidfile "$RUN/$name.pid" --logfile "$LOGS/$name.log" "$@"
}
