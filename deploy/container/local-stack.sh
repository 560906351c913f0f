#!/usr/bin/env bash
# The container image and a local stack (relay, dno-sink, Prometheus) under podman, on a
# Debian bookworm machine that reaches the Debian mirror but no image registry. Run as root
# from any directory of a clone:
#
#   deploy/container/local-stack.sh up      # install what is missing, build the images, start
#   deploy/container/local-stack.sh check   # health SERVING, an outage's POA and PRA at
#                                           # dno-sink, Prometheus scraping /metrics over TLS
#   deploy/container/local-stack.sh down    # remove the containers and their volumes
#   deploy/container/local-stack.sh status  # the containers and images
#
# `up` and `check` are idempotent: `up` changes only what is missing or out of date (a
# container is recreated when its image or its settings changed), `check` publishes a new
# outage and restores it again each time.
#
# What `up` does to the machine:
#   - apt-get installs podman, runc, debootstrap, openssl, curl and jq when they are missing
#     (--no-install-recommends; crun is not needed: it refuses the hybrid cgroup layout of
#     some machines, so podman runs everything with runc).
#   - /etc/containers/containers.conf: adds `runtime = "runc"` under [engine] and
#     `default_ulimits = []` under [containers], each only when the file sets no value for it
#     (the default ulimits cannot be applied on some machines); nothing else in /etc.
#   - Images, each built once and then kept (`down` leaves them):
#       localhost/outage-relay-base:bookworm   debootstrap --variant=minbase bookworm, imported
#       localhost/outage-relay-prometheus:local Debian's prometheus package on that base
#       localhost/outage-relay:local           deploy/container/Dockerfile's runtime stage on
#                                              that base, with the binary of a host build
#                                              (cargo build --release --locked; rebuilt each
#                                              `up`, cheap when nothing changed)
#   - Containers outage-relay-local-{relay,dno-sink,prometheus} and volumes
#     outage-relay-local-{data,prometheus}, all with host networking (no bridge, no port
#     mapping), on loopback ports:
#       gRPC 55051, relay /metrics 59464, Prometheus 59090
#     (LOCAL_STACK_GRPC_PORT, LOCAL_STACK_METRICS_PORT, LOCAL_STACK_PROMETHEUS_PORT change them).
#   - A throwaway CA and certificates (relay, dno-sink as ukpn, a CSP adapter, Prometheus) in
#     target/local-stack/pki (LOCAL_STACK_DIR moves target/local-stack), valid 90 days and
#     made again when missing or about to expire.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/deploy/container/local-stack"
STATE="${LOCAL_STACK_DIR:-$REPO/target/local-stack}"
PKI="$STATE/pki"
GRPC_PORT="${LOCAL_STACK_GRPC_PORT:-55051}"
METRICS_PORT="${LOCAL_STACK_METRICS_PORT:-59464}"
PROMETHEUS_PORT="${LOCAL_STACK_PROMETHEUS_PORT:-59090}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

BASE_IMAGE=localhost/outage-relay-base:bookworm
RELAY_IMAGE=localhost/outage-relay:local
PROMETHEUS_IMAGE=localhost/outage-relay-prometheus:local
RELAY=outage-relay-local-relay
SINK=outage-relay-local-dno-sink
PROMETHEUS=outage-relay-local-prometheus
DATA_VOLUME=outage-relay-local-data
PROMETHEUS_VOLUME=outage-relay-local-prometheus
# The name in the relay's certificate, which clients check (--tls-domain, server_name).
RELAY_NAME=outage-relay
# The compose registry's one device (distributor 12, routed to ukpn).
DEVICE=00-db-12-34-56-78-90-a0
MPAN_CORE=1234567890126

# Everything heavy runs at the lowest CPU priority (the machine may be running benchmarks);
# containers started this way inherit it.
podman() { nice -n 19 podman --runtime runc "$@"; }

# Podman schedules a container's health checks with systemd timers: with no systemd (as in many
# containers and CI machines) it logs an error whenever it would add or remove one, and runs
# none; `check` runs the relay's with `podman healthcheck run`. Those errors are left out.
without_timer_errors() {
    "$@" 2> >(grep -v 'unable to get systemd connection to .* healthchecks' >&2)
}

