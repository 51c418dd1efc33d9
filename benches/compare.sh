#!/usr/bin/env bash
# Side-by-side load comparison: turnpike (release build) against coturn's turnserver with
# equivalent flags, and against turnpike-load's plain UDP forwarder (the same client → relay →
# echo → relay → client path without TURN), all on loopback, driven by turnpike-load.
#
#   benches/compare.sh                  # every row, 3 rounds, about 15 minutes (r12: 6 to 8)
#   benches/compare.sh --rows r1,r6     # some rows (ids below)
#   benches/compare.sh --rounds 5 --duration 5
#   benches/compare.sh --quick          # 1 round, short rows: checks the script works
#
# Each run starts its server fresh (new process, new ports) and stops it after. Servers take
# turns in A/B/B/A order (turnpike, coturn, forwarder; then the reverse; ...), and each cell is
# the median of the rounds, with the lowest and highest in brackets to show the noise. The
# server's CPU is utime + stime of /proc/PID/stat over the measured phase; host CPU is the
# busy time of the whole machine from /proc/stat over the same phase (the load generator,
# the kernel's softirq work and anything else running included). Every JSON line, the server
# logs of each row's last run and the table are kept in the results directory printed at the
# end.
#
# Environment: TURNPIKE, TURNPIKE_LOAD, TURNSERVER override the binaries (e.g. an older
# turnpike build for a before/after table); TURNPIKE_OFFLOAD sets turnpike's [relay] offload
# (default "auto": the kernel fast path when it loads, which needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
duration=3
quick=0
only=""
build=1
results=""

usage() {
  sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'

Options:
  --rounds N        rounds per row (default 3; each server runs once per round)
  --duration S      seconds of sending per relay row and per rung of r12 (default 3)
  --rows LIST       comma-separated row ids: r1..r12 (default all)
  --quick           1 round, 1 s relay rows, 500/1,000 held allocations
  --no-build        use the binaries as they are
  --results DIR     where to keep the JSON lines and logs (default target/compare/<time>)

Rows:
  r1  8 clients, max rate (window 16), 160 B ChannelData
  r2  64 clients, max rate (window 16), 1000 B ChannelData
  r3  64 clients x 50 pps x 1000 B ChannelData (paced)
  r4  8 clients, max rate, 160 B Send indications
  r5  TCP, 8 clients, max rate, 160 B ChannelData
  r6  Allocate (401 round trip + Allocate) then Refresh 0, 2,000 clients, 64 at once
  r7  the same 2,000 clients from one source address, for at most 5 s
  r8  10,000 allocations held at 1 pps each: server RSS per allocation
  r9  15,000 allocations held at 1 pps each: server RSS per allocation
  r10 1 client, max rate, 160 B ChannelData (the cost per packet without concurrency)
  r11 64 clients x 400 pps x 1000 B ChannelData: the marginal CPU of relaying
  r12 max relayed pps at <= 0.1 % loss: 64 clients x 160 B ChannelData, paced at 400, 500,
      640, ... 5000, 6400 pps each (x1.25 a rung; one run of --duration per rung, each
      server started once per round), stopping after two rungs in a row above 0.1 % loss

Relay rows also give relayed packets a second. Rows r3 and r11 also run the same load straight
to the echo peer ("direct": no relay), and give each relay's marginal CPU per relayed packet:
its relay cost (the server, the generator with its echo peer, the kernel's softirq threads
and the host's interrupt time, all from /proc) minus the direct run's, per relayed packet.
Row r12 runs its ladder direct too: the most the generator itself can do, so a server within
10 % of it is marked generator-bound.
EOF
}

command_line="benches/compare.sh $*"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --rows) only="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --no-build) build=0; shift ;;
    --results) results="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$rounds" in ''|*[!0-9]*|0) echo "compare.sh: --rounds takes a whole number >= 1" >&2; exit 2 ;; esac
case "$duration" in ''|*[!0-9]*|0) echo "compare.sh: --duration takes whole seconds >= 1" >&2; exit 2 ;; esac

held_small=10000
held_large=15000
if [ "$quick" = 1 ]; then
  rounds=1
  duration=1
  held_small=500
  held_large=1000
fi

