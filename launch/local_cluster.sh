#!/usr/bin/env bash
# A two-node Ray cluster on this one machine, for tests and demos of raysweep's multi-node paths.
#
#   launch/local_cluster.sh start        # head + a second node; prints the address to pass as --address
#   launch/local_cluster.sh status       # the two nodes' process groups and the alive node count
#   launch/local_cluster.sh kill-worker  # lose the second node abruptly (SIGKILL), as a crashed machine would
#   launch/local_cluster.sh start-worker # bring a second node back (a new node id at the same address)
#   launch/local_cluster.sh stop         # stop both nodes (and nothing else)
#
# Then, from this machine:
#   source /tmp/raysweep-cluster/env     # the cluster's auth token settings (see "Authentication" below)
#   python -m raysweep.launch search_spaces/quickstart.yaml --address "$(cat /tmp/raysweep-cluster/address)" \
#       --storage /tmp/raysweep-results --shared-storage
# (--shared-storage: both "nodes" live on this machine, so a local path is one file system that both see.)
#
# Why not plain `ray start` / `ray stop`: `ray stop` kills every Ray process on the machine, including any other
# Ray that you (or a test session) run here. So each node runs in its own session and process group
# (`setsid ray start --block`) with its own --temp-dir, ports and log, and is stopped by its recorded process-group
# id only. The nodes advertise two loopback addresses, 127.0.0.2 (head) and 127.0.0.3, and Ray binds its servers
# to them: nothing listens outside this machine. (Not 127.0.0.1: Ray replaces that one by the machine's outward
# address, since a real cluster's nodes must reach each other. Linux routes all of 127.0.0.0/8 to loopback.)
#
# Authentication: the cluster uses Ray's token authentication with a token of its own, $RAYSWEEP_CLUSTER_DIR/
# auth_token (never ~/.ray/auth_token). A client needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH pointing at it:
# `source $RAYSWEEP_CLUSTER_DIR/env`.
#
# Settings (environment variables):
#   RAYSWEEP_CLUSTER_DIR      state folder: address, env, pids, logs, the two Ray temp dirs
#                             (default /tmp/raysweep-cluster). Keep it short: Ray puts Unix sockets under it and a
#                             socket path has at most 107 bytes.
#   RAYSWEEP_CLUSTER_PORT     first of the 30 consecutive ports the two nodes use (default 26500)
#   RAYSWEEP_HEAD_CPUS        logical CPUs of the head (default 1)
#   RAYSWEEP_WORKER_CPUS      logical CPUs of the second node (default 1). Logical: Ray schedules on them, the two
#                             nodes still share this machine's cores. One each makes two one-CPU trials run on
#                             different nodes.
#   RAYSWEEP_CLUSTER_DASHBOARD=1  start the dashboard on the head (http://127.0.0.2:PORT+2): `ray job submit`
#                             needs it, and it needs `pip install "ray[default]"`
#   RAYSWEEP_OBJECT_STORE_BYTES   object store per node (default 200 MB: raysweep moves only small rows)
# Node-failure detection is shortened (about 2-3 s instead of about 30 s) so that a lost node shows up quickly.

set -euo pipefail

STATE=${RAYSWEEP_CLUSTER_DIR:-/tmp/raysweep-cluster}
BASE=${RAYSWEEP_CLUSTER_PORT:-26500}
HEAD_CPUS=${RAYSWEEP_HEAD_CPUS:-1}
WORKER_CPUS=${RAYSWEEP_WORKER_CPUS:-1}
DASHBOARD=${RAYSWEEP_CLUSTER_DASHBOARD:-0}
OBJECT_STORE=${RAYSWEEP_OBJECT_STORE_BYTES:-200000000}
HEAD_IP=${RAYSWEEP_HEAD_IP:-127.0.0.2}
WORKER_IP=${RAYSWEEP_WORKER_IP:-127.0.0.3}
RAY=${RAY:-ray}
PYTHON=${PYTHON:-python}

# Ports: the head's GCS is BASE; every other listener gets its own port so that the two nodes (and any other Ray on
# the machine, whose defaults are 6379, 8265, 10001, 52365, ...) never collide. Worker processes bind random free
# ports (--min/max-worker-port 0).
GCS_PORT=$BASE
CLIENT_PORT=$((BASE + 1))      # Ray Client (ray://HEAD_IP:CLIENT_PORT), when grpcio is installed
DASH_PORT=$((BASE + 2))        # dashboard and job submission, when enabled

# Shorter node-failure detection: the GCS health-checks every node every 500 ms and declares it dead after 4 misses.
export RAY_health_check_initial_delay_ms=${RAY_health_check_initial_delay_ms:-1000}
export RAY_health_check_period_ms=${RAY_health_check_period_ms:-500}
export RAY_health_check_timeout_ms=${RAY_health_check_timeout_ms:-1000}
export RAY_health_check_failure_threshold=${RAY_health_check_failure_threshold:-4}
export RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/auth_token"

node_ports() {  # $1 = offset of the node's port block: node manager, object manager, agents, metrics
    local b=$((BASE + $1))
    echo "--node-manager-port $b --object-manager-port $((b + 1)) --dashboard-agent-listen-port $((b + 2))" \
         "--dashboard-agent-grpc-port $((b + 3)) --metrics-export-port $((b + 4)) --runtime-env-agent-port $((b + 5))" \
         "--min-worker-port 0 --max-worker-port 0"
}

