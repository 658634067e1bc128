#!/usr/bin/env bash
# The partitions benchmark, in one run on one machine: the `load` generator at its peak
# against
#   1. one server with one partition,
#   2. one server with 4 partitions,
#   3. three pods sharing 6 partitions (on 127.0.0.1, 127.0.1.1, 127.0.2.1), one load
#      generator per pod, each starting sagas of any partition (two in three are
#      forwarded to their pod),
#   4. the same three pods, each generator starting only sagas of its own pod's
#      partitions (nothing forwarded but the outbox reads):
# and prints each one's sagas/s and request p99. 3 against 4 is what forwarding costs.
#
#   benches/partitions.sh [SAGAS] [ROUNDS]        (default 20000 sagas, 1 round)
#
# Every server fsyncs every write (the default). With `PIN=1` each process is pinned
# to its own cores with taskset (for a machine with cores to spare).
set -euo pipefail
cd "$(dirname "$0")/.."
sagas=${1:-20000}
rounds=${2:-1}
cargo build --release --locked --bin sagalog >&2
cargo build --release --locked -p sagalog-benches --bin load >&2
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# A port free on the three loopback addresses.
port=$(python3 - <<'EOF'
import socket
for _ in range(100):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    try:
        for i in range(3):
            t = socket.socket(); t.bind((f"127.0.{i}.1", port)); t.close()
        print(port); break
    except OSError:
        pass
EOF
)

cores=$(nproc)
pin() { # pin N OF COMMAND...: core share N of OF, when PIN=1
    local n=$1 of=$2
    shift 2
    # exec: run in the background, the process is the job itself, so that a kill of
    # its pid stops it (not a subshell that would leave it running).
    if [ "${PIN:-0}" = 1 ] && [ "$cores" -ge "$of" ]; then
        local per=$((cores / of))
        exec taskset -c "$((n * per))-$((n * per + per - 1))" "$@"
    else
        exec "$@"
    fi
}

wait_ready() { # wait_ready ADDR
    for _ in $(seq 1 200); do
        curl -fsS "http://$1/readyz" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "no server on $1" >&2
    exit 1
}

serve() { # serve SLOT OF DIR ADDR OPTIONS...
    local slot=$1 of=$2 dir=$3 addr=$4
    shift 4
    (pin "$slot" "$of" "$bin/sagalog" serve --data-dir "$dir" --listen "$addr" "$@") \
        >"$work/serve-$slot.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    wait_ready "$addr"
    # Ready, and it is this server that answers (not one still on the address).
    kill -0 "$pid" 2>/dev/null || { echo "the server on $addr exited:" >&2; cat "$work/serve-$slot.log" >&2; exit 1; }
}

stop_servers() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}

load() { # load SLOT OF ADDR EXTRA...: the report's two lines
    local slot=$1 of=$2 addr=$3
    shift 3
    (pin "$slot" "$of" "$bin/load" --target "$addr" --sagas "$sagas" --connections 64 \
        --in-flight 2048 "$@")
}

one() { # one NAME PARTITIONS
    local name=$1 partitions=$2
    rm -rf "$work/one"
    serve 0 2 "$work/one" "127.0.0.1:$port" --partitions "$partitions"
    echo "== $name"
    load 1 2 "127.0.0.1:$port"
    stop_servers
}

pods() { # pods NAME OWNED
    local name=$1 owned=$2
    rm -rf "$work"/pod-*
    for i in 0 1 2; do
        serve "$i" 6 "$work/pod-$i" "127.0.$i.1:$port" --partitions 6 --nodes 3 --node-id "$i" \
            --peer-url-template "http://127.0.{i}.1:$port" --cluster-secret bench-secret
    done
    echo "== $name"
    local loads=()
    for i in 0 1 2; do
        local only=()
        if [ "$owned" = 1 ]; then only=(--node "$i" --nodes 3 --partitions 6); fi
        load "$((3 + i))" 6 "127.0.$i.1:$port" "${only[@]}" >"$work/load-$i.txt" &
        loads+=($!)
    done
    for pid in "${loads[@]}"; do wait "$pid"; done
    for i in 0 1 2; do sed "s/^/pod $i: /" "$work/load-$i.txt"; done
    stop_servers
}

for round in $(seq 1 "$rounds"); do
    echo "# round $round of $rounds ($sagas sagas per generator, $cores cores)"
    one "one server, 1 partition" 1
    one "one server, 4 partitions" 4
    pods "three pods, 6 partitions, sagas of any partition (forwarded)" 0
    pods "three pods, 6 partitions, each pod's own sagas (not forwarded)" 1
done
