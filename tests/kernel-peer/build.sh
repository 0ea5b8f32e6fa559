#!/usr/bin/env bash
# Builds the kernel-peer guest (see README.md) into <repo>/.tools/kernel-peer/:
#   vmlinuz              Debian's kernel (the linux-image-amd64 of the apt sources)
#   initramfs.cpio.gz    busybox, iproute2's ip, nft, the kpeer helper, the XFRM/crypto/TUN/
#                        9p/nftables modules with their dependencies, /init
#   stamp                hash of the inputs; when it matches, nothing is done (no apt, no network)
#
# Idempotent; safe to run concurrently (flock). As root on Debian: installs what is missing
# with apt-get (qemu-system-x86, gcc, libc6-dev, kmod), and fetches the kernel, busybox-static
# and nftables as .deb files that are unpacked here, not installed on the host.
#
# Usage: tests/kernel-peer/build.sh [--force]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$ROOT/.tools/kernel-peer"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

die() { echo "kernel-peer build: $*" >&2; exit 1; }
say() { echo "kernel-peer build: $*" >&2; }

mkdir -p "$OUT"
exec 9> "$OUT/.lock"
flock 9

# Modules to load in the guest (modprobe --show-depends adds what they need). Some are
# needed by name only, not by symbol, so they are listed: ctr and ghash-generic (gcm's
# "ctr(aes)" and "ghash"), seqiv and echainiv (ESP's IV generators) with the default RNG
# they seed from (drbg, jitterentropy_rng), authenc. The enc + auth and ChaCha20-Poly1305
# transforms by their crypto aliases (the module that provides each differs between kernel
# versions; a built-in one adds nothing): cbc, authencesn (ESN), rfc3686 (in ctr),
# cipher_null, sha384/sha512, rfc7539esp with chacha20 and poly1305.
MODULES="tun xfrm_user esp4 esp6 ah4 ah6 gcm ctr ghash-generic seqiv echainiv authenc drbg jitterentropy_rng
 crypto-cbc crypto-authencesn crypto-rfc3686 crypto-cipher_null crypto-sha384 crypto-sha512
 crypto-rfc7539esp crypto-chacha20 crypto-poly1305
 9p 9pnet_virtio virtio_pci nf_tables nft_log nfnetlink_log"

inputs_hash() {
    cat "$HERE/build.sh" "$HERE/guest/init" "$HERE/guest/nft.rules" "$HERE/helper/kpeer.c" |
        sha256sum | cut -d' ' -f1
}
HASH="$(inputs_hash)"
if [[ $FORCE == 0 && -f "$OUT/stamp" && -f "$OUT/vmlinuz" && -f "$OUT/initramfs.cpio.gz" ]] &&
    [[ "$(sed -n 's/^inputs //p' "$OUT/stamp")" == "$HASH" ]]; then
    say "up to date ($(sed -n 's/^kernel //p' "$OUT/stamp"))"
    exit 0
fi

[[ $(id -u) == 0 ]] || die "must run as root (installs packages with apt-get)"
command -v apt-get > /dev/null && command -v dpkg-deb > /dev/null ||
    die "apt-get and dpkg-deb are needed (Debian or a derivative)"
export DEBIAN_FRONTEND=noninteractive

APT_UPDATED=0
apt_update_once() {
    [[ $APT_UPDATED == 1 ]] && return 0
    say "apt-get update"
    apt-get update -qq > /dev/null || die "apt-get update failed"
    APT_UPDATED=1
}
apt_install() { # PKG...
    say "apt-get install $*"
    if ! apt-get install -y -qq --no-install-recommends "$@" > /dev/null 2>&1; then
        apt_update_once
        apt-get install -y -qq --no-install-recommends "$@" > /dev/null ||
            die "apt-get install $* failed"
    fi
}

