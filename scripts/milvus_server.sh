#!/usr/bin/env bash
# A real Milvus standalone server (PyPI `milvus==2.3.5`) for tests, in its own venv.
#
#   milvus_server.sh install              create .milvus-venv/ if missing (never touches .venv)
#   milvus_server.sh start DATA_DIR PORT  start in the background, wait until PORT answers
#   milvus_server.sh stop DATA_DIR        stop it and its `milvus run standalone` child
#
# The server listens on all interfaces: clients must use 127.0.0.1 only. Its other ports
# (etcd, coordinators, metrics) are free ones picked at start, so several servers can run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.milvus-venv
VERSION=2.3.5
PY=${PYTHON:-python3}
START_TIMEOUT=${MILVUS_START_TIMEOUT:-120}

die() { echo "[milvus] $*" >&2; exit 1; }

install() {
  local stamp=$VENV/.installed
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$VERSION" ] && [ -x "$VENV/bin/milvus-server" ]; then
    return 0
  fi
  echo "[milvus] installing milvus==$VERSION into $VENV"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "milvus==$VERSION"
  echo "$VERSION" > "$stamp"
}

# Running (a zombie waiting for its parent to reap it does not count).
alive() {
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" | cut -c1)" != Z ]
}

port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Two free TCP ports on 127.0.0.1 (for the embedded etcd: client and peer).
free_ports() {
  "$PY" -c 'import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))'
}

start() {
  local data=${1:?usage: start DATA_DIR PORT} port=${2:?usage: start DATA_DIR PORT}
  [ -x "$VENV/bin/milvus-server" ] || die "not installed: run '$0 install' first"
  mkdir -p "$data"
  data=$(cd "$data" && pwd)
  if [ -f "$data/milvus-server.pid" ] && alive "$(cat "$data/milvus-server.pid")"; then
    die "already running for $data (pid $(cat "$data/milvus-server.pid"))"
  fi
  if port_answers "$port"; then die "port $port on 127.0.0.1 is already in use"; fi
  # The wrapper leaves the embedded etcd's peer port at a fixed 2380, so a second server on
  # the machine would fail: give etcd its own config on free loopback ports.
  local etcd_client etcd_peer
  read -r etcd_client etcd_peer < <(free_ports)
  printf '%s\n' "name: default" \
    "listen-client-urls: http://127.0.0.1:$etcd_client" \
    "advertise-client-urls: http://127.0.0.1:$etcd_client" \
    "listen-peer-urls: http://127.0.0.1:$etcd_peer" \
    "initial-advertise-peer-urls: http://127.0.0.1:$etcd_peer" \
    "initial-cluster: default=http://127.0.0.1:$etcd_peer" > "$data/etcd.yaml"
  # ETCD_CONFIG_PATH is milvus' environment override of `etcd.config.path`. Unbuffered, so
  # the banner printed once healthy reaches the log at once; stdin/stdout detached, so a
  # caller that captures our output does not wait on the server.
  ETCD_CONFIG_PATH="$data/etcd.yaml" PYTHONUNBUFFERED=1 "$VENV/bin/milvus-server" \
    --data "$data" --proxy-port "$port" --etcd-port "$etcd_client" \
    </dev/null >"$data/milvus-server.log" 2>&1 &
  local pid=$! child="" ticks=0
  echo "$pid" > "$data/milvus-server.pid"
  until grep -q "Welcome to use Milvus" "$data/milvus-server.log" 2>/dev/null \
      && port_answers "$port"; do
    # The wrapper keeps waiting when its `milvus run standalone` child dies: watch the child.
    [ -n "$child" ] || child=$(pgrep -P "$pid" || true)
    if ! alive "$pid" || { [ -n "$child" ] && ! alive "$child"; }; then
      grep -h '\[ERROR\]' "$data/logs/milvus-stdout.log" 2>/dev/null | head -3 | cut -c1-400 >&2
      stop "$data"
      die "milvus exited during start-up (logs: $data/logs, $data/milvus-server.log)"
    fi
    if [ "$ticks" -ge $((START_TIMEOUT * 10)) ]; then
      stop "$data"
      die "not up on port $port after ${START_TIMEOUT}s (logs: $data/logs)"
    fi
    sleep 0.1
    ticks=$((ticks + 1))
  done
  # The wrapper silently moves to the next free port when PORT is taken: make sure it is ours.
  local bound
  bound=$(awk '/^proxy:/ {p = 1; next} p && /^  port:/ {print $2; exit}' "$data/configs/milvus.yaml")
  if [ "$bound" != "$port" ]; then
    stop "$data"
    die "port $port was taken by someone else before milvus could bind it"
  fi
  echo "[milvus] up on 127.0.0.1:$port (pid $pid, data $data)"
}

stop() {
  local data=${1:?usage: stop DATA_DIR}
  local pidfile=$data/milvus-server.pid pid child
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if alive "$pid"; then
    child=$(pgrep -P "$pid" || true)
    # SIGINT runs the wrapper's own stop (SIGTERM to the child, SIGKILL after 1 s).
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    # The `milvus run standalone` child ignores SIGTERM: make sure it is gone.
    for c in $child; do
      if alive "$c"; then kill -KILL "$c" 2>/dev/null || true; fi
      for _ in $(seq 50); do alive "$c" || break; sleep 0.1; done
    done
  fi
  rm -f "$pidfile"
}

cmd=${1:-}
shift || true
case "$cmd" in
  install) install ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  *) die "usage: $0 install | start DATA_DIR PORT | stop DATA_DIR" ;;
esac