for tool in jq ss curl od; do
  command -v "$tool" >/dev/null || { echo "compare.sh: $tool is needed (apt-get install jq iproute2 curl)" >&2; exit 2; }
done
turnserver_bin="${TURNSERVER:-turnserver}"
command -v "$turnserver_bin" >/dev/null || { echo "compare.sh: coturn's turnserver is needed (apt-get install coturn)" >&2; exit 2; }

if [ "$build" = 1 ] && [ -z "${TURNPIKE:-}${TURNPIKE_LOAD:-}" ]; then
  cargo build --release --bin turnpike --bin turnpike-load
fi
turnpike_bin="${TURNPIKE:-target/release/turnpike}"
load_bin="${TURNPIKE_LOAD:-target/release/turnpike-load}"
for bin in "$turnpike_bin" "$load_bin"; do
  [ -x "$bin" ] || { echo "compare.sh: $bin not built (cargo build --release)" >&2; exit 2; }
done

# Each relay socket and each client is a descriptor: 15,000 held allocations need more than
# the usual soft limit of 1,024. Servers and the generator inherit this.
ulimit -n "$(ulimit -Hn)"
nofile=$(ulimit -n)

results="${results:-target/compare/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$results"
results=$(cd "$results" && pwd)
work=$(mktemp -d)
api_token="compare-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
server_pid=""
forward_pid=""
watched_pid=""
target_args=""

stop_pid() {
  local pid="$1"
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  stop_pid "$server_pid"
  stop_pid "$forward_pid"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port free on 127.0.0.1 for UDP and TCP a moment ago, below the relay range.
free_port() {
  local port
  for _ in $(seq 1 100); do
    port=$((20000 + RANDOM % 12000))
    if [ -z "$(ss -Hlnu "sport = :$port")" ] && [ -z "$(ss -Hlnt "sport = :$port")" ]; then
      echo "$port"
      return 0
    fi
  done
  echo "compare.sh: no free port found" >&2
  return 1
}

# turnpike with the shipped defaults, except: listeners and relay on 127.0.0.1, peers on
# 127.0.0.1 allowed, no per-user allocation cap (coturn has none by default either), a short
# drain, and the HTTP API (idle unless asked: its snapshots are made whether it runs or not),
# for the status API's answer time while allocations are held. Sets server_pid, port and
# http_port.
start_turnpike() {
  port=$(free_port)
  http_port=$(free_port)
  cat >"$work/turnpike.toml" <<EOF
realm = "compare"
workers = 0
drain-timeout = "1s"

[[listen]]
transport = "udp"
address = "127.0.0.1:$port"

[[listen]]
transport = "tcp"
address = "127.0.0.1:$port"

[relay]
address = "127.0.0.1"
ports = "49152-65535"
offload = "${TURNPIKE_OFFLOAD:-auto}"

[[auth.users]]
name = "load"
password = "load-password"

[peers]
allow = ["127.0.0.1/32"]

[limits]
user-allocations = 0

[http]
address = "127.0.0.1:$http_port"
token = "$api_token"
EOF
  "$turnpike_bin" serve -c "$work/turnpike.toml" --log-format json 2>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 1 200); do
    grep -q '"message":"ready"' "$work/server.log" 2>/dev/null && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "compare.sh: turnpike did not start; its log:" >&2
  cat "$work/server.log" >&2
  return 1
}

# coturn with the equivalent: UDP and TCP on 127.0.0.1, relay on 127.0.0.1 in the same port
# range, one long-term user, loopback peers allowed, no TLS/DTLS, no CLI, no RFC 5780, log to a
# file. Sets server_pid and port.
start_coturn() {
  port=$(free_port)
  rm -f "$work/turnserver.pid"
  "$turnserver_bin" -n --no-cli --no-tls --no-dtls --no-rfc5780 --allow-loopback-peers \
    --listening-ip 127.0.0.1 -p "$port" --relay-ip 127.0.0.1 --min-port 49152 --max-port 65535 \
    --realm compare --lt-cred-mech --user load:load-password \
    --log-file "$work/server.log" --simple-log --no-stdout-log \
    --pidfile "$work/turnserver.pid" --db "$work/turndb" >/dev/null 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do
    # Ready when one client can allocate (and delete it again).
    if "$load_bin" allocate --server "127.0.0.1:$port" --user load --password load-password \
      --clients 1 --duration 1s >/dev/null 2>&1; then
      # The process that serves (its pidfile), should the shell have forked in between.
      if [ -s "$work/turnserver.pid" ] && kill -0 "$(cat "$work/turnserver.pid")" 2>/dev/null; then
        server_pid=$(cat "$work/turnserver.pid")
      fi
      return 0
    fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "compare.sh: coturn did not start; its log:" >&2
  cat "$work/server.log" >&2 2>/dev/null || true
  return 1
}