START=$SECONDS
say() { printf '[%4ss] %s\n' "$((SECONDS - START))" "$*"; }
die() {
    printf 'local-stack: %s\n' "$*" >&2
    exit 1
}

require_root() {
    [ "$(id -u)" -eq 0 ] || die "run as root (rootful podman, apt-get, /etc/containers)"
}

# --- machine setup ---------------------------------------------------------------------------

install_packages() {
    local missing=() package
    for package in podman runc debootstrap openssl curl jq; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$package")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return
    say "apt-get install ${missing[*]}"
    # Another apt-get on the machine holds the lock for a while at most: wait for it.
    apt-get -o DPkg::Lock::Timeout=600 update -q
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
        --no-install-recommends "${missing[@]}" </dev/null
}

# Sets KEY = VALUE under [SECTION] of containers.conf unless the file sets KEY already.
containers_conf_default() {
    local conf=/etc/containers/containers.conf section=$1 key=$2 value=$3
    mkdir -p /etc/containers
    touch "$conf"
    if grep -Eq "^[[:space:]]*${key}[[:space:]]*=" "$conf"; then
        return
    fi
    say "$conf: [$section] $key = $value"
    if grep -Eq "^[[:space:]]*\[$section\]" "$conf"; then
        sed -i -E "0,/^[[:space:]]*\[$section\]/s//&\n$key = $value/" "$conf"
    else
        printf '\n[%s]\n%s = %s\n' "$section" "$key" "$value" >>"$conf"
    fi
}

configure_podman() {
    containers_conf_default engine runtime '"runc"'
    containers_conf_default containers default_ulimits '[]'
}

# --- images ----------------------------------------------------------------------------------

base_image() {
    if podman image exists "$BASE_IMAGE"; then
        return
    fi
    say "building $BASE_IMAGE: debootstrap --variant=minbase bookworm from $DEBIAN_MIRROR"
    local root
    root="$(mktemp -d /var/tmp/outage-relay-base.XXXXXX)"
    # shellcheck disable=SC2064 # expand $root now
    trap "rm -rf '$root'" EXIT
    nice -n 19 debootstrap --variant=minbase bookworm "$root" "$DEBIAN_MIRROR" \
        >"$STATE/debootstrap.log" 2>&1 || die "debootstrap failed: see $STATE/debootstrap.log"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
    trap - EXIT
    say "$BASE_IMAGE imported"
}

# A label with the hash of what an image is built from: rebuilt only when that changes.
image_hash() { podman image inspect --format '{{index .Labels "local-stack.hash"}}' "$1" 2>/dev/null || true; }

prometheus_image() {
    local hash
    hash="$(cat "$HERE/Containerfile.prometheus" <(podman image inspect --format '{{.Id}}' "$BASE_IMAGE") | sha256sum | cut -c1-16)"
    if [ "$(image_hash "$PROMETHEUS_IMAGE")" = "$hash" ]; then
        return
    fi
    say "building $PROMETHEUS_IMAGE (apt-get install prometheus inside the build)"
    podman build --network host --format docker --build-arg "BASE=$BASE_IMAGE" \
        --label "local-stack.hash=$hash" -t "$PROMETHEUS_IMAGE" \
        -f "$HERE/Containerfile.prometheus" "$HERE" >"$STATE/prometheus-build.log" 2>&1 ||
        die "building $PROMETHEUS_IMAGE failed: see $STATE/prometheus-build.log"
    say "$PROMETHEUS_IMAGE built"
}

host_binary() {
    if [ -r /etc/os-release ] && ! grep -q '^VERSION_CODENAME=bookworm' /etc/os-release; then
        say "warning: this host is not Debian bookworm; its binary must run on bookworm's glibc (2.36)"
    fi
    say "cargo build --release --locked --bin outage-relay"
    (cd "$REPO" && nice -n 19 cargo build --release --locked --bin outage-relay)
    BIN="$(cd "$REPO" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/release/outage-relay"
    [ -x "$BIN" ] || die "no binary at $BIN"
}

