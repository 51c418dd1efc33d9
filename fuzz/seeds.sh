#!/usr/bin/env bash
# Regenerates the seed corpora in fuzz/corpus/ from what real clients send.
#
# Starts turnpike (debug build) on 127.0.0.1 with user alice/wonderland and REST secret s3cret
# in realm turnpike.test (what the fuzz targets sign with), puts the recording proxy of
# examples/fuzz_seeds.rs in front of it (UDP, TCP, and TLS whose plaintext it records), and
# drives through the proxy:
#   - coturn's turnutils_uclient over UDP, TCP and TLS; static user and REST secret;
#     ChannelData and Send indications; with and without EVEN-PORT (RTCP) allocations;
#   - headless Chromium: two relay-only RTCPeerConnections exchanging data-channel messages
#     over turn:...?transport=udp, turn:...?transport=tcp and turns:...
# then converts the recordings into inputs for every target (plus the example configuration for
# the config target), adds the scripted TCP-allocation (RFC 6062) inputs of
# src/fuzzing/core/seeds.rs, and, when cargo-fuzz and a nightly toolchain are there, minimises each
# corpus with `cargo fuzz cmin`.
#
# Needs: turnutils_uclient and turnutils_peer (Debian: coturn), chromium. Everything listens on
# 127.0.0.1 only. Usage: fuzz/seeds.sh   (from anywhere; takes about two minutes)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

for tool in turnutils_uclient turnutils_peer chromium; do
    command -v "$tool" >/dev/null || { echo "seeds.sh: $tool is needed" >&2; exit 1; }
done

cd "$root"
cargo build --quiet --bin turnpike --example fuzz_seeds
turnpike="$root/target/debug/turnpike"
seeds="$root/target/debug/examples/fuzz_seeds"

# Ports: turnpike on base (udp, tcp), the proxy on base+1 (udp, tcp) and base+2 (tls), the
# echo peer on base+3, relays on base+10..base+59.
base=$((30000 + RANDOM % 20000))
cat > "$work/turnpike.toml" <<EOF
realm = "turnpike.test"
workers = 1
drain-timeout = "1s"

[[listen]]
transport = "udp"
address = "127.0.0.1:$base"

[[listen]]
transport = "tcp"
address = "127.0.0.1:$base"

[relay]
address = "127.0.0.1"
ports = "$((base + 10))-$((base + 59))"

[auth]
secrets = ["s3cret"]

[[auth.users]]
name = "alice"
password = "wonderland"

[peers]
allow = ["127.0.0.1/32"]
EOF

"$turnpike" serve -c "$work/turnpike.toml" 2> "$work/turnpike.log" &
pids+=($!)
"$seeds" proxy "$work/rec" "127.0.0.1:$((base + 1))" "127.0.0.1:$((base + 1))" \
    "127.0.0.1:$((base + 2))" "127.0.0.1:$base" "127.0.0.1:$base" 2> "$work/proxy.log" &
pids+=($!)
turnutils_peer -L 127.0.0.1 -p $((base + 3)) > "$work/peer.log" 2>&1 &
pids+=($!)
sleep 2
for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "seeds.sh: a helper exited (port $base..$((base + 3)) taken?); run again" >&2
        cat "$work"/*.log >&2
        exit 1
    fi
done

uclient() {
    # 5 messages of 120 bytes from one client; a failed run is not fatal: only the traffic
    # matters here.
    timeout -k 2 30 turnutils_uclient -m 1 -n 5 -l 120 -e 127.0.0.1 -r $((base + 3)) "$@" \
        >> "$work/uclient.log" 2>&1 || true
}
for credentials in "-u alice -w wonderland" "-u carol -W s3cret"; do
    # shellcheck disable=SC2086 # word splitting of the credentials is intended
    {
        uclient $credentials -c -p $((base + 1)) 127.0.0.1
        uclient $credentials -c -s -p $((base + 1)) 127.0.0.1
        uclient $credentials -p $((base + 1)) 127.0.0.1
        uclient $credentials -c -t -p $((base + 1)) 127.0.0.1
        uclient $credentials -c -t -S -p $((base + 2)) 127.0.0.1
    }
done

page() {
    cat <<EOF
<!doctype html><meta charset="utf-8"><script>
const ice = {iceServers: [{urls: "$1", username: "alice", credential: "wonderland"}],
             iceTransportPolicy: "relay"};
const a = new RTCPeerConnection(ice), b = new RTCPeerConnection(ice);
a.onicecandidate = e => e.candidate && b.addIceCandidate(e.candidate);
b.onicecandidate = e => e.candidate && a.addIceCandidate(e.candidate);
b.ondatachannel = e => { e.channel.onmessage = m => e.channel.send("pong " + m.data); };
const channel = a.createDataChannel("seeds");
channel.onopen = () => { for (let i = 0; i < 5; i++) channel.send("ping " + i); };
(async () => {
  await a.setLocalDescription(); await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription(); await a.setRemoteDescription(b.localDescription);
})();
</script>
EOF
}
for url in "turn:127.0.0.1:$((base + 1))?transport=udp" \
    "turn:127.0.0.1:$((base + 1))?transport=tcp" "turns:127.0.0.1:$((base + 2))?transport=tcp"; do
    page "$url" > "$work/page.html"
    timeout -k 2 15 chromium --headless --no-sandbox --disable-gpu --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --ignore-certificate-errors --user-data-dir="$work/profile" \
        "file://$work/page.html" >> "$work/chromium.log" 2>&1 || true
done
sleep 1

rm -rf "$here/corpus"
"$seeds" convert "$work/rec" "$here/corpus"
# TCP allocations (RFC 6062): no client above makes one, so scripted inputs.
"$seeds" tcp "$here/corpus"
mkdir -p "$here/corpus/config"
cp config/turnpike.toml "$here/corpus/config/example.toml"
cp "$work/turnpike.toml" "$here/corpus/config/seeds.toml"
cp "$here"/config-seeds/*.toml "$here/corpus/config/"

if command -v cargo-fuzz >/dev/null && cargo +nightly --version >/dev/null 2>&1; then
    cd "$here"
    for target in stun_message stream_framing config core_unauthenticated core_authenticated; do
        cargo +nightly fuzz cmin "$target" "corpus/$target" -- -max_len=65600 -timeout=5 \
            2>&1 | grep -E "MERGE-OUTER: [0-9]+ new files" || true
    done
fi
for dir in "$here"/corpus/*/; do
    echo "$(basename "$dir"): $(find "$dir" -type f | wc -l) files"
done