# The plain forwarder towards an echo port the relay run will bind. Sets forward_pid, port and
# echo_port.
start_forwarder() {
  port=$(free_port)
  echo_port=$(free_port)
  "$load_bin" forward --listen "127.0.0.1:$port" --to "127.0.0.1:$echo_port" --duration 1h \
    >"$work/forward.json" 2>"$work/server.log" &
  forward_pid=$!
  for _ in $(seq 1 100); do
    grep -q forwarding "$work/server.log" 2>/dev/null && return 0
    kill -0 "$forward_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "compare.sh: the forwarder did not start:" >&2
  cat "$work/server.log" >&2
  return 1
}

# Row definitions: label, kind (relay | alloc | hold), turnpike-load arguments, whether the
# forwarder runs it too, and whether a direct run (no relay) gives its marginal CPU.
declare -A label kind args forwarder direct
label[r1]="8 clients, max rate, 160 B ChannelData"
kind[r1]=relay; forwarder[r1]=1
args[r1]="relay --clients 8 --window 16 --size 160 --duration ${duration}s"
label[r2]="64 clients, max rate, 1000 B ChannelData"
kind[r2]=relay; forwarder[r2]=1
args[r2]="relay --clients 64 --window 16 --size 1000 --duration ${duration}s"
label[r3]="64 clients × 50 pps × 1000 B ChannelData (paced)"
kind[r3]=relay; forwarder[r3]=1; direct[r3]=1
args[r3]="relay --clients 64 --rate 50 --size 1000 --duration $((duration + 1))s"
label[r4]="8 clients, max rate, 160 B Send indications"
kind[r4]=relay; forwarder[r4]=1
args[r4]="relay --clients 8 --window 16 --size 160 --data send --duration ${duration}s"
label[r5]="TCP, 8 clients, max rate, 160 B ChannelData"
kind[r5]=relay; forwarder[r5]=0
args[r5]="relay --transport tcp --clients 8 --window 16 --size 160 --duration ${duration}s"
label[r6]="Allocate (401 round trip + Allocate) then Refresh 0, 2,000 clients"
kind[r6]=alloc; forwarder[r6]=0
args[r6]="allocate --clients 2000 --concurrency 64 --duration 60s"
label[r7]="2,000 clients from one source address, shipped limits, 5 s at most"
kind[r7]=crowd; forwarder[r7]=0
args[r7]="allocate --clients 2000 --concurrency 64 --one-source --duration 5s"
thousands() { echo "$1" | sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/' -e 'ta'; }
label[r8]="$(thousands "$held_small") allocations held at 1 pps each"
kind[r8]=hold; forwarder[r8]=0
args[r8]="hold --clients $held_small --rate 1 --size 100 --duration ${duration}s --setup-timeout 120s --concurrency 128 --linger 3s"
label[r9]="$(thousands "$held_large") allocations held at 1 pps each"
kind[r9]=hold; forwarder[r9]=0
args[r9]="hold --clients $held_large --rate 1 --size 100 --duration ${duration}s --setup-timeout 120s --concurrency 128 --linger 3s"
label[r10]="1 client, max rate, 160 B ChannelData"
kind[r10]=relay; forwarder[r10]=1
args[r10]="relay --clients 1 --window 16 --size 160 --duration ${duration}s"
label[r11]="64 clients × 400 pps × 1000 B ChannelData"
kind[r11]=relay; forwarder[r11]=1; direct[r11]=1
args[r11]="relay --clients 64 --rate 400 --size 1000 --duration $((duration + 1))s"
# r12 steps the offered rate up a ladder of paced runs (see run_ladder), each rung 1.25 times
# the one below, so that a server's figure is at most a fifth below its true ceiling (a
# ladder of doublings could hide a 1.5x difference between two servers). Every server passed
# 400 and 500 pps each on the busy development machine; the top rung, 64 x 6,400 = 409,600
# packets a second each way, is more than the generator alone carries on 2 cores (the direct
# run), so every ladder ends in loss or at the generator's bound.
ladder_clients=64
ladder_rates="400 500 640 800 1000 1250 1600 2000 2500 3200 4000 5000 6400"
label[r12]="$ladder_clients clients × 160 B ChannelData, paced, stepped up from 400 to 6400 pps each (×1.25 a rung)"
kind[r12]=ladder; forwarder[r12]=1; direct[r12]=1
args[r12]="relay --clients $ladder_clients --size 160 --duration ${duration}s"
all_rows="r1 r2 r3 r4 r5 r6 r7 r8 r9 r10 r11 r12"
rows="${only//,/ }"
rows="${rows:-$all_rows}"
for row in $rows; do
  [ -n "${label[$row]:-}" ] || { echo "compare.sh: unknown row $row (see --help)" >&2; exit 2; }
done

# Starts server $1 (turnpike | coturn | forwarder | direct) fresh. Sets target_args (the
# generator's arguments towards it) and watched_pid (the process that relays; empty for
# direct). Returns 1 if it did not start.
start_server() {
  # coturn appends to its --log-file: without this its kept log began with the last server's.
  : >"$work/server.log"
  case "$1" in
    turnpike) start_turnpike || return 1 ;;
    coturn) start_coturn || return 1 ;;
    forwarder) start_forwarder || return 1 ;;
    direct) echo_port=$(free_port) || return 1 ;;
  esac
  watched_pid="$server_pid"
  if [ "$1" = forwarder ]; then
    watched_pid="$forward_pid"
    target_args="--plain --server 127.0.0.1:$port --echo-bind 127.0.0.1:$echo_port"
  elif [ "$1" = direct ]; then
    # The generator's own echo peer is the target: the same load with no relay in between.
    watched_pid=""
    target_args="--plain --server 127.0.0.1:$echo_port --echo-bind 127.0.0.1:$echo_port"
  else
    target_args="--server 127.0.0.1:$port --user load --password load-password"
  fi
  [ -n "$watched_pid" ] && target_args="$target_args --server-pid $watched_pid"
  return 0
}