# deploy/container/Dockerfile's runtime stage, cut out of it, with the host's binary copied in
# where the Dockerfile copies the build stage's: one definition of the image for both.
relay_image() {
    local context="$STATE/relay-image" hash
    mkdir -p "$context"
    {
        grep '^ARG RUNTIME_BASE=' "$REPO/deploy/container/Dockerfile"
        sed -n '/^FROM \${RUNTIME_BASE}/,$p' "$REPO/deploy/container/Dockerfile" |
            sed 's|^COPY --from=build /out/outage-relay |COPY outage-relay |'
    } >"$context/Containerfile"
    if ! grep -q '^COPY outage-relay /usr/local/bin/outage-relay$' "$context/Containerfile" ||
        grep -q -- '--from=' "$context/Containerfile"; then
        die "cannot cut the runtime stage out of deploy/container/Dockerfile: see $context/Containerfile"
    fi
    install -m 0755 "$BIN" "$context/outage-relay"
    hash="$(cat "$context/Containerfile" "$context/outage-relay" <(podman image inspect --format '{{.Id}}' "$BASE_IMAGE") | sha256sum | cut -c1-16)"
    if [ "$(image_hash "$RELAY_IMAGE")" = "$hash" ]; then
        say "$RELAY_IMAGE is up to date"
        return
    fi
    say "building $RELAY_IMAGE (the Dockerfile's runtime stage, the host binary)"
    # Docker format: the OCI format has no HEALTHCHECK.
    podman build --network host --format docker --build-arg "RUNTIME_BASE=$BASE_IMAGE" \
        --label "local-stack.hash=$hash" -t "$RELAY_IMAGE" \
        -f "$context/Containerfile" "$context" >"$STATE/relay-build.log" 2>&1 ||
        die "building $RELAY_IMAGE failed: see $STATE/relay-build.log"
    say "$RELAY_IMAGE built"
}

# --- certificates ----------------------------------------------------------------------------

# issue NAME SUBJECT_ALT_NAMES EXTENDED_KEY_USAGE: NAME.pem and NAME.key in $PKI/work,
# signed by the throwaway CA.
issue() {
    local name=$1 san=$2 usage=$3 work="$PKI/work"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
        -keyout "$work/$name.key" -out "$work/$name.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=%s\n' "$san" "$usage" >"$work/$name.ext"
    openssl x509 -req -in "$work/$name.csr" -CA "$PKI/ca/ca.pem" -CAkey "$PKI/ca/ca.key" \
        -CAcreateserial -days 90 -extfile "$work/$name.ext" -out "$work/$name.pem" 2>/dev/null
}

# hand_out DIR OWNER NAME...: the CA certificate and NAME.pem/.key in $PKI/DIR, readable by
# OWNER (the uid a container runs as) only.
hand_out() {
    local dir="$PKI/$1" owner=$2 name
    shift 2
    rm -rf "$dir"
    install -d -m 0700 "$dir"
    install -m 0644 "$PKI/ca/ca.pem" "$dir/ca.pem"
    for name in "$@"; do
        install -m 0644 "$PKI/work/$name.pem" "$dir/$name.pem"
        install -m 0600 "$PKI/work/$name.key" "$dir/$name.key"
    done
    chown -R "$owner" "$dir"
}

# Makes them when missing or expiring within a week (the relay warns within 30 days). A container started with certificates made
# since is started again (their fingerprint is in its settings, see run and PKI_LABEL).
certificates() {
    if [ -f "$PKI/ca/ca.pem" ] && openssl x509 -checkend 604800 -noout -in "$PKI/ca/ca.pem" >/dev/null &&
        openssl x509 -checkend 604800 -noout -in "$PKI/work/relay.pem" >/dev/null 2>&1 &&
        [ -f "$PKI/adapter/adapter.pem" ]; then
        PKI_LABEL="local-stack.pki=$(openssl x509 -noout -fingerprint -sha256 -in "$PKI/ca/ca.pem" | cut -d= -f2)"
        return
    fi
    say "making a throwaway CA and certificates in $PKI"
    rm -rf "$PKI"
    install -d -m 0700 "$PKI" "$PKI/ca" "$PKI/work"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
        -subj "/CN=outage-relay local-stack CA" -keyout "$PKI/ca/ca.key" -out "$PKI/ca/ca.pem" 2>/dev/null
    issue relay "DNS:$RELAY_NAME,DNS:localhost,IP:127.0.0.1" serverAuth,clientAuth
    issue ukpn URI:spiffe://ukpowernetworks.example/outage-feed clientAuth
    issue adapter URI:spiffe://dsp.example/csp-adapter/local-stack clientAuth
    issue prometheus URI:spiffe://dsp.example/prometheus clientAuth
    hand_out_certificates
    PKI_LABEL="local-stack.pki=$(openssl x509 -noout -fingerprint -sha256 -in "$PKI/ca/ca.pem" | cut -d= -f2)"
}