alive() {  # is the process group recorded in file $1 still there?
    [[ -f "$1" ]] && kill -0 -- "-$(cat "$1")" 2>/dev/null
}

stop_group() {  # SIGTERM the recorded process group (ray start --block then stops its node), SIGKILL stragglers
    local pidfile=$1 pgid i
    [[ -f "$pidfile" ]] || return 0
    pgid=$(cat "$pidfile")
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pgid" 2>/dev/null || true
    rm -f "$pidfile"
}

stop_all() {
    stop_group "$STATE/worker.pid"
    stop_group "$STATE/head.pid"
    rm -f "$STATE/address"
}

n_alive_nodes() {  # alive nodes as the GCS sees them, read without starting a driver (what `ray memory` uses)
    "$PYTHON" -c 'import sys; from ray._private.internal_api import get_state_from_address as s
print(sum(n["Alive"] for n in s(sys.argv[1]).node_table()))' "$HEAD_IP:$GCS_PORT"
}

wait_for_nodes() {  # $1 = alive nodes expected; $2 = pid file of the node just started
    local i
    for i in $(seq 1 120); do
        [[ "$(n_alive_nodes 2>/dev/null || echo 0)" -ge "$1" ]] && return 0
        alive "$2" || break
        sleep 0.5
    done
    echo "local_cluster: $1 node(s) did not come up; logs: $STATE/head.log, $STATE/worker.log" >&2
    return 1
}

start() {
    if alive "$STATE/head.pid" || alive "$STATE/worker.pid"; then
        echo "local_cluster: already running (state in $STATE); stop it first" >&2
        return 1
    fi
    mkdir -p "$STATE/head" "$STATE/worker"
    [[ -s "$STATE/auth_token" ]] ||
        (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$STATE/auth_token")
    printf 'export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=%q\n' "$STATE/auth_token" > "$STATE/env"

    local dashboard=(--include-dashboard=false) client=()
    [[ "$DASHBOARD" == 1 ]] && dashboard=(--include-dashboard=true --dashboard-host "$HEAD_IP" --dashboard-port "$DASH_PORT")
    # The Ray Client server needs grpcio (pip install "ray[client]"); without it, attach with the GCS address.
    "$PYTHON" -c "import grpc" 2>/dev/null && client=(--ray-client-server-port "$CLIENT_PORT")

    # Head node: GCS, (Ray Client server, dashboard), a raylet with HEAD_CPUS logical CPUs and no GPU.
    # `setsid`: a new session and process group whose id is the pid we record; --block keeps `ray start` in front
    # of that group, so that signalling the group stops exactly this node.
    # shellcheck disable=SC2046
    setsid "$RAY" start --head --block --node-ip-address "$HEAD_IP" \
        --port "$GCS_PORT" "${client[@]}" "${dashboard[@]}" $(node_ports 10) \
        --num-cpus "$HEAD_CPUS" --num-gpus 0 --resources '{"raysweep_head": 1}' \
        --object-store-memory "$OBJECT_STORE" --temp-dir "$STATE/head" --disable-usage-stats \
        >"$STATE/head.log" 2>&1 < /dev/null &
    echo $! > "$STATE/head.pid"
    echo "$HEAD_IP:$GCS_PORT" > "$STATE/address"
    if ! wait_for_nodes 1 "$STATE/head.pid" || ! start_worker 2; then
        stop_all  # leave nothing half-started behind
        return 1
    fi
    echo "$HEAD_IP:$GCS_PORT"
}

start_worker() {  # $1 = alive nodes once it is up
    if alive "$STATE/worker.pid"; then
        echo "local_cluster: the second node is already running" >&2
        return 1
    fi
    # Second node: joins the head; its own address, temp dir and port block, WORKER_CPUS logical CPUs.
    # shellcheck disable=SC2046
    setsid "$RAY" start --block --address "$HEAD_IP:$GCS_PORT" --node-ip-address "$WORKER_IP" $(node_ports 20) \
        --num-cpus "$WORKER_CPUS" --num-gpus 0 --resources '{"raysweep_worker": 1}' \
        --object-store-memory "$OBJECT_STORE" --temp-dir "$STATE/worker" --disable-usage-stats \
        >"$STATE/worker.log" 2>&1 < /dev/null &
    echo $! > "$STATE/worker.pid"
    wait_for_nodes "$1" "$STATE/worker.pid"
}

status() {
    local node
    for node in head worker; do
        if alive "$STATE/$node.pid"; then
            echo "$node: running (process group $(cat "$STATE/$node.pid"))"
        else
            echo "$node: stopped"
        fi
    done
    if alive "$STATE/head.pid"; then
        echo "address: $(cat "$STATE/address")"
        echo "alive nodes: $(n_alive_nodes)"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop_all ;;
    kill-worker)  # abrupt loss of the second node: SIGKILL to its whole process group, no clean shutdown
        if alive "$STATE/worker.pid"; then kill -KILL -- "-$(cat "$STATE/worker.pid")"; fi
        rm -f "$STATE/worker.pid" ;;
    start-worker) start_worker 2 ;;  # bring the second node back (a fresh node: new node id, same address)
    status) status ;;
    *) echo "usage: $0 start|stop|status|kill-worker|start-worker   (state in \$RAYSWEEP_CLUSTER_DIR, default $STATE)" >&2
       exit 2 ;;
esac
