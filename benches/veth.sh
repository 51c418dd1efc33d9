#!/usr/bin/env bash
# The relay between real interfaces: turnpike (offload off and auto) and coturn 4.6 relaying
# ChannelData across two veth pairs between three network namespaces this script makes
# (client 10.200.1.2 — 10.200.1.1 server 10.200.2.1 — 10.200.2.2 peer), so the kernel's work
# runs in softirq on the receiving interface as on a real NIC, not in the sender's context as
# on loopback. The client's and peer's devices fill in UDP checksums (as datagrams from
# another host arrive). Baselines, both without TURN: "direct", the same load sent straight to
# the echo peer over a third veth pair between the client's and the peer's namespaces (what
# marginal host CPU subtracts: a relay's host CPU per relayed packet minus direct's), and
# "forwarded", the same load routed through the server namespace by its kernel (IP forwarding
# on for that run only).
#
#   benches/veth.sh                       # 3 rounds of 5 s, 64 clients x 400 pps x 1000 B
#   benches/veth.sh --rounds 1 --duration 2 --no-build
#
# Needs root (network namespaces). Installs coturn and ethtool when missing. All traffic stays
# inside the namespaces it makes; they are deleted on exit. Medians of the rounds, servers in
# A/B/B/A order, each started fresh per round.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
duration=5
clients=64
rate=400
size=1000
build=1
usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  echo "options: --rounds N --duration SECONDS --clients N --rate PPS --size BYTES --no-build"
}
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --clients) clients="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "veth.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
for value in "$rounds" "$duration" "$clients" "$rate" "$size"; do
  case "$value" in ''|*[!0-9]*|0) echo "veth.sh: numbers must be whole and >= 1" >&2; exit 2 ;; esac
done
[ "$(id -u)" = 0 ] || { echo "veth.sh: needs root (network namespaces)" >&2; exit 2; }

missing=()
command -v turnserver >/dev/null || missing+=(coturn)
command -v ethtool >/dev/null || missing+=(ethtool)
command -v jq >/dev/null || missing+=(jq)
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi
[ "$build" = 1 ] && cargo build --release --bins >&2
turnpike_bin="$PWD/target/release/turnpike"
load_bin="$PWD/target/release/turnpike-load"

tag="tpv$$"
C="$tag-c"; S="$tag-s"; P="$tag-p"
results="$PWD/target/veth/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$results"
work="$(mktemp -d)"
server_pid=""; echo_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  if [ -n "$echo_pid" ]; then kill "$echo_pid" 2>/dev/null || true; fi
  sleep 0.2
  for ns in "$C" "$S" "$P"; do ip netns delete "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

for ns in "$C" "$S" "$P"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
ip -n "$S" link add s1 type veth peer name c0 netns "$C"
ip -n "$S" link add s2 type veth peer name p0 netns "$P"
ip -n "$C" link add c1 type veth peer name p1 netns "$P"
ip -n "$C" address add 10.200.1.2/24 dev c0
ip -n "$S" address add 10.200.1.1/24 dev s1
ip -n "$S" address add 10.200.2.1/24 dev s2
ip -n "$P" address add 10.200.2.2/24 dev p0
ip -n "$C" address add 10.200.3.2/24 dev c1
ip -n "$P" address add 10.200.3.1/24 dev p1
for pair in "$C c0" "$S s1" "$S s2" "$P p0" "$C c1" "$P p1"; do
  # shellcheck disable=SC2086 # "namespace device"
  set -- $pair
  ip -n "$1" link set "$2" up
done
ip -n "$C" route add default via 10.200.1.1
ip -n "$P" route add default via 10.200.2.1
for pair in "$C c0" "$P p0" "$C c1" "$P p1"; do
  # shellcheck disable=SC2086 # "namespace device"
  set -- $pair
  ip netns exec "$1" ethtool -K "$2" tx off >/dev/null
done

ip netns exec "$P" "$load_bin" echo --listen 0.0.0.0:9000 --allow-remote --duration 2h \
  >/dev/null 2>"$work/echo.log" &
echo_pid=$!

start_turnpike() {
  cat >"$work/turnpike.toml" <<EOF
realm = "veth"
workers = 0

[[listen]]
transport = "udp"
address = "10.200.1.1:3478"

[relay]
address = "10.200.2.1"
ports = "49152-65535"
offload = "$1"

[[auth.users]]
name = "load"
password = "load-password"

[peers]
allow = ["10.200.2.2/32"]

[limits]
user-allocations = 0
EOF
  ip netns exec "$S" "$turnpike_bin" serve -c "$work/turnpike.toml" --log-format json \
    2>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 1 200); do
    grep -q '"message":"ready"' "$work/server.log" 2>/dev/null && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "veth.sh: turnpike did not start:" >&2
  cat "$work/server.log" >&2
  return 1
}