# Stops server $1 (if it still runs) and keeps its log as row $2's.
stop_server() {
  if [ "$1" = forwarder ]; then
    stop_pid "$forward_pid"
    forward_pid=""
  elif [ "$1" != direct ]; then
    stop_pid "$server_pid"
    server_pid=""
  fi
  cp "$work/server.log" "$results/$2.$1.log" 2>/dev/null || true
}

# One run of row $1 against server $2 (turnpike | coturn | forwarder | direct): appends its
# JSON line to $results/$1.$2.jsonl.
run_one() {
  local row="$1" server="$2" out="$results/$1.$2.jsonl" status=0
  start_server "$server"
  # shellcheck disable=SC2086 # the argument strings are split on purpose
  timeout 600 "$load_bin" ${args[$row]} $target_args \
    >"$work/run.json" 2>"$work/run.err" &
  local load_pid=$! api='{}'
  if [ "${kind[$row]}" = hold ] && [ "$server" = turnpike ]; then
    api=$(time_status_api "$load_pid" "$(held_count "$row")")
  fi
  wait "$load_pid" || status=$?
  if [ -s "$work/run.json" ]; then
    jq -c --argjson api "$api" '. + $api + {relayed_pps: (if (.relayed_packets != null) and (.duration_s > 0) then (.relayed_packets / .duration_s | round) else null end)}' "$work/run.json" >>"$out"
  else
    echo "compare.sh: $row against $server produced no report (exit $status):" >&2
    cat "$work/run.err" >&2
  fi
  stop_server "$server" "$row"
  printf '  %-4s %-9s exit %s  %s\n' "$row" "$server" "$status" \
    "$(jq -c '{sent, loss_pct, rtt_p99_us, allocations, allocations_per_s, server_cpu_us_per_packet, server_cpu_us_per_allocation, host_cpu_us_per_packet, relay_cost_us_per_packet, server_rss_bytes_per_allocation, failures}' "$work/run.json" 2>/dev/null | sed 's/"[a-z_0-9]*":null,\{0,1\}//g')"
}

