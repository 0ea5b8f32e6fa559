#!/usr/bin/env bash
# Runs Linux's XFRM as an IPsec peer over pcap files (see README.md).
#
#   run.sh --config FILE --encrypt|--decrypt --in X.pcap --out Y.pcap [--setup FILE] [--keep DIR]
#       one case: Linux encrypts (plaintext in, what it sends on the wire out) or decrypts
#       (wire packets in, the packets XFRM decapsulated out); exit 0 when the case ran.
#   run.sh --batch DIR
#       every case directory in DIR in one boot (each: mode, config, in.pcap[, setup.sh]);
#       results are written into the case directories; exit 0 when every case ran ok,
#       3 when the guest ran them all but some have an error status, 1 when the guest failed.
#
# Options: --timeout SECONDS (whole boot; default 60 + 15 per case), --quiet-ms N (how long
# the guest waits for stragglers after the last packet, default 300), --cpus N (guest CPUs,
# one worker each; default 1, or KPEER_CPUS from the environment: more only pays on a host
# with idle cores, see README.md).
# Builds the guest first if needed (build.sh). Needs root (apt-get on first use).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$ROOT/.tools/kernel-peer"

die() { echo "kernel-peer: $*" >&2; exit 1; }
usage() { sed -n '2,16s/^# \{0,1\}//p' "$0" >&2; exit "${1:-2}"; }

CONFIG="" MODE="" IN="" OUTPCAP="" SETUP="" KEEP="" BATCH="" TIMEOUT="" QUIET_MS=300
CPUS="${KPEER_CPUS:-}"
while (($#)); do
    case "$1" in
    --config) CONFIG="$2"; shift 2 ;;
    --encrypt) MODE=encrypt; shift ;;
    --decrypt) MODE=decrypt; shift ;;
    --in) IN="$2"; shift 2 ;;
    --out) OUTPCAP="$2"; shift 2 ;;
    --setup) SETUP="$2"; shift 2 ;;
    --keep) KEEP="$2"; shift 2 ;;
    --batch) BATCH="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    --quiet-ms) QUIET_MS="$2"; shift 2 ;;
    --cpus) CPUS="$2"; shift 2 ;;
    -h | --help) usage 0 ;;
    *) echo "kernel-peer: unknown argument $1" >&2; usage ;;
    esac
done

"$HERE/build.sh" >&2 || die "building the guest failed"

SINGLE=0
if [[ -z "$BATCH" ]]; then
    [[ -n "$CONFIG" && -n "$MODE" && -n "$IN" && -n "$OUTPCAP" ]] || usage
    [[ -f "$CONFIG" ]] || die "$CONFIG: no such file"
    [[ -f "$IN" ]] || die "$IN: no such file"
    SINGLE=1
    if [[ -n "$KEEP" ]]; then
        BATCH="$KEEP"
        mkdir -p "$BATCH"
    else
        BATCH="$(mktemp -d /tmp/kernel-peer.XXXXXX)"
        trap 'rm -rf "$BATCH"' EXIT
    fi
    mkdir -p "$BATCH/case"
    cp "$CONFIG" "$BATCH/case/config"
    cp "$IN" "$BATCH/case/in.pcap"
    echo "$MODE" > "$BATCH/case/mode"
    [[ -z "$SETUP" ]] || cp "$SETUP" "$BATCH/case/setup.sh"
fi
[[ -d "$BATCH" ]] || die "$BATCH: not a directory"
BATCH="$(cd "$BATCH" && pwd)"

cases=()
for d in "$BATCH"/*/; do
    [[ -f "$d/mode" ]] && cases+=("$(basename "$d")")
done
((${#cases[@]} > 0)) || die "$BATCH: no case directory (one with a mode file)"
TIMEOUT="${TIMEOUT:-$((60 + 15 * ${#cases[@]}))}"
CPUS="${CPUS:-1}"
# No more workers than cases.
((CPUS <= ${#cases[@]})) || CPUS=${#cases[@]}

STATE="$BATCH/.kpeer"
rm -rf "$STATE"
mkdir -p "$STATE"
for c in "${cases[@]}"; do rm -f "$BATCH/$c/status"; done

# One boot, bounded: qemu runs in the background and is killed by its pid on expiry.
# Multi-threaded TCG: one host thread per guest CPU.
qemu-system-x86_64 -accel tcg,thread=multi -m 512 -smp "$CPUS" -display none -no-reboot -nic none \
    -monitor none -parallel none -serial "file:$STATE/console.log" \
    -kernel "$OUT/vmlinuz" -initrd "$OUT/initramfs.cpio.gz" \
    -append "console=ttyS0 panic=-1 quiet kpeer.quiet_ms=$QUIET_MS kpeer.max_ms=$((TIMEOUT * 1000)) kpeer.workers=$CPUS" \
    -virtfs "local,path=$BATCH,mount_tag=kpeer,security_model=none,id=kpeer" \
    > "$STATE/qemu.log" 2>&1 &
QPID=$!
kill_qemu() {
    kill "$QPID" 2> /dev/null || return 0
    for _ in 1 2 3 4 5 6; do
        kill -0 "$QPID" 2> /dev/null || return 0
        sleep 0.5
    done
    kill -9 "$QPID" 2> /dev/null || true
}
trap 'kill_qemu; [[ $SINGLE == 1 && -z "$KEEP" ]] && rm -rf "$BATCH"' EXIT
trap 'exit 130' INT TERM

START=$SECONDS
while kill -0 "$QPID" 2> /dev/null; do
    if ((SECONDS - START >= TIMEOUT)); then
        echo "kernel-peer: guest still running after ${TIMEOUT}s: killing qemu (pid $QPID)" >&2
        kill_qemu
        break
    fi
    sleep 0.2
done
wait "$QPID" 2> /dev/null || true
ELAPSED=$((SECONDS - START))

if [[ ! -f "$STATE/done" || -f "$STATE/fatal" ]]; then
    echo "kernel-peer: the guest did not finish (${ELAPSED}s). Console:" >&2
    tail -n 40 "$STATE/console.log" >&2 2> /dev/null || true
    cat "$STATE/qemu.log" >&2 2> /dev/null || true
    [[ -f "$STATE/fatal" ]] && echo "kernel-peer: guest: $(cat "$STATE/fatal")" >&2
    exit 1
fi

rc=0
for c in "${cases[@]}"; do
    st="$(cat "$BATCH/$c/status" 2> /dev/null || echo "error: no status")"
    [[ "$st" == ok* ]] || rc=3
    ((SINGLE)) || echo "$c: $st"
done
echo "kernel-peer: ${#cases[@]} case(s) in ${ELAPSED}s, $CPUS guest CPU(s) ($(sed -n 's/^kernel //p' "$STATE/guest"))" >&2

if ((SINGLE)); then
    st="$(cat "$BATCH/case/status")"
    echo "kernel-peer: $st" >&2
    [[ "$st" == ok* ]] || { cat "$BATCH/case/config.log" >&2 2> /dev/null || true; exit 3; }
    cp "$BATCH/case/out.pcap" "$OUTPCAP"
fi
exit $rc