hand_out_certificates() {
    local prometheus_uid
    prometheus_uid="$(podman run --rm --network host --entrypoint id "$PROMETHEUS_IMAGE" -u prometheus)"
    hand_out relay 10001:10001 relay
    hand_out dno-sink 10001:10001 ukpn
    hand_out prometheus "$prometheus_uid:$prometheus_uid" prometheus
    hand_out adapter 0:0 adapter
}

# --- containers ------------------------------------------------------------------------------

# run NAME IMAGE OPTION... -- ARG...: `podman run -d` unless NAME already runs IMAGE with these
# options and arguments (their hash is a label of the container).
run() {
    local name=$1 image=$2 hash options=()
    shift 2
    while [ "$1" != -- ]; do
        options+=("$1")
        shift
    done
    shift
    options+=(--label "$PKI_LABEL")
    hash="$(printf '%s\n' "$(podman image inspect --format '{{.Id}}' "$image")" "${options[@]}" -- "$@" | sha256sum | cut -c1-16)"
    if [ "$(podman container inspect --format '{{.State.Running}} {{index .Config.Labels "local-stack.hash"}}' "$name" 2>/dev/null)" = "true $hash" ]; then
        say "$name is running and up to date"
        return
    fi
    without_timer_errors podman rm --force --ignore --volumes --time 45 "$name" >/dev/null
    without_timer_errors podman run -d --name "$name" --network host \
        --label "local-stack.hash=$hash" "${options[@]}" "$image" "$@" >/dev/null
    say "$name started"
}

