#!/usr/bin/env python3
"""A live IPsec gateway made of the interop peer (ipsec_peer.py: Scapy's scapy.layers.ipsec
where it does what Linux does, its own `cryptography` engine elsewhere, both cross-checked),
for the far end of xfrm-ebpf's gateway tests (tests/tests/gateway_scapy.rs):

    host-a -- gw-a (xfrm-user run) == wire == [this, in gw-b's namespace] -- host-b

It reads frames with packet sockets on its two interfaces:

* outside: ESP / AH / ESP-in-UDP for the `--sa-in` bundle's outermost SPI is decrypted and
  checked (ICV, and the layout Linux emits: padding, outer header, ...) and the inner packet
  goes out of the inside interface to `--inside-mac`;
* inside: an IP packet from `--protect-src` to `--protect-dst` is encrypted with the
  `--sa-out` bundle (sequence numbers from 1) and goes out of the outside interface to
  `--outside-mac` (the next hop on the wire).

The kernel of the namespace keeps its addresses (ARP/ND answer as usual) but must not
forward (ip_forward 0): nothing reaches host-b except what this decrypted. Raw sockets for
ESP and AH and a UDP socket on the NAT-T port keep the kernel from answering our traffic with
ICMP unreachables (it has no ESP of its own). No PMTU discovery: the test gives the far LAN an
MTU that fits.

On SIGTERM/SIGINT it writes a JSON summary to `--report` and exits 0:
  {"decrypted": n, "encrypted": n, "errors": n, "first_errors": [...], "ignored": n}
Every packet the peer finds wrong (ICV, layout not as Linux makes it) counts as an error and is
not forwarded.
"""

import argparse
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ipsec_peer as peer  # noqa: E402

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
IPPROTO_UDP = 17


def mac_bytes(s):
    return bytes(int(x, 16) for x in s.split(":"))


def if_mac(name):
    with open(f"/sys/class/net/{name}/address") as f:
        return mac_bytes(f.read().strip())


def packet_socket(ifname):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((ifname, ETH_P_ALL))
    return s


def silence_kernel(natt_ports):
    """Sockets that stop the kernel's ICMP unreachables for our traffic. They must be read:
    the kernel passes over a raw socket whose queue is full and answers with ICMP."""
    keep = []
    for fam in (socket.AF_INET, socket.AF_INET6):
        for proto in (50, 51):
            try:
                keep.append(socket.socket(fam, socket.SOCK_RAW, proto))
            except OSError:
                pass
        for port in natt_ports:
            u = socket.socket(fam, socket.SOCK_DGRAM)
            if fam == socket.AF_INET6:
                u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            u.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
            keep.append(u)
    for k in keep:
        k.setblocking(False)
    return keep


def unknown_protos():
    """Ip InUnknownProtos of this namespace: ESP/AH the kernel had no socket for."""
    with open("/proc/net/snmp") as f:
        lines = [l.split() for l in f if l.startswith("Ip:")]
    return int(lines[1][lines[0].index("InUnknownProtos")])


def ip_of_frame(frame):
    if len(frame) < 14:
        return None
    et = struct.unpack("!H", frame[12:14])[0]
    if et not in (0x0800, 0x86DD):
        return None
    pkt = frame[14:]
    n = peer.ip_total_len(pkt)
    if n is None or n > len(pkt):
        return None
    return pkt[:n]


def eth(dst, src, pkt):
    return dst + src + struct.pack("!H", 0x0800 if pkt[0] >> 4 == 4 else 0x86DD) + pkt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sa-in", required=True, help="bundle received (ipsec_peer.py SA JSON)")
    ap.add_argument("--sa-out", required=True, help="bundle sent")
    ap.add_argument("--outside", required=True)
    ap.add_argument("--inside", required=True)
    ap.add_argument("--outside-mac", required=True, help="next hop on the wire")
    ap.add_argument("--inside-mac", required=True, help="the protected host")
    ap.add_argument("--protect-src", required=True, help="prefix")
    ap.add_argument("--protect-dst", required=True, help="prefix")
    ap.add_argument("--report", required=True)
    a = ap.parse_args()

    sas_in = peer.load_sas(a.sa_in)
    sas_out = peer.load_sas(a.sa_out)
    spi_in = sas_in[-1].spi
    natt = sorted({sa.encap[2] for sa in sas_in if sa.encap})
    src_net = ipaddress.ip_network(a.protect_src)
    dst_net = ipaddress.ip_network(a.protect_dst)
    out_mac, in_mac = if_mac(a.outside), if_mac(a.inside)
    next_hop, host = mac_bytes(a.outside_mac), mac_bytes(a.inside_mac)
    sinks = silence_kernel(natt)
    so, si = packet_socket(a.outside), packet_socket(a.inside)
    seqs = [sa.seq for sa in sas_out]
    st = {"decrypted": 0, "encrypted": 0, "errors": 0, "first_errors": [], "ignored": 0}
    stop = []

    def on_signal(*_):
        stop.append(1)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def error(msg):
        st["errors"] += 1
        if len(st["first_errors"]) < 10:
            st["first_errors"].append(msg)

    def from_outside(pkt):
        first = peer.first_ipsec_spi(pkt, sas_in)
        if first is None or first[1] != spi_in:
            st["ignored"] += 1
            return
        try:
            inner, info = peer.decrypt_packet(sas_in, pkt, use_scapy=True)
        except Exception as e:  # PeerError or a packet too malformed to parse
            error(f"decrypt: {type(e).__name__}: {e}")
            return
        if info["errors"]:
            error("decrypt: " + "; ".join(info["errors"]))
            return
        if inner is None:
            return  # dummy packet (RFC 4303 2.6)
        st["decrypted"] += 1
        si.send(eth(host, in_mac, inner))

    def from_inside(pkt):
        try:
            s, d = peer.ip_addrs(pkt)
        except Exception:
            st["ignored"] += 1
            return
        if s not in src_net or d not in dst_net:
            st["ignored"] += 1
            return
        try:
            wire, info = peer.encrypt_packet(
                sas_out, pkt, list(seqs), lambda sa, seq64: os.urandom(sa.ivlen), use_scapy=True)
        except Exception as e:
            error(f"encrypt: {type(e).__name__}: {e}")
            return
        for i in range(len(seqs)):
            seqs[i] += 1
        if info["errors"]:
            error("encrypt: " + "; ".join(info["errors"]))
            return
        st["encrypted"] += 1
        so.send(eth(next_hop, out_mac, wire))

    # Tell the test we are listening.
    print("ready", flush=True)
    while not stop:
        try:
            r, _, _ = select.select([so, si] + sinks, [], [], 0.2)
        except InterruptedError:
            continue
        for s in r:
            if s is not so and s is not si:
                try:
                    while True:
                        s.recv(65536)  # the copy the packet socket also saw: discard
                except (BlockingIOError, InterruptedError):
                    pass
                continue
            try:
                frame, addr = s.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                continue
            if addr[2] == PACKET_OUTGOING:
                continue
            pkt = ip_of_frame(frame)
            if pkt is None:
                continue
            (from_outside if s is so else from_inside)(pkt)

    st["kernel_unknown_protos"] = unknown_protos()
    with open(a.report, "w") as f:
        json.dump(st, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
