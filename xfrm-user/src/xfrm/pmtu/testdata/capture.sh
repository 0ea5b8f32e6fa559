#!/bin/bash
# Captures what Linux itself does, for pmtu's known-answer tests. Run as root from this
# directory: it builds A --(mtu 1500)-- G --(mtu 1400)-- B in three namespaces made for the
# run (10.91.0.0/16, fd00:91::/32), makes G's kernel answer / fragment, and writes the
# packets (IP header first) as .bin files. Teardown on exit.
set -euo pipefail
S=pm$$; A=${S}a; G=${S}g; B=${S}b
cleanup() { for n in $A $G $B; do ip netns del $n 2>/dev/null || true; done; }
trap cleanup EXIT
ip netns add $A; ip netns add $G; ip netns add $B
ip link add ${S}ai netns $A type veth peer name ${S}gi netns $G
ip link add ${S}go netns $G mtu 1400 type veth peer name ${S}bo netns $B mtu 1400
ip -n $A addr add 10.91.1.1/24 dev ${S}ai; ip -n $A addr add fd00:91:1::1/64 dev ${S}ai nodad
ip -n $G addr add 10.91.1.254/24 dev ${S}gi; ip -n $G addr add fd00:91:1::fe/64 dev ${S}gi nodad
ip -n $G addr add 10.91.2.1/24 dev ${S}go; ip -n $G addr add fd00:91:2::1/64 dev ${S}go nodad
ip -n $B addr add 10.91.2.2/24 dev ${S}bo; ip -n $B addr add fd00:91:2::2/64 dev ${S}bo nodad
for l in "$A ${S}ai" "$G ${S}gi" "$G ${S}go" "$B ${S}bo"; do set -- $l; ip -n $1 link set $2 up; done
ip -n $A route add default via 10.91.1.254; ip -n $A -6 route add default via fd00:91:1::fe
ip -n $B route add default via 10.91.2.1; ip -n $B -6 route add default via fd00:91:2::1
ip netns exec $G sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
# Until neighbours resolve and link-local addresses finish DAD.
for i in $(seq 20); do
  ip netns exec $A ping -c1 -W1 10.91.2.2 >/dev/null && ip netns exec $A ping -6 -c1 -W1 fd00:91:2::2 >/dev/null && break
  sleep 0.5
done
ip netns exec $A tcpdump -i ${S}ai -U -w a.pcap 'icmp or icmp6 or udp' 2>/dev/null & P1=$!
ip netns exec $B tcpdump -i ${S}bo -U -w b.pcap 'udp or ip[6:2]!=0 or ip6[6]==44' 2>/dev/null & P2=$!
sleep 1
ip netns exec $A python3 - <<'PY'
import socket, struct
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
def v4(df, n, tos, ident):
    payload = bytes((i * 7 + 3) & 0xff for i in range(n - 28))
    udp = struct.pack('!HHHH', 1234, 9, 8 + len(payload), 0) + payload
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, tos, n, ident, 0x4000 if df else 0, 64, 17, 0,
                     socket.inet_aton('10.91.1.1'), socket.inet_aton('10.91.2.2'))
    ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.sendto(ip + udp, ('10.91.2.2', 0))
v4(True, 1450, 0xb9, 0x4242)
v4(False, 1450, 0x00, 0x4343)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, 23, 2)  # IPV6_MTU_DISCOVER = IPV6_PMTUDISC_DO
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0xb9)
s.sendto(bytes((i * 5 + 1) & 0xff for i in range(1402)), ('fd00:91:2::2', 9))
PY
# G's own 3000-byte IPv6 datagram over the 1400-byte link: ip6_fragment.
ip netns exec $G python3 -c "
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.sendto(bytes((i * 3 + 2) & 0xff for i in range(3000)), ('fd00:91:2::2', 9))"
sleep 1; kill $P1 $P2; wait $P1 $P2 2>/dev/null || true
python3 - <<'PY'
import struct
def packets(path):
    d = open(path, 'rb').read()
    off, out = 24, []
    while off < len(d):
        _, _, incl, _ = struct.unpack('<IIII', d[off:off + 16]); off += 16
        out.append(d[off + 14:off + incl]); off += incl  # drop the Ethernet header
    return out
a, b = packets('a.pcap'), packets('b.pcap')
def save(name, p): open(name, 'wb').write(p); print(name, len(p))
v4 = [p for p in a if p[0] >> 4 == 4]
save('v4_df_orig.bin', [p for p in v4 if p[9] == 17 and p[4:6] == b'\x42\x42'][0])
save('v4_frag_needed.bin', [p for p in v4 if p[9] == 1 and p[20] == 3][0])
save('v4_nodf_orig.bin', [p for p in v4 if p[9] == 17 and p[4:6] == b'\x43\x43'][0])
frags = [p for p in b if p[0] >> 4 == 4 and p[4:6] == b'\x43\x43']
for i, f in enumerate(frags): save('v4_nodf_frag%d.bin' % i, f)
v6 = [p for p in a if p[0] >> 4 == 6]
save('v6_orig.bin', [p for p in v6 if p[6] == 17][0])
save('v6_too_big.bin', [p for p in v6 if p[6] == 58 and p[40] == 2][0])
f6 = [p for p in b if p[0] >> 4 == 6 and p[6] == 44]
for i, f in enumerate(f6): save('v6_frag%d.bin' % i, f)
# The packet G fragmented, rebuilt from its fragments (next header from the fragment header).
hdr = bytearray(f6[0][:40]); hdr[6] = f6[0][40]
body = b''.join(f[48:] for f in sorted(f6, key=lambda f: struct.unpack('!H', f[42:44])[0] & 0xfff8))
struct.pack_into('!H', hdr, 4, len(body))
save('v6_frag_orig.bin', bytes(hdr) + body)
PY
rm -f a.pcap b.pcap