prometheus_config() {
    mkdir -p "$STATE/prometheus"
    cat >"$STATE/prometheus/prometheus.yml" <<EOF
# Made by deploy/container/local-stack.sh: the relay's /metrics over mutual TLS (its
# metrics_tls = "mutual"), with Prometheus's certificate (identity role "metrics").
global:
  scrape_interval: 5s
  evaluation_interval: 5s

rule_files:
  - /etc/prometheus/rules/*.yml

scrape_configs:
  - job_name: outage-relay
    scheme: https
    tls_config:
      ca_file: /etc/prometheus/outage-relay-tls/ca.pem
      server_name: $RELAY_NAME
      cert_file: /etc/prometheus/outage-relay-tls/prometheus.pem
      key_file: /etc/prometheus/outage-relay-tls/prometheus.key
    static_configs:
      - targets: ["127.0.0.1:$METRICS_PORT"]
EOF
}

TLS_TO_RELAY=(--tls-domain "$RELAY_NAME")

health() {
    "$BIN" health --target "https://127.0.0.1:$GRPC_PORT" --tls-ca "$PKI/adapter/ca.pem" \
        "${TLS_TO_RELAY[@]}" --timeout 3s
}

wait_serving() {
    local deadline=$((SECONDS + ${1:-90})) answer
    until answer="$(health 2>&1)"; do
        [ "$SECONDS" -lt "$deadline" ] || die "the relay is not SERVING: $answer (podman logs $RELAY)"
        sleep 1
    done
    say "health: $answer"
}

start_stack() {
    run "$RELAY" "$RELAY_IMAGE" \
        --stop-timeout 45 \
        -e OUTAGE_RELAY_CONFIG=/etc/outage-relay/config.toml \
        -e "OUTAGE_RELAY_LISTEN=127.0.0.1:$GRPC_PORT" \
        -e "OUTAGE_RELAY_METRICS_LISTEN=127.0.0.1:$METRICS_PORT" \
        -v "$DATA_VOLUME:/var/lib/outage-relay" \
        -v "$HERE/outage-relay.toml:/etc/outage-relay/config.toml:ro" \
        -v "$REPO/deploy/compose/registry.csv:/etc/outage-relay/registry.csv:ro" \
        -v "$PKI/relay:/etc/outage-relay/tls:ro" \
        --health-cmd "[\"outage-relay\", \"health\", \"--target\", \"https://127.0.0.1:$GRPC_PORT\", \"--tls-ca\", \"/etc/outage-relay/tls/ca.pem\", \"--tls-domain\", \"$RELAY_NAME\", \"--timeout\", \"3s\"]" \
        -- serve
    wait_serving 90
    run "$SINK" "$RELAY_IMAGE" \
        --no-healthcheck \
        -v "$PKI/dno-sink:/etc/outage-relay/tls:ro" \
        -- dno-sink --subscribe "https://127.0.0.1:$GRPC_PORT" --subscriber ukpn \
        --tls-ca /etc/outage-relay/tls/ca.pem "${TLS_TO_RELAY[@]}" \
        --tls-cert /etc/outage-relay/tls/ukpn.pem --tls-key /etc/outage-relay/tls/ukpn.key
    run "$PROMETHEUS" "$PROMETHEUS_IMAGE" \
        -v "$PROMETHEUS_VOLUME:/prometheus" \
        -v "$STATE/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" \
        -v "$REPO/deploy/prometheus/rules:/etc/prometheus/rules:ro" \
        -v "$PKI/prometheus:/etc/prometheus/outage-relay-tls:ro" \
        -- --config.file=/etc/prometheus/prometheus.yml --storage.tsdb.path=/prometheus \
        "--web.listen-address=127.0.0.1:$PROMETHEUS_PORT"
}

# --- subcommands -----------------------------------------------------------------------------

up() {
    require_root
    mkdir -p "$STATE"
    install_packages
    configure_podman
    base_image
    prometheus_image
    host_binary
    relay_image
    certificates
    prometheus_config
    start_stack
    say "up: gRPC https://127.0.0.1:$GRPC_PORT, /metrics https://127.0.0.1:$METRICS_PORT/metrics (client certificate required), Prometheus http://127.0.0.1:$PROMETHEUS_PORT"
}

# wait_for_alert KIND FIELD VALUE SECONDS: the dno-sink log line of an alert of KIND (for the
# check's device) whose FIELD starts with VALUE.
wait_for_alert() {
    local kind=$1 field=$2 value=$3 deadline=$((SECONDS + $4)) line
    while :; do
        line="$(podman logs "$SINK" 2>/dev/null | grep '^{' |
            jq -c --arg kind "$kind" --arg field "$field" --arg value "$value" --arg device "$DEVICE" \
                'select(.kind == $kind and .device_id == $device and ((.[$field] // "") | startswith($value)))' |
            tail -n 1 || true)"
        if [ -n "$line" ]; then
            printf '%s\n' "$line"
            return
        fi
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 1
    done
}

publish() {
    "$BIN" publish --target "https://127.0.0.1:$GRPC_PORT" --tls-ca "$PKI/adapter/ca.pem" \
        "${TLS_TO_RELAY[@]}" --tls-cert "$PKI/adapter/adapter.pem" --tls-key "$PKI/adapter/adapter.key" \
        --device "$DEVICE" --mpan-core "$MPAN_CORE" "$@"
}

prometheus_api() { curl -fsS "http://127.0.0.1:$PROMETHEUS_PORT/api/v1/$1"; }

check() {
    require_root
    BIN="$(cd "$REPO" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/release/outage-relay"
    [ -x "$BIN" ] || die "no binary at $BIN: run up first"
    [ -d "$PKI/adapter" ] || die "no certificates in $PKI: run up first"
    for name in "$RELAY" "$SINK" "$PROMETHEUS"; do
        [ "$(podman container inspect --format '{{.State.Running}}' "$name" 2>/dev/null)" = true ] ||
            die "$name is not running: run up first"
    done

    say "1. health over TLS (no client certificate needed), from the host"
    wait_serving 90
    say "   the image's health check, run by podman inside the relay container"
    podman healthcheck run "$RELAY" || die "podman healthcheck run $RELAY: unhealthy"
    say "   podman healthcheck run $RELAY: healthy"

    say "2. an outage: device $DEVICE loses supply now (publisher identity: the CSP adapter)"
    local lost_at published poa restored_at pra
    lost_at="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    publish --lost --at "$lost_at"
    published=$SECONDS
    say "   published lost at $lost_at; waiting for the POA at dno-sink (debounce 10 s)"
    poa="$(wait_for_alert POWER_OUTAGE lost_at "${lost_at%Z}" 60)" ||
        die "no POA at dno-sink within 60 s: podman logs $SINK"
    say "   POA at dno-sink $((SECONDS - published)) s after the publish: $poa"

    local delivered
    restored_at="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    publish --restored --at "$restored_at"
    published=$SECONDS
    pra="$(wait_for_alert POWER_RESTORATION restored_at "${restored_at%Z}" 60)" ||
        die "no PRA at dno-sink within 60 s: podman logs $SINK"
    say "   PRA at dno-sink $((SECONDS - published)) s after the publish: $pra"
    delivered="$(date -u +%s)"

    say "3. /metrics is served over TLS, to a metrics identity only"
    local answer
    if answer="$(curl -fsS -o /dev/null "http://127.0.0.1:$METRICS_PORT/metrics" 2>&1)"; then
        die "/metrics answered plain HTTP"
    fi
    say "   plain HTTP: refused ($answer)"
    if answer="$(curl -fsS -o /dev/null --cacert "$PKI/adapter/ca.pem" "https://127.0.0.1:$METRICS_PORT/metrics" 2>&1)"; then
        die "/metrics answered a client without a certificate"
    fi
    say "   HTTPS without a client certificate: refused ($answer)"
    answer="$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$PKI/adapter/ca.pem" \
        --cert "$PKI/work/ukpn.pem" --key "$PKI/work/ukpn.key" "https://127.0.0.1:$METRICS_PORT/metrics" 2>&1 || true)"
    [ "$answer" = 403 ] || die "/metrics answered the DNO's certificate with $answer, not 403"
    say "   HTTPS with the DNO's (ukpn's) certificate: HTTP $answer"
    say "   the relay's start log: $(podman logs "$RELAY" 2>&1 | grep -E 'serving gRPC with|Prometheus metrics at' | sed -E 's/^[^ ]+ +INFO +//' | paste -sd'|' | sed 's/|/; /g')"

    say "4. Prometheus scrapes the relay over TLS"
    local deadline=$((SECONDS + 90)) target=""
    while :; do
        target="$(prometheus_api targets 2>/dev/null |
            jq -c '.data.activeTargets[] | select(.labels.job == "outage-relay") | {scrapeUrl, health, lastError, lastScrape}' 2>/dev/null || true)"
        if [ "$(jq -r '.health' <<<"$target" 2>/dev/null)" = up ]; then
            # A scrape after the PRA, so the counters below include both alerts.
            local last
            last="$(jq -r '.lastScrape' <<<"$target")"
            if [ "$(date -d "$last" +%s 2>/dev/null || echo 0)" -gt "$delivered" ]; then
                break
            fi
        fi
        [ "$SECONDS" -lt "$deadline" ] || die "Prometheus target not up over https within 90 s: $target"
        sleep 2
    done
    say "   /api/v1/targets: $target"
    [[ "$(jq -r '.scrapeUrl' <<<"$target")" == https://* ]] || die "the scrape is not over https: $target"
    say "   outage_relay_alerts_total as Prometheus stored it: $(prometheus_api 'query?query=outage_relay_alerts_total' |
        jq -c '[.data.result[] | {kind: .metric.kind, value: .value[1]}]')"
    say "   rules loaded: $(prometheus_api rules | jq '[.data.groups[].rules[]] | length')"
    say "check passed"
}

down() {
    require_root
    say "stopping and removing the containers (45 s grace for the relay), then their volumes"
    without_timer_errors podman rm --force --ignore --volumes --time 45 "$PROMETHEUS" "$SINK" "$RELAY" >/dev/null
    for volume in "$DATA_VOLUME" "$PROMETHEUS_VOLUME"; do
        if podman volume exists "$volume"; then
            podman volume rm --force "$volume" >/dev/null
        fi
    done
    say "down (images kept: podman rmi $RELAY_IMAGE $PROMETHEUS_IMAGE $BASE_IMAGE removes them)"
}

status() {
    podman ps --all --filter name=outage-relay-local \
        --format '{{.Names}}\t{{.Image}}\t{{.Status}}'
    podman images --filter reference='localhost/outage-relay*' \
        --format '{{.Repository}}:{{.Tag}}\t{{.Size}}\t{{.Created}}'
}

case "${1:-}" in
up | check | down | status) "$1" ;;
*)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 64
    ;;
esac
