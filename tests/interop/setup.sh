#!/usr/bin/env bash
# Idempotent setup of the independent IPsec peers used by the interop tests:
#   - a Python venv in <repo>/.tools/venv with Scapy (>= 2.6.1: scapy.layers.ipsec with
#     GMAC and ESN for AH; Debian's python3-scapy 2.5 lacks them) and cryptography;
#   - tshark (Debian's, Wireshark 4.0) for a second, ESP-GCM-only, decryptor.
# Fast (no network) when everything is already in place. Exits non-zero with a message
# saying what failed otherwise.
#
# Usage: tests/interop/setup.sh [--no-tshark]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$ROOT/.tools/venv"
# Versions tested together; bump both here and in ipsec_peer.py's check if needed.
SCAPY_VERSION="2.8.0"
CRYPTOGRAPHY_VERSION="46.0.3"
WANT_TSHARK=1
[[ "${1:-}" == "--no-tshark" ]] && WANT_TSHARK=0

die() { echo "interop setup: $*" >&2; exit 1; }

venv_ok() {
    [[ -x "$VENV/bin/python" ]] &&
        "$VENV/bin/python" - "$SCAPY_VERSION" "$CRYPTOGRAPHY_VERSION" <<'PY' 2>/dev/null
import sys
import scapy, cryptography
from scapy.layers import ipsec  # noqa: F401
ok = scapy.VERSION == sys.argv[1] and cryptography.__version__ == sys.argv[2]
sys.exit(0 if ok else 1)
PY
}

if ! venv_ok; then
    command -v python3 >/dev/null || die "python3 not found"
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        echo "interop setup: installing python3-venv" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null || die "apt-get update failed"
        apt-get install -y -qq python3-venv >/dev/null || die "apt-get install python3-venv failed"
    fi
    mkdir -p "$ROOT/.tools"
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "scapy==$SCAPY_VERSION" "cryptography==$CRYPTOGRAPHY_VERSION" ||
        die "pip install scapy==$SCAPY_VERSION cryptography==$CRYPTOGRAPHY_VERSION failed (is PyPI reachable?)"
    venv_ok || die "venv at $VENV does not import scapy.layers.ipsec $SCAPY_VERSION / cryptography $CRYPTOGRAPHY_VERSION"
fi

if [[ $WANT_TSHARK == 1 ]] && ! command -v tshark >/dev/null && [[ $(id -u) != 0 ]]; then
    echo "interop setup: WARNING: tshark is missing and only root can install it" \
        "(sudo apt-get install tshark); its test skips without CI and fails with CI=true" >&2
    WANT_TSHARK=0
fi
if [[ $WANT_TSHARK == 1 ]] && ! command -v tshark >/dev/null; then
    echo "interop setup: installing tshark" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Answer the wireshark-common "non-root capture" question up front.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
    if ! apt-get install -y -qq tshark >/dev/null 2>&1; then
        apt-get update -qq >/dev/null || die "apt-get update failed"
        apt-get install -y -qq tshark >/dev/null || die "apt-get install tshark failed"
    fi
    command -v tshark >/dev/null || die "tshark still not found after install"
fi

echo "interop setup: ok (venv $VENV, scapy $SCAPY_VERSION, cryptography $CRYPTOGRAPHY_VERSION$([[ $WANT_TSHARK == 1 ]] && echo ", $(tshark --version 2>/dev/null | head -1)"))"