# Row r12 against server $1 in round $2: the server is started once, then loaded with one
# short paced run per rung of the ladder, lowest rate first, until two rungs in a row lose
# more than 0.1 % (one such rung alone can be a neighbour's burst on a shared machine; two in
# a row are the server's ceiling), the ladder ends, or the server is gone. A rung passes when
# it sent something, lost at most 0.1 % and failed at nothing but its clean-up. Every rung's
# JSON line goes to $results/r12.$1.rungs.jsonl; the round's summary to $results/r12.$1.jsonl:
# max_pps_at_0_1_loss, the highest relayed_pps_sending among passing rungs (null if none
# passed or the server died), with that rung's rate, loss_pct and rtt_p99_us.
run_ladder() {
  local row="$1" server="$2" round="$3"
  local rungs="$results/$row.$server.rungs.jsonl" out="$results/$row.$server.jsonl"
  local best=null failed=0 ran=0 stopped="top of the ladder" died=null rates rate status line passed
  if ! start_server "$server"; then
    stopped="did not start"
    died=0
    rates=""
  else
    rates="$ladder_rates"
  fi
  for rate in $rates; do
    if [ -n "$watched_pid" ] && ! kill -0 "$watched_pid" 2>/dev/null; then
      died=$rate; stopped="gone before the $rate pps rung"
      break
    fi
    status=0
    # Set-up (30 s at most), sending, the drain and clean-up: a minute is ample.
    # shellcheck disable=SC2086 # the argument strings are split on purpose
    timeout $((duration + 60)) "$load_bin" ${args[$row]} --rate "$rate" $target_args \
      >"$work/run.json" 2>"$work/run.err" || status=$?
    ran=$((ran + 1))
    # Rates per second of sending (the rung's --duration): duration_s also counts the drain,
    # which lasts the whole loss timeout as soon as one packet is lost.
    line=$(jq -c --argjson round "$round" --argjson rate "$rate" --argjson exit "$status" \
      --argjson seconds "$duration" --argjson clients "$ladder_clients" '
      . + {round: $round, rung_rate: $rate, exit: $exit, offered_pps: ($clients * $rate),
           sent_pps_sending: (.sent / $seconds | round),
           relayed_pps_sending: (if .relayed_packets == null then null
                                 else .relayed_packets / $seconds | round end)}
      | . + {passed: (.sent > 0 and .loss_pct != null and .loss_pct <= 0.1
                      and ([.failures | keys[] | select(startswith("cleanup_") | not)] | length) == 0)}' \
      "$work/run.json" 2>/dev/null) && [ -n "$line" ] ||
      line="{\"round\": $round, \"rung_rate\": $rate, \"exit\": $status, \"passed\": false, \"report\": null}"
    echo "$line" >>"$rungs"
    printf '  %-4s %-9s %5s pps x %s: exit %s  %s\n' "$row" "$server" "$rate" "$ladder_clients" "$status" \
      "$(jq -c '{passed, sent_pps_sending, relayed_pps_sending, loss_pct, rtt_p99_us, failures}' <<<"$line" | sed 's/"[a-z_0-9]*":null,\{0,1\}//g')"
    passed=$(jq -r .passed <<<"$line")
    if [ "$passed" = true ]; then
      failed=0
      best=$(jq -c -n --argjson best "$best" --argjson line "$line" \
        'if $best == null or $line.relayed_pps_sending > $best.relayed_pps_sending then $line else $best end')
    else
      failed=$((failed + 1))
      [ -s "$work/run.err" ] && [ "$status" != 0 ] && sed 's/^/      /' "$work/run.err" | tail -n 3 >&2
    fi
    if [ -n "$watched_pid" ] && ! kill -0 "$watched_pid" 2>/dev/null; then
      died=$rate; stopped="gone during the $rate pps rung"
      break
    fi
    if [ "$failed" -ge 2 ]; then
      stopped="two rungs in a row above 0.1 % loss"
      break
    fi
  done
  jq -c -n --argjson best "$best" --argjson round "$round" --argjson ran "$ran" \
    --argjson died "$died" --arg stopped "$stopped" '
    (if $died == null then $best else null end) as $b
    | {round: $round,
       max_pps_at_0_1_loss: $b.relayed_pps_sending, rate: $b.rung_rate,
       offered_pps: $b.offered_pps, sent_pps: $b.sent_pps_sending,
       loss_pct: $b.loss_pct, rtt_p99_us: $b.rtt_p99_us,
       rungs: $ran, stopped: $stopped, died_at_rate: $died,
       max_pps_before_death: (if $died == null then null else $best.relayed_pps_sending end)}' >>"$out"
  stop_server "$server" "$row"
  printf '  %-4s %-9s round %s: %s\n' "$row" "$server" "$round" \
    "$(tail -n 1 "$out" | jq -c '{max_pps_at_0_1_loss, rate, loss_pct, rtt_p99_us, rungs, stopped}')"
}

held_count() {
  if [ "$1" = r9 ]; then echo "$held_large"; else echo "$held_small"; fi
}

# Once the hold run $1 has taken its figures (its RSS among them: the API's answers allocate)
# and lingers with its allocations, times GET /api/v1/status and GET
# /api/v1/allocations?limit=1000, three times each: a JSON object with the slowest of each in
# milliseconds (null if the API did not answer 200 within 10 s) and the allocations the status
# counted, which should be all $2 of them.
time_status_api() {
  local load_pid="$1" want="$2" total=null slowest_status=null slowest_list=null
  local auth="Authorization: Bearer $api_token" base="http://127.0.0.1:$http_port/api/v1"
  while kill -0 "$load_pid" 2>/dev/null; do
    if grep -q 'figures taken' "$work/run.err" 2>/dev/null; then
      # Worker snapshots lag by up to a second.
      for _ in 1 2 3 4; do
        total=$(curl -s -m 10 -H "$auth" "$base/status" | jq '.allocations.total' 2>/dev/null || echo null)
        [ "$total" = "$want" ] && break
        sleep 0.5
      done
      slowest_status=$(slowest_get "$auth" "$base/status")
      slowest_list=$(slowest_get "$auth" "$base/allocations?limit=1000")
      break
    fi
    sleep 0.2
  done
  echo "{\"status_api_ms\": $slowest_status, \"allocations_api_ms\": $slowest_list, \"status_api_allocations\": ${total:-null}}"
}

# The slowest of three GETs of $2 in milliseconds, or null if one was not a 200.
slowest_get() {
  local slowest=0 result code seconds
  for _ in 1 2 3; do
    result=$(curl -s -o /dev/null -m 10 -w '%{http_code} %{time_total}' -H "$1" "$2") || { echo null; return; }
    code=${result% *}; seconds=${result#* }
    [ "$code" = 200 ] || { echo null; return; }
    slowest=$(jq -n "[$slowest, $seconds * 1000] | max | . * 10 | round / 10")
  done
  echo "$slowest"
}

# The median of key $2 over the JSON lines of file $1, "lowest-highest" as $3 asks.
stat_of() {
  local file="$1" key="$2" what="$3"
  [ -s "$file" ] || { echo null; return; }
  jq -s --arg k "$key" --arg what "$what" '
    [.[] | .[$k] | select(type == "number")] | sort
    | if length == 0 then null
      elif $what == "min" then .[0]
      elif $what == "max" then .[-1]
      elif length % 2 == 1 then .[length / 2 | floor]
      else (.[length / 2 - 1] + .[length / 2]) / 2 end' "$file"
}

# "median (min–max)" with $3 decimals, or "n/a".
cell() {
  local file="$1" key="$2" decimals="$3" unit="${4:-}" median low high
  median=$(stat_of "$file" "$key" median)
  [ "$median" = null ] && { echo "n/a"; return; }
  low=$(stat_of "$file" "$key" min)
  high=$(stat_of "$file" "$key" max)
  if [ "$low" = "$high" ]; then
    printf "%.${decimals}f%s" "$median" "$unit"
  else
    printf "%.${decimals}f%s (%.${decimals}f–%.${decimals}f)" "$median" "$unit" "$low" "$high"
  fi
}

ratio() {
  local a="$1" b="$2"
  if [ "$a" = null ] || [ "$b" = null ] || [ "$(jq -n "$b == 0")" = true ]; then
    echo "—"
  else
    jq -n "$a / $b * 100 | round / 100"
  fi
}

versions="turnpike $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+changes') ($turnpike_bin, offload ${TURNPIKE_OFFLOAD:-auto}), $("$turnserver_bin" --version 2>/dev/null | tail -n 1 | sed 's/^/coturn /')"
echo "$versions"
echo "$(nproc) cores, $(uname -r), open files $nofile, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "rows: $rows; $rounds round(s); results in $results"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)

for row in $rows; do
  if [ "${kind[$row]}" = hold ]; then
    held=$held_small
    [ "$row" = r9 ] && held=$held_large
    if [ "$nofile" -lt $((held + 200)) ]; then
      echo "  $row skipped: the open-file limit ($nofile) is below $((held + 200))"
      continue
    fi
  fi
  servers="turnpike coturn"
  [ "${forwarder[$row]}" = 1 ] && servers="turnpike coturn forwarder"
  [ "${direct[$row]:-0}" = 1 ] && servers="$servers direct"
  reversed=$(echo "$servers" | tr ' ' '\n' | tac | tr '\n' ' ')
  for round in $(seq 1 "$rounds"); do
    order="$servers"
    [ $((round % 2)) = 0 ] && order="$reversed"
    for server in $order; do
      if [ "${kind[$row]}" = ladder ]; then
        run_ladder "$row" "$server" "$round"
      else
        run_one "$row" "$server"
      fi
    done
  done
done

elapsed=$(( $(date +%s) - started ))
table="$results/table.md"
{
  echo "| load (UDP unless noted) | coturn | turnpike | forwarder | turnpike/coturn | turnpike/forwarder | host CPU: coturn / turnpike / forwarder | marginal CPU: coturn / turnpike / forwarder (turnpike/coturn) |"
  echo "|---|---|---|---|---|---|---|---|"
  for row in $rows; do
    t="$results/$row.turnpike.jsonl"; c="$results/$row.coturn.jsonl"; f="$results/$row.forwarder.jsonl"
    case "${kind[$row]}" in
      relay)
        key=server_cpu_us_per_packet; host=host_cpu_us_per_packet
        what="server CPU per relayed packet"
        extra() { echo ", $(cell "$1" loss_pct 1 ' %') loss, RTT p99 $(cell "$1" rtt_p99_us 0 ' µs'), $(cell "$1" relayed_pps 0) pps"; }
        unit=" µs"; decimals=2 ;;
      alloc)
        key=server_cpu_us_per_allocation; host=host_cpu_us_per_allocation
        what="server CPU per allocation"
        extra() { echo ", $(cell "$1" allocations_per_s 0) /s"; }
        unit=" µs"; decimals=1 ;;
      crowd)
        key=allocations_per_s; host=none
        what="allocations/s"
        extra() { echo ", $(cell "$1" allocations 0) of 2000 allocated"; }
        unit=" /s"; decimals=0 ;;
      hold)
        key=server_rss_bytes_per_allocation; host=none
        what="server RSS growth per allocation"
        extra() {
          local api=""
          [ "$(stat_of "$1" status_api_ms median)" != null ] &&
            api=", status API $(cell "$1" status_api_ms 0 ' ms') counting $(cell "$1" status_api_allocations 0), allocations page $(cell "$1" allocations_api_ms 0 ' ms')"
          echo " ($(cell "$1" server_rss_kib_after 0 ' KiB') in all), $(cell "$1" relaying 0) relaying, server CPU $(cell "$1" server_cpu_pct 1 ' %') of a core$api"
        }
        unit=" B"; decimals=0 ;;
      ladder)
        key=max_pps_at_0_1_loss; host=none
        what="max relayed pps at ≤ 0.1 % loss"
        extra() {
          local died gone="" at=""
          died=$(jq -s '[.[] | select(.died_at_rate != null)] | length' "$1" 2>/dev/null) || died=0
          [ "${died:-0}" -gt 0 ] && gone=", gone or not started in $died of $rounds round(s)"
          [ "$(stat_of "$1" "$key" median)" != null ] &&
            at=" at $(cell "$1" rate 0) pps each, $(cell "$1" loss_pct 2 ' %') loss, RTT p99 $(cell "$1" rtt_p99_us 0 ' µs')"
          echo "$at$gone"
        }
        unit=" pps"; decimals=0 ;;
    esac
    tm=$(stat_of "$t" "$key" median); cm=$(stat_of "$c" "$key" median); fm=$(stat_of "$f" "$key" median)
    fcell="—"; fratio="—"; fhost="—"
    if [ "${forwarder[$row]}" = 1 ]; then
      fcell="$(cell "$f" "$key" "$decimals" "$unit")$(extra "$f")"
      fratio=$(ratio "$tm" "$fm")
      [ "$host" != none ] && fhost=$(cell "$f" "$host" 2)
    fi
    hosts="—"
    [ "$host" != none ] && hosts="$(cell "$c" "$host" 2) / $(cell "$t" "$host" 2) / $fhost"
    marginal="—"; bound=""
    if [ "${kind[$row]}" = ladder ]; then
      # The direct run is the generator's own ceiling: a server within 10 % of it is bound by
      # the generator, not by itself, and its figure is a lower bound.
      dfile="$results/$row.direct.jsonl"
      d=$(stat_of "$dfile" "$key" median)
      marginal="direct (the generator alone): $(cell "$dfile" "$key" 0 "$unit")$(extra "$dfile")"
      bound_by=""
      if [ "$d" != null ]; then
        for srv in coturn turnpike forwarder; do
          m=$(stat_of "$results/$row.$srv.jsonl" "$key" median)
          [ "$m" != null ] && [ "$(jq -n "$m >= 0.9 * $d")" = true ] && bound_by="$bound_by $srv"
        done
      fi
      [ -n "$bound_by" ] && marginal="$marginal; generator-bound (within 10 % of direct):${bound_by}"
      case " $bound_by " in *" turnpike "*) bound=", generator-bound" ;; esac
    elif [ "${direct[$row]:-0}" = 1 ]; then
      d=$(stat_of "$results/$row.direct.jsonl" relay_cost_us_per_packet median)
      margin() {
        local m
        m=$(stat_of "$1" relay_cost_us_per_packet median)
        if [ "$m" = null ] || [ "$d" = null ]; then echo null; else jq -n "$m - $d | . * 100 | round / 100"; fi
      }
      mc=$(margin "$c"); mt=$(margin "$t"); mf=$(margin "$f")
      marginal="$mc / $mt / $mf µs ($(ratio "$mt" "$mc")); direct $d µs"
    fi
    echo "| ${label[$row]}: $what | $(cell "$c" "$key" "$decimals" "$unit")$(extra "$c") | $(cell "$t" "$key" "$decimals" "$unit")$(extra "$t") | $fcell | $(ratio "$tm" "$cm")$bound | $fratio | $hosts | $marginal |"
  done
  echo
  echo "Medians of $rounds round(s), lowest–highest in brackets; host CPU in µs per relayed packet (per allocation for the allocation rows); marginal CPU: the relay cost (server, generator and echo peer, ksoftirqd, interrupts) per relayed packet minus the direct run's."
  case " $rows " in *" r12 "*)
    echo "r12: the most packets relayed a second (both directions, per second of sending) among the rungs of the ladder that lost at most 0.1 %, each server fresh per round, each rung $duration s; a ladder stops after two rungs in a row above 0.1 % loss. Higher is better, so its ratios read the other way round; direct is the generator sending straight to its own echo peer, its own ceiling. Every rung's JSON line: r12.<server>.rungs.jsonl." ;;
  esac
  echo "$(nproc) cores, $(uname -r); load average before $load_before, after $(cut -d' ' -f1-3 /proc/loadavg); $elapsed s in all."
  echo "$versions; \`$command_line\`"
} >"$table"
echo
cat "$table"
echo
echo "JSON lines and server logs: $results"