# ---- host tools ---------------------------------------------------------------------------
missing=()
command -v qemu-system-x86_64 > /dev/null || missing+=(qemu-system-x86)
command -v gcc > /dev/null || missing+=(gcc)
gcc -print-file-name=libc.a 2> /dev/null | grep -q / || missing+=(libc6-dev)
[[ -f /usr/include/linux/if_tun.h ]] || missing+=(linux-libc-dev)
command -v depmod > /dev/null && command -v modprobe > /dev/null || missing+=(kmod)
command -v ip > /dev/null || missing+=(iproute2)
command -v flock > /dev/null || missing+=(util-linux)
((${#missing[@]} == 0)) || apt_install "${missing[@]}"
gcc -print-file-name=libc.a | grep -q / || die "no static libc (libc6-dev) for gcc -static"
export PATH="$PATH:/usr/sbin:/sbin"

# ---- the .deb files: kernel, busybox-static, nftables and the libraries the host lacks ----
kernel_pkg() {
    apt-cache depends linux-image-amd64 2> /dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
KPKG="${KPEER_KERNEL_PKG:-$(kernel_pkg)}"
if [[ -z "$KPKG" ]]; then
    apt_update_once
    KPKG="$(kernel_pkg)"
fi
[[ -n "$KPKG" ]] || die "apt knows no linux-image-amd64 (no Debian main in the apt sources?)"

closure() { # PKG: the package and its recursive Depends
    apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "$1" 2> /dev/null | grep -v '^ ' | grep -v '^<' | sort -u
}
host_has() { [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2> /dev/null)" == installed ]]; }

PKGS=("$KPKG" busybox-static)
for p in $(closure nftables); do
    [[ $p == nftables ]] || ! host_has "$p" && PKGS+=("$p")
done

DEBS="$OUT/debs"
mkdir -p "$DEBS"
declare -A CANDIDATE
load_candidates() {
    local p v
    CANDIDATE=()
    while read -r p v; do [[ "$v" == "(none)" ]] || CANDIDATE[$p]="$v"; done < <(
        apt-cache policy "${PKGS[@]}" 2> /dev/null |
            awk '/^[^ ].*:$/ { sub(/:$/, ""); p = $1 } $1 == "Candidate:" { print p, $2 }')
}
load_candidates
for p in "${PKGS[@]}"; do
    if [[ -z "${CANDIDATE[$p]:-}" ]]; then
        apt_update_once
        load_candidates
        [[ -n "${CANDIDATE[$p]:-}" ]] || die "apt has no candidate version of $p"
    fi
done
deb_file() { # PKG -> path of the candidate version's .deb in $DEBS, if downloaded
    local v="${CANDIDATE[$1]:-}"
    [[ -n "$v" ]] || return 1
    v="${v//:/%3a}"
    compgen -G "$DEBS/${1}_${v}_*.deb" | head -n 1
}
for p in "${PKGS[@]}"; do
    if ! deb_file "$p" > /dev/null; then
        say "apt-get download $p"
        if ! (cd "$DEBS" && apt-get download -qq "$p" > /dev/null 2>&1); then
            apt_update_once
            (cd "$DEBS" && apt-get download -qq "$p" > /dev/null) || die "apt-get download $p failed"
        fi
    fi
    deb_file "$p" > /dev/null || die "no .deb for $p after download"
done

# ---- unpack -----------------------------------------------------------------------------
# The unpacked packages are kept (the kernel's is 70 MB): unpacked again only when the set of
# .deb files changes.
PKGROOT="$OUT/pkgroot"
DEBLIST="$(for p in "${PKGS[@]}"; do basename "$(deb_file "$p")"; done | sort)"
if [[ ! -f "$PKGROOT/.debs" || "$(cat "$PKGROOT/.debs")" != "$DEBLIST" ]]; then
    rm -rf "$PKGROOT"
    mkdir -p "$PKGROOT"
    for p in "${PKGS[@]}"; do
        say "unpacking $(basename "$(deb_file "$p")")"
        dpkg-deb -x "$(deb_file "$p")" "$PKGROOT"
    done
    echo "$DEBLIST" > "$PKGROOT/.debs"
fi
WORK="$OUT/work"
rm -rf "$WORK"
STAGE="$WORK/initramfs"
mkdir -p "$STAGE"
MODROOT=""
for d in "$PKGROOT/lib/modules" "$PKGROOT/usr/lib/modules"; do
    [[ -d "$d" ]] && MODROOT="$d"
done
[[ -n "$MODROOT" ]] || die "$KPKG has no lib/modules"
KVER="$(ls "$MODROOT" | head -n 1)"
[[ -f "$PKGROOT/boot/vmlinuz-$KVER" ]] || die "$KPKG has no boot/vmlinuz-$KVER"

# ---- modules, in load order ---------------------------------------------------------------
# depmod/modprobe want <base>/lib/modules/<ver>: give them a base with that shape.
MODBASE="$WORK/modbase"
mkdir -p "$MODBASE/lib/modules"
ln -s "$MODROOT/$KVER" "$MODBASE/lib/modules/$KVER"
depmod -b "$MODBASE" "$KVER" || die "depmod failed"
: > "$WORK/modules.order"
for m in $MODULES; do
    modprobe -d "$MODBASE" -S "$KVER" --show-depends "$m" > "$WORK/show" 2>&1 ||
        die "module $m: $(cat "$WORK/show")"
    awk '$1 == "insmod" { print $2 }' "$WORK/show" >> "$WORK/modules.order"
done
mkdir -p "$STAGE/etc/kpeer"
awk '!seen[$0]++' "$WORK/modules.order" | while read -r ko; do
    rel="${ko#"$MODBASE"/}"
    mkdir -p "$STAGE/$(dirname "$rel")"
    cp "$ko" "$STAGE/$rel"
    echo "/$rel"
done > "$STAGE/etc/kpeer/modules"

# ---- programs -----------------------------------------------------------------------------
mkdir -p "$STAGE"/{bin,sbin,proc,sys,dev,share,tmp,run,lib/x86_64-linux-gnu,lib64}
BUSYBOX="$PKGROOT/bin/busybox"
[[ -x "$BUSYBOX" ]] || BUSYBOX="$PKGROOT/usr/bin/busybox"
[[ -x "$BUSYBOX" ]] || die "busybox-static has no busybox binary"
cp "$BUSYBOX" "$STAGE/bin/busybox"
ln -s busybox "$STAGE/bin/sh"

LIBPATH="$PKGROOT/usr/lib/x86_64-linux-gnu:$PKGROOT/lib/x86_64-linux-gnu"
copy_dynamic() { # BINARY DEST: the binary and the shared libraries ldd finds for it
    local bin="$1" dest="$2" line lib
    cp "$bin" "$STAGE/$dest"
    LD_LIBRARY_PATH="$LIBPATH" ldd "$bin" > "$WORK/ldd" || die "ldd $bin failed"
    if grep -q 'not found' "$WORK/ldd"; then
        die "$bin: libraries not found: $(grep 'not found' "$WORK/ldd" | tr -s ' \t' ' ')"
    fi
    while read -r line; do
        case "$line" in
        *'=> /'*) lib="${line#*=> }"; lib="${lib%% (*}"
            cp -L "$lib" "$STAGE/lib/x86_64-linux-gnu/$(basename "$lib")" ;;
        /*) lib="${line%% (*}"  # the program interpreter, at its absolute path
            mkdir -p "$STAGE/$(dirname "$lib")"
            cp -L "$lib" "$STAGE/$lib" ;;
        esac
    done < "$WORK/ldd"
}
IP_BIN="$(command -v ip)"
copy_dynamic "$IP_BIN" sbin/ip
[[ -x "$PKGROOT/usr/sbin/nft" ]] || die "nftables has no usr/sbin/nft"
copy_dynamic "$PKGROOT/usr/sbin/nft" sbin/nft

gcc -static -O2 -Wall -Wextra -Werror -o "$STAGE/bin/kpeer" "$HERE/helper/kpeer.c" ||
    die "compiling helper/kpeer.c failed"

cp "$HERE/guest/init" "$STAGE/init"
chmod 755 "$STAGE/init"
cp "$HERE/guest/nft.rules" "$STAGE/etc/kpeer/nft.rules"

# ---- archive ------------------------------------------------------------------------------
(cd "$STAGE" && find . | sort | "$BUSYBOX" cpio -o -H newc 2> /dev/null) | gzip -1 > "$WORK/initramfs.cpio.gz"
mv "$WORK/initramfs.cpio.gz" "$OUT/initramfs.cpio.gz"
cp "$PKGROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
KVERSION="$(dpkg-deb -f "$(deb_file "$KPKG")" Version)"
rm -rf "$WORK"
{
    echo "inputs $HASH"
    echo "kernel $KPKG $KVERSION"
    echo "iproute2 $("$IP_BIN" -V 2>&1)"
} > "$OUT/stamp"
say "built $OUT/initramfs.cpio.gz ($(du -h "$OUT/initramfs.cpio.gz" | cut -f1)) for $KPKG $KVERSION"