start_coturn() {
  rm -f "$work/turnserver.pid"
  : >"$work/server.log"
  ip netns exec "$S" turnserver -n --no-cli --no-tls --no-dtls --no-rfc5780 \
    --listening-ip 10.200.1.1 -p 3478 --relay-ip 10.200.2.1 --min-port 49152 --max-port 65535 \
    --allowed-peer-ip 10.200.2.2 --realm veth --lt-cred-mech --user load:load-password \
    --log-file "$work/server.log" --simple-log --no-stdout-log \
    --pidfile "$work/turnserver.pid" --db "$work/turndb" >/dev/null 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do
    if ip netns exec "$C" "$load_bin" allocate --server 10.200.1.1:3478 --allow-remote \
      --user load --password load-password --clients 1 --duration 1s >/dev/null 2>&1; then
      if [ -s "$work/turnserver.pid" ] && kill -0 "$(cat "$work/turnserver.pid")" 2>/dev/null; then
        server_pid=$(cat "$work/turnserver.pid")
      fi
      return 0
    fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "veth.sh: coturn did not start:" >&2
  cat "$work/server.log" >&2
  return 1
}

stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}

load=(relay --clients "$clients" --rate "$rate" --size "$size" --duration "$((duration + 1))s"
  --allow-remote)

# One run of $1 (turnpike-off | turnpike-auto | coturn | direct | forwarded): appends its JSON
# line.
run_one() {
  local which="$1" args=() status=0
  case "$which" in
    turnpike-off) start_turnpike off ;;
    turnpike-auto) start_turnpike auto ;;
    coturn) start_coturn ;;
    forwarded) ip netns exec "$S" sysctl -qw net.ipv4.ip_forward=1 ;;
  esac
  if [ "$which" = forwarded ]; then
    args=(--plain --server 10.200.2.2:9000)
  elif [ "$which" = direct ]; then
    args=(--plain --server 10.200.3.1:9000)
  else
    args=(--server 10.200.1.1:3478 --peer 10.200.2.2:9000 --user load --password load-password
      --server-pid "$server_pid")
  fi
  timeout $((duration + 120)) ip netns exec "$C" "$load_bin" "${load[@]}" "${args[@]}" \
    >"$work/run.json" 2>"$work/run.err" || status=$?
  if [ "$which" = forwarded ]; then
    ip netns exec "$S" sysctl -qw net.ipv4.ip_forward=0
  elif [ "$which" = direct ]; then
    :
  else
    cp "$work/server.log" "$results/$which.log" 2>/dev/null || true
    stop_server
  fi
  if [ -s "$work/run.json" ]; then
    jq -c . "$work/run.json" >>"$results/$which.jsonl"
  else
    echo "veth.sh: $which produced no report (exit $status):" >&2
    cat "$work/run.err" >&2
  fi
  printf '  %-14s exit %s  %s\n' "$which" "$status" \
    "$(jq -c '{sent, loss_pct, rtt_p99_us, server_cpu_us_per_packet, host_cpu_us_per_packet, failures}' "$work/run.json" 2>/dev/null)"
}

median() {
  [ -s "$1" ] || { echo null; return; }
  jq -s --arg k "$2" '[.[] | .[$k] | select(type == "number")] | sort
    | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
      else (.[length / 2 - 1] + .[length / 2]) / 2 end' "$1"
}

servers=(turnpike-off turnpike-auto coturn direct forwarded)
echo "turnpike $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes'), $(turnserver --version 2>/dev/null | tail -n 1 | sed 's/^/coturn /')"
echo "$(nproc) cores, $(uname -r); $clients clients x $rate pps x $size B, $duration s, $rounds round(s); results in $results"
for round in $(seq 1 "$rounds"); do
  order=("${servers[@]}")
  if [ $((round % 2)) = 0 ]; then
    order=(); for ((i = ${#servers[@]} - 1; i >= 0; i--)); do order+=("${servers[$i]}"); done
  fi
  for which in "${order[@]}"; do run_one "$which"; done
done

table="$results/table.md"
{
  echo "| $clients × $rate pps × $size B across veth | host CPU per relayed packet | marginal (minus direct) | server CPU per packet | loss | RTT p99 |"
  echo "|---|---|---|---|---|---|"
  direct=$(median "$results/direct.jsonl" host_cpu_us_per_packet)
  for which in coturn turnpike-off turnpike-auto forwarded direct; do
    f="$results/$which.jsonl"
    host=$(median "$f" host_cpu_us_per_packet)
    marginal="—"
    if [ "$which" != direct ] && [ "$host" != null ] && [ "$direct" != null ]; then
      marginal=$(jq -n "$host - $direct | . * 100 | round / 100")
    fi
    echo "| $which | $host µs | $marginal µs | $(median "$f" server_cpu_us_per_packet) µs | $(median "$f" loss_pct) % | $(median "$f" rtt_p99_us) µs |"
  done
  echo
  echo "Medians of $rounds round(s). Host CPU from /proc/stat (all CPU time but idle, iowait and steal) over the run, per relayed packet (both directions counted); direct: the same load straight to the echo peer over one veth pair; forwarded: through the server namespace's kernel forwarding; neither with TURN."
} >"$table"
echo
cat "$table"
