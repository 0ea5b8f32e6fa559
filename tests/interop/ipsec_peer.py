#!/usr/bin/env python3
"""An independent IPsec peer over pcap files, for the interop tests of xfrm-ebpf.

    ipsec_peer.py decrypt --sa SA.json --in WIRE.pcap --out PLAIN.pcap [--report R.jsonl]
    ipsec_peer.py encrypt --sa SA.json --in PLAIN.pcap --out WIRE.pcap [--report R.jsonl]
    ipsec_peer.py batch JOBS.json      # many of the above in one process (Scapy loads slowly)
    ipsec_peer.py selftest             # this peer against itself, Scapy and fixed vectors

Linux (net/ipv4/esp4.c, ah4.c, net/ipv6/esp6.c, ah6.c, xfrm4/6 tunnel and transport modes) is
the reference for every byte on the wire. Two engines implement it:

* "scapy": scapy.layers.ipsec.SecurityAssociation (Scapy >= 2.6.1), used wherever it produces
  or accepts exactly what Linux does;
* "own": this file's code over raw bytes with `cryptography` (AES-GCM) and `hmac`, written from
  the RFCs and the kernel's layout, used where Scapy is wrong or lacks a feature. Each such
  place says why (search for "DEVIATION").

On decrypt both engines run when Scapy is applicable and must agree byte for byte; on encrypt
Scapy produces the packet when applicable, and the own engine, given the same IV, must produce
the same bytes (a cross-check of both).

SA description (JSON): {"sas": [SA, ...]} in the order the SAs are applied on output (the order
of `tmpl` in `ip xfrm policy`: the first is innermost), each SA:
    {"proto": "esp"|"ah", "spi": 4096, "mode": "transport"|"tunnel",
     "src": "192.0.2.1", "dst": "192.0.2.2",
     "aead": {"name": "rfc4106(gcm(aes))"|"rfc4543(gcm(aes))"|"rfc7539esp(chacha20,poly1305)",
              "key": "hex KEY||SALT", "icv_bits": 128},
     or for ESP with a cipher and HMAC (encrypt-then-MAC, RFC 4303 3.3.2):
     "enc": {"name": "cbc(aes)"|"rfc3686(ctr(aes))"|"cipher_null", "key": "hex"} with "auth",
     "auth": {"name": "hmac(sha256)"|"hmac(sha384)"|"hmac(sha512)"|"hmac(sha1)", "key": "hex",
              "trunc_bits": 128},
     "flags": ["esn", "align4", "noecn", "nopmtudisc", "decap-dscp", "af-unspec"],
     "extra_flags": ["dont-encap-dscp"],
     "encap": {"type": "espinudp"|"espinudp-nonike", "sport": 4500, "dport": 4500},
     "tfcpad": 0, "replay_window": 64, "outer_tos": null (encrypt: force the outer DS field),
     "seq": 1}        # first 64-bit sequence number sent / expected (ESN inference start)
The key is written as `ip xfrm` takes it (for AEAD: the AES key followed by the 4-byte salt).

Report (JSON lines, one object per packet): index, status ("ok", "passthrough", "dummy",
"error"), errors (list), layers (one object per SA removed: spi, seq, seq64, iv, icv_ok,
padlen, tfc_len, nh, engines, ...), outer (tunnel outer header fields) and the lengths.
Exit status 1 if any packet has an error (ICV, decryption, format not as Linux emits it).
"""

import argparse
import hashlib
import hmac
import ipaddress
import json
import os
import struct
import sys
import traceback

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

import logging

logging.getLogger("scapy").setLevel(logging.ERROR)
from scapy.config import conf  # noqa: E402

conf.verb = 0
from scapy.compat import raw  # noqa: E402
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers import ipsec as sipsec  # noqa: E402

IPPROTO_HOPOPTS = 0
IPPROTO_IPIP = 4
IPPROTO_UDP = 17
IPPROTO_IPV6 = 41
IPPROTO_ROUTING = 43
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
# Other numbers that also mean "raw IP" in pcap files (DLT_RAW on some systems, IPv4/IPv6 only).
RAW_LINKTYPES = (LINKTYPE_RAW, 12, 14, 228, 229)


class PeerError(Exception):
    """A packet that Linux would not have produced or accepted."""


# ----------------------------------------------------------------------------------------------
# pcap files (classic format; both byte orders, micro- and nanosecond variants)


def read_pcap(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        raise ValueError(f"{path}: not a pcap file (too short)")
    magic_le = struct.unpack("<I", data[:4])[0]
    if magic_le in (0xA1B2C3D4, 0xA1B23C4D):
        endian = "<"
    elif magic_le in (0xD4C3B2A1, 0x4D3CB2A1):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap file (magic {data[:4].hex()}); pcapng is not supported")
    magic, vmaj, vmin, tz, sigfigs, snaplen, linktype = struct.unpack(endian + "IHHiIII", data[:24])
    nanos = magic == 0xA1B23C4D
    recs = []
    off = 24
    while off + 16 <= len(data):
        ts_sec, ts_frac, incl, orig = struct.unpack(endian + "IIII", data[off:off + 16])
        off += 16
        if off + incl > len(data):
            raise ValueError(f"{path}: truncated record {len(recs)}")
        recs.append((ts_sec, ts_frac, orig, data[off:off + incl]))
        off += incl
    return {"linktype": linktype & 0xFFFF, "nanos": nanos, "snaplen": snaplen, "records": recs}


def write_pcap(path, linktype, records, nanos=False, snaplen=65535):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D if nanos else 0xA1B2C3D4, 2, 4, 0, 0,
                            max(snaplen, 65535), linktype))
        for ts_sec, ts_frac, _orig, pkt in records:
            f.write(struct.pack("<IIII", ts_sec, ts_frac, len(pkt), len(pkt)))
            f.write(pkt)


def split_link(linktype, frame):
    """Returns (link header bytes, IP packet bytes, trailer) or (frame, None, b"") if not IP."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return frame, None, b""
        l2 = 14
        ethertype = struct.unpack("!H", frame[12:14])[0]
        while ethertype in (0x8100, 0x88A8) and len(frame) >= l2 + 4:  # VLAN tags
            ethertype = struct.unpack("!H", frame[l2 + 2:l2 + 4])[0]
            l2 += 4
        if ethertype not in (0x0800, 0x86DD):
            return frame, None, b""
        link, pkt = frame[:l2], frame[l2:]
    elif linktype in RAW_LINKTYPES:
        link, pkt = b"", frame
    else:
        raise ValueError(f"unsupported link type {linktype}")
    n = ip_total_len(pkt)
    if n is None or n > len(pkt):
        return frame, None, b""
    return link, pkt[:n], pkt[n:]


def join_link(linktype, link, pkt):
    if linktype == LINKTYPE_ETHERNET:
        ethertype = 0x0800 if pkt[0] >> 4 == 4 else 0x86DD
        return link[:-2] + struct.pack("!H", ethertype) + pkt
    return pkt


# ----------------------------------------------------------------------------------------------
# IP helpers


def csum16(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ip_total_len(pkt):
    if len(pkt) < 1:
        return None
    v = pkt[0] >> 4
    if v == 4 and len(pkt) >= 20:
        return struct.unpack("!H", pkt[2:4])[0]
    if v == 6 and len(pkt) >= 40:
        return 40 + struct.unpack("!H", pkt[4:6])[0]
    return None


def fix_ip_lengths(pkt):
    """Sets the IPv4 total length and header checksum, or the IPv6 payload length."""
    pkt = bytearray(pkt)
    if pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 0xF) * 4
        pkt[2:4] = struct.pack("!H", len(pkt))
        pkt[10:12] = b"\0\0"
        pkt[10:12] = struct.pack("!H", csum16(bytes(pkt[:ihl])))
    else:
        pkt[4:6] = struct.pack("!H", len(pkt) - 40)
    return bytes(pkt)


def ip_addrs(pkt):
    if pkt[0] >> 4 == 4:
        return ipaddress.ip_address(pkt[12:16]), ipaddress.ip_address(pkt[16:20])
    return ipaddress.ip_address(pkt[8:24]), ipaddress.ip_address(pkt[24:40])


def l4_pseudo(pkt, proto, length):
    src, dst = ip_addrs(pkt)
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, proto, length)
    return src.packed + dst.packed + struct.pack("!IxxxB", length, proto)


def split_transport(pkt, for_output):
    """Where ESP/AH goes in transport mode.

    Returns (header bytes, offset of the next-header byte to rewrite, next header, payload).
    IPv4: after the header and its options. IPv6, like the kernel's ip6_find_1stfragopt (and
    Scapy's split_for_transport): after hop-by-hop, routing, and destination options that come
    before a routing header. On input (for_output=False) every extension header is skipped.
    """
    if pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 0xF) * 4
        return pkt[:ihl], 9, pkt[9], pkt[ihl:]
    off, nh_off, nh = 40, 6, pkt[6]
    found_rt = False
    while nh in (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS):
        if nh == IPPROTO_ROUTING:
            found_rt = True
        elif nh == IPPROTO_DSTOPTS and found_rt and for_output:
            break
        if off + 2 > len(pkt):
            raise PeerError("truncated IPv6 extension header")
        nh_off, nh = off, pkt[off]
        off += (pkt[off + 1] + 1) * 8
    return pkt[:off], nh_off, nh, pkt[off:]


def ipv4_clear_mutable_options(hdr):
    """ip_clear_mutable_options (net/ipv4/ah4.c): zero every option but the immutable ones.
    Returns (options zeroed, final destination for source routes or None)."""
    opts = bytearray(hdr[20:])
    daddr = None
    i = 0
    while i < len(opts):
        t = opts[i]
        if t == 0:  # IPOPT_END
            break
        if t == 1:  # IPOPT_NOOP
            i += 1
            continue
        if i + 1 >= len(opts):
            raise PeerError("bad IPv4 option")
        optlen = opts[i + 1]
        if optlen < 2 or optlen > len(opts) - i:
            raise PeerError("bad IPv4 option length")
        if t in (130, 0x85, 134, 148, 0x80 | 21):  # SEC, extended SEC, CIPSO, RA, RFC 1770
            pass
        else:
            if t in (131, 137):  # LSRR, SSRR: the ICV sees the final destination
                if optlen < 6:
                    raise PeerError("bad source route option")
                daddr = bytes(opts[i + optlen - 4:i + optlen])
            opts[i:i + optlen] = b"\0" * optlen
        i += optlen
    return bytes(opts), daddr


def ah_zero_mutable(pkt, ah_off, icv_len):
    """The packet as AH's ICV sees it (RFC 4302 3.3.3.1, ah_output/ah6_output): mutable IP
    fields zeroed, mutable options cleared, the ICV field zeroed."""
    p = bytearray(pkt)
    if p[0] >> 4 == 4:
        ihl = (p[0] & 0xF) * 4
        p[1] = 0  # TOS (DSCP, ECN)
        p[6:8] = b"\0\0"  # flags, fragment offset
        p[8] = 0  # TTL
        p[10:12] = b"\0\0"  # checksum
        if ihl > 20:
            opts, daddr = ipv4_clear_mutable_options(bytes(p[:ihl]))
            p[20:ihl] = opts
            if daddr is not None:
                p[16:20] = daddr
    else:
        p[0:4] = b"\x60\0\0\0"  # traffic class and flow label
        p[7] = 0  # hop limit
        off, nh = 40, p[6]
        while off < ah_off:
            if nh in (IPPROTO_HOPOPTS, IPPROTO_DSTOPTS):
                # Options whose type has the "may change en route" bit: data zeroed
                # (zero_out_mutable_opts in ah6.c).
                end = off + (p[off + 1] + 1) * 8
                i = off + 2
                while i < end:
                    t = p[i]
                    if t == 0:  # Pad1
                        i += 1
                        continue
                    olen = p[i + 1]
                    if t & 0x20:
                        p[i + 2:i + 2 + olen] = b"\0" * olen
                    i += 2 + olen
            elif nh == IPPROTO_ROUTING:
                raise PeerError("AH with an IPv6 routing header is not handled by this peer")
            nh = p[off]
            off += (p[off + 1] + 1) * 8
    p[ah_off + 12:ah_off + 12 + icv_len] = b"\0" * icv_len
    return bytes(p)


# ----------------------------------------------------------------------------------------------
# SA description


class SA:
    def __init__(self, d):
        self.d = d
        self.proto = d["proto"]
        if self.proto not in ("esp", "ah"):
            raise ValueError(f"proto {self.proto!r}")
        self.spi = int(d["spi"], 0) if isinstance(d["spi"], str) else int(d["spi"])
        self.mode = d.get("mode", "transport")
        if self.mode not in ("transport", "tunnel"):
            raise ValueError(f"mode {self.mode!r}")
        self.src = ipaddress.ip_address(d["src"])
        self.dst = ipaddress.ip_address(d["dst"])
        flags = set(d.get("flags", []))
        xflags = set(d.get("extra_flags", []))
        self.esn = "esn" in flags
        self.align4 = "align4" in flags
        self.noecn = "noecn" in flags
        self.nopmtudisc = "nopmtudisc" in flags
        self.decap_dscp = "decap-dscp" in flags
        self.dont_encap_dscp = "dont-encap-dscp" in xflags
        self.tfcpad = int(d.get("tfcpad", 0))
        self.replay_window = int(d.get("replay_window", 64)) or 64
        self.seq = int(d.get("seq", 1))
        self.outer_tos = d.get("outer_tos")
        enc = d.get("encap")
        self.encap = None
        if enc:
            if enc["type"] not in ("espinudp", "espinudp-nonike"):
                raise ValueError(f"encap type {enc['type']!r}")
            self.encap = (enc["type"], int(enc["sport"]), int(enc["dport"]))
        self.aead = None
        self.auth = None
        self.enc = None
        # esp_init_state: the IV after the ESP header, and ALIGN(cipher block size, 4).
        self.ivlen, self.blksize = 8, 4
        if self.proto == "esp" and "aead" in d:
            a = d["aead"]
            name = a["name"]
            keysalt = bytes.fromhex(a["key"].removeprefix("0x"))
            if name == "rfc4106(gcm(aes))":
                self.aead = "gcm"
            elif name == "rfc4543(gcm(aes))":
                self.aead = "gmac"
            elif name == "rfc7539esp(chacha20,poly1305)":
                self.aead = "chacha"
            else:
                raise ValueError(f"aead {name!r}")
            if len(keysalt) not in ((36,) if self.aead == "chacha" else (20, 36)):
                raise ValueError("AEAD key must be the cipher key plus 4 bytes of salt")
            self.key, self.salt = keysalt[:-4], keysalt[-4:]
            self.keysalt = keysalt
            self.icv_len = int(a.get("icv_bits", 128)) // 8
            if self.icv_len not in (8, 12, 16) or (self.aead != "gcm" and self.icv_len != 16):
                raise ValueError(f"ICV of {self.icv_len * 8} bits")
        else:
            a = d["auth"]
            name = a["name"]
            hashes = {"hmac(sha256)": hashlib.sha256, "hmac(sha1)": hashlib.sha1,
                      "hmac(sha384)": hashlib.sha384, "hmac(sha512)": hashlib.sha512}
            if name not in hashes:
                raise ValueError(f"auth {name!r}")
            self.hash = hashes[name]
            self.auth = name
            self.key = bytes.fromhex(a["key"].removeprefix("0x"))
            self.icv_len = int(a["trunc_bits"]) // 8
            if self.proto == "esp":
                e = d["enc"]
                self.enc = {"cbc(aes)": "cbc", "rfc3686(ctr(aes))": "ctr", "cipher_null": "null",
                            "ecb(cipher_null)": "null"}.get(e["name"])
                if self.enc is None:
                    raise ValueError(f"enc {e['name']!r}")
                self.enc_key = bytes.fromhex(e["key"].removeprefix("0x"))
                want = {"cbc": (16, 24, 32), "ctr": (20, 28, 36), "null": (0,)}[self.enc]
                if len(self.enc_key) not in want:
                    raise ValueError(f"{e['name']} key of {len(self.enc_key)} bytes")
                self.ivlen = {"cbc": 16, "ctr": 8, "null": 0}[self.enc]
                self.blksize = 16 if self.enc == "cbc" else 4
        # ESN inference state (RFC 4303 Appendix A2): the highest sequence number seen.
        self.top = self.seq - 1

    def label(self):
        return f"{self.proto} spi 0x{self.spi:08x} {self.mode}"

    def next_layer_proto(self):
        if self.proto == "esp":
            return IPPROTO_UDP if self.encap else IPPROTO_ESP
        return IPPROTO_AH

    def infer_seq64(self, seq_lo):
        """RFC 4303 Appendix A2.2: the high half of an ESN from the low half and the window."""
        if not self.esn:
            return seq_lo
        w = self.replay_window
        tl, th = self.top & 0xFFFFFFFF, self.top >> 32
        if tl >= w - 1:
            hi = th if seq_lo >= tl - w + 1 else th + 1
        else:
            hi = th - 1 if seq_lo >= (tl - w + 1) & 0xFFFFFFFF else th
        if hi < 0:
            hi = 0
        return (hi << 32) | seq_lo

    def accept_seq64(self, s):
        if s > self.top:
            self.top = s


def load_sas(path_or_obj):
    d = path_or_obj
    if isinstance(d, str):
        with open(d) as f:
            d = json.load(f)
    sas = [SA(x) for x in d["sas"]]
    if not sas:
        raise ValueError("no SA")
    return sas


# ----------------------------------------------------------------------------------------------
# Tunnel mode outer header (xfrm4_mode_tunnel_output / xfrm6 tunnel, RFC 6040)


def inner_dsfield(inner):
    if inner[0] >> 4 == 4:
        return inner[1]
    return ((inner[0] & 0xF) << 4) | (inner[1] >> 4)


def ecn_encapsulate(outer, inner):
    """INET_ECN_encapsulate: the inner ECN is copied, except CE which becomes ECT(0)."""
    outer &= ~3
    return outer | (2 if inner & 3 == 3 else inner & 3)


def expected_outer_tos(sa, inner):
    ds = inner_dsfield(inner)
    tos = 0 if sa.dont_encap_dscp else ds
    tos = ecn_encapsulate(tos, ds)
    if sa.noecn:
        tos &= ~3
    return tos


def expected_outer_df(sa, inner):
    if sa.nopmtudisc:
        return False
    if inner[0] >> 4 == 4:
        return bool(inner[6] & 0x40)
    # xfrm6_extract_header: frag_off = IP_DF for an IPv6 inner packet. The small_ipv6 rule of
    # xfrm4_tunnel_encap_add never fires (skb->protocol is already IPv4 there): Linux, run as
    # the kernel peer, sets DF on small IPv6 inner packets too.
    return True


_ip_id = [0x1000]


def build_outer(sa, inner, proto):
    """A tunnel-mode outer header as Linux builds it; lengths and checksum are fixed later.
    With "outer_tos" in the SA description (encrypt only) the outer DS field is that value
    instead, to exercise the receiver's ECN/DSCP decapsulation."""
    tos = sa.outer_tos if sa.outer_tos is not None else expected_outer_tos(sa, inner)
    if sa.dst.version == 4:
        _ip_id[0] = (_ip_id[0] + 1) & 0xFFFF
        df = 0x4000 if expected_outer_df(sa, inner) else 0
        return struct.pack("!BBHHHBBH4s4s", 0x45, tos, 0, _ip_id[0], df, 64, proto, 0,
                           sa.src.packed, sa.dst.packed)
    return struct.pack("!IHBB16s16s", (6 << 28) | (tos << 20), 0, proto, 64,
                       sa.src.packed, sa.dst.packed)


# ----------------------------------------------------------------------------------------------
# Own engine: ESP (RFC 4303, 4106, 4543, 3948) and AH (RFC 4302) over bytes, Linux's layout


def esp_aad(sa, seq64):
    if sa.esn:
        # RFC 4106 5 / RFC 4543 3.3.2: SPI, then the 64-bit ESN high half first (Linux moves
        # the SPI 4 bytes back and puts seq_hi between it and seq_lo: esp_output_set_esn).
        return struct.pack("!III", sa.spi, seq64 >> 32, seq64 & 0xFFFFFFFF)
    return struct.pack("!II", sa.spi, seq64 & 0xFFFFFFFF)


def gcm_seal(sa, iv, aad, plaintext):
    # DEVIATION from Scapy: Cipher/GCM with an explicit tag length so that ICV 8 and 12 work
    # (Scapy's AESGCM path always emits and expects a 16-byte tag).
    enc = Cipher(algorithms.AES(sa.key), modes.GCM(sa.salt + iv)).encryptor()
    if sa.aead == "gmac":
        # RFC 4543 3.3: everything is authenticated (SPI, seq, IV, payload), nothing encrypted.
        enc.authenticate_additional_data(aad + iv + plaintext)
        enc.finalize()
        return plaintext + enc.tag[:sa.icv_len]
    enc.authenticate_additional_data(aad)
    ct = enc.update(plaintext) + enc.finalize()
    return ct + enc.tag[:sa.icv_len]


def gcm_open(sa, iv, aad, ct, icv):
    dec = Cipher(algorithms.AES(sa.key),
                 modes.GCM(sa.salt + iv, icv, min_tag_length=min(len(icv), 16))).decryptor()
    try:
        if sa.aead == "gmac":
            dec.authenticate_additional_data(aad + iv + ct)
            dec.finalize()
            return ct
        dec.authenticate_additional_data(aad)
        return dec.update(ct) + dec.finalize()
    except InvalidTag:
        raise PeerError("ESP ICV mismatch (AES-%s, %d-byte ICV)" % ("GMAC" if sa.aead == "gmac" else "GCM", len(icv)))


def chacha_seal(sa, iv, aad, plaintext):
    # RFC 7634 2: nonce = salt || IV, AAD as for GCM, 16-byte tag.
    return ChaCha20Poly1305(sa.key).encrypt(sa.salt + iv, plaintext, aad)


def chacha_open(sa, iv, aad, ct, icv):
    try:
        return ChaCha20Poly1305(sa.key).decrypt(sa.salt + iv, ct + icv, aad)
    except InvalidTag:
        raise PeerError("ESP ICV mismatch (ChaCha20-Poly1305)")


def enc_cipher(sa, iv):
    if sa.enc == "cbc":
        return Cipher(algorithms.AES(sa.enc_key), modes.CBC(iv))
    # RFC 3686 4: counter block = nonce || IV || 32-bit counter from 1.
    return Cipher(algorithms.AES(sa.enc_key[:-4]), modes.CTR(sa.enc_key[-4:] + iv + b"\0\0\0\1"))


def enc_auth_icv(sa, esp_hdr_iv_ct, seq64):
    # RFC 4303 2.2.1 / 3.3.2: the ICV covers SPI, seq, IV and ciphertext; with ESN the high
    # half is appended for the computation only (the kernel's authencesn).
    data = esp_hdr_iv_ct + (struct.pack("!I", seq64 >> 32) if sa.esn else b"")
    return hmac.new(sa.key, data, sa.hash).digest()[:sa.icv_len]


def enc_auth_seal(sa, hdr, iv, plaintext, seq64):
    ct = plaintext
    if sa.enc != "null":
        e = enc_cipher(sa, iv).encryptor()
        ct = e.update(plaintext) + e.finalize()
    return ct + enc_auth_icv(sa, hdr + iv + ct, seq64)


def enc_auth_open(sa, hdr, iv, ct, icv, seq64):
    if not hmac.compare_digest(enc_auth_icv(sa, hdr + iv + ct, seq64), icv):
        raise PeerError(f"ESP ICV mismatch ({sa.enc} + {sa.auth}, {len(icv)}-byte ICV)")
    if sa.enc == "null":
        return ct
    if len(ct) % (16 if sa.enc == "cbc" else 1):
        raise PeerError(f"CBC ciphertext of {len(ct)} bytes is no whole number of blocks")
    d = enc_cipher(sa, iv).decryptor()
    return d.update(ct) + d.finalize()


def esp_seal(sa, hdr, iv, seq64, plaintext):
    if sa.enc:
        return enc_auth_seal(sa, hdr, iv, plaintext, seq64)
    if sa.aead == "chacha":
        return chacha_seal(sa, iv, esp_aad(sa, seq64), plaintext)
    return gcm_seal(sa, iv, esp_aad(sa, seq64), plaintext)


def esp_open(sa, hdr, iv, seq64, ct, icv):
    if sa.enc:
        return enc_auth_open(sa, hdr, iv, ct, icv, seq64)
    if sa.aead == "chacha":
        return chacha_open(sa, iv, esp_aad(sa, seq64), ct, icv)
    return gcm_open(sa, iv, esp_aad(sa, seq64), ct, icv)


def esp_trailer_plaintext(payload, nh, tfclen, blksize=4):
    # esp_output: clen = ALIGN(len + 2 + tfclen, blksize), blksize = ALIGN(cipher block, 4):
    # 4 for the stream modes, 16 for CBC; padding bytes 1, 2, 3, ... (RFC 4303 2.4).
    padlen = (-(len(payload) + tfclen + 2)) % blksize
    return payload + b"\0" * tfclen + bytes(range(1, padlen + 1)) + bytes([padlen, nh])


def natt_header(sa, ip_hdr, esp_bytes):
    kind, sport, dport = sa.encap
    marker = b"\0" * 8 if kind == "espinudp-nonike" else b""
    length = 8 + len(marker) + len(esp_bytes)
    udp = struct.pack("!HHHH", sport, dport, length, 0) + marker
    if ip_hdr[0] >> 4 == 6:
        # esp6.c esp_output_encap_csum: UDP over IPv6 needs a real checksum (RFC 8200).
        c = csum16(l4_pseudo(ip_hdr, IPPROTO_UDP, length) + udp + esp_bytes) or 0xFFFF
        udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    return udp


def own_esp_output(sa, pkt, seq64, iv):
    if sa.mode == "tunnel":
        inner_proto = IPPROTO_IPIP if pkt[0] >> 4 == 4 else IPPROTO_IPV6
        hdr = build_outer(sa, pkt, sa.next_layer_proto())
        payload = pkt
        tfclen = max(0, sa.tfcpad - len(pkt)) if sa.tfcpad else 0
    else:
        hdr, nh_off, inner_proto, payload = split_transport(pkt, True)
        hdr = bytearray(hdr)
        hdr[nh_off] = sa.next_layer_proto()
        hdr = bytes(hdr)
        tfclen = 0
    pt = esp_trailer_plaintext(payload, inner_proto, tfclen, sa.blksize)
    esph = struct.pack("!II", sa.spi, seq64 & 0xFFFFFFFF)
    esp = esph + iv + esp_seal(sa, esph, iv, seq64, pt)
    if sa.encap:
        total_len_hdr = fix_ip_lengths(hdr + b"\0" * (8 + len(esp)))[:len(hdr)]
        esp = natt_header(sa, total_len_hdr, esp) + esp
    return fix_ip_lengths(hdr + esp)


def ah_len_for(sa, family):
    base = 12 + sa.icv_len
    if family == 4 and sa.align4:
        return (base + 3) & ~3
    return (base + 7) & ~7  # XFRM_ALIGN8, always for IPv6 (ah6.c)


def own_ah_output(sa, pkt, seq64):
    if sa.mode == "tunnel":
        nexthdr = IPPROTO_IPIP if pkt[0] >> 4 == 4 else IPPROTO_IPV6
        hdr = build_outer(sa, pkt, IPPROTO_AH)
        payload = pkt
    else:
        hdr, nh_off, nexthdr, payload = split_transport(pkt, True)
        hdr = bytearray(hdr)
        hdr[nh_off] = IPPROTO_AH
        hdr = bytes(hdr)
    family = hdr[0] >> 4
    ah_len = ah_len_for(sa, family)
    ah = struct.pack("!BBHII", nexthdr, ah_len // 4 - 2, 0, sa.spi, seq64 & 0xFFFFFFFF) + b"\0" * (ah_len - 12)
    out = fix_ip_lengths(hdr + ah + payload)
    icv = ah_icv(sa, out, len(hdr), seq64)
    return out[:len(hdr) + 12] + icv + out[len(hdr) + 12 + sa.icv_len:]


def ah_icv(sa, pkt, ah_off, seq64):
    msg = ah_zero_mutable(pkt, ah_off, sa.icv_len)
    if sa.esn:
        msg += struct.pack("!I", seq64 >> 32)  # RFC 4302 2.5.1: seq_hi after the packet
    return hmac.new(sa.key, msg, sa.hash).digest()[:sa.icv_len]


def find_ipsec_header(pkt):
    """(offset of the IPsec-relevant header, its protocol, offset of the next-header byte)."""
    hdr, nh_off, nh, _ = split_transport(pkt, False)
    return len(hdr), nh, nh_off


def own_input(sa, pkt, info):
    """Removes one SA's layer (esp_input/ah_input + the mode's input). Returns the packet."""
    off, nh, nh_off = find_ipsec_header(pkt)
    if sa.proto == "esp":
        return own_esp_input(sa, pkt, off, nh, nh_off, info)
    return own_ah_input(sa, pkt, off, nh, nh_off, info)


def check_outer(sa, pkt, hdr_len, inner, info):
    """Tunnel mode: the outer header must be what xfrm4/6 tunnel output makes of `inner`."""
    errs = info["errors"]
    src, dst = ip_addrs(pkt)
    o = {"src": str(src), "dst": str(dst)}
    if (src, dst) != (sa.src, sa.dst):
        errs.append(f"outer addresses {src} -> {dst}, SA says {sa.src} -> {sa.dst}")
    want_tos = expected_outer_tos(sa, inner)
    if pkt[0] >> 4 == 4:
        tos, ident, frag, ttl = pkt[1], struct.unpack("!H", pkt[4:6])[0], struct.unpack("!H", pkt[6:8])[0], pkt[8]
        o.update(tos=tos, id=ident, df=bool(frag & 0x4000), ttl=ttl)
        if hdr_len != 20:
            errs.append(f"outer IPv4 header of {hdr_len} bytes, Linux writes ihl 5")
        if csum16(pkt[:hdr_len]) != 0:
            errs.append("outer IPv4 header checksum is wrong")
        if frag & 0xBFFF:
            errs.append(f"outer IPv4 MF/fragment offset set: 0x{frag:04x}")
        if bool(frag & 0x4000) != expected_outer_df(sa, inner):
            errs.append(f"outer DF={int(bool(frag & 0x4000))}, expected {int(expected_outer_df(sa, inner))}")
    else:
        tos = ((pkt[0] & 0xF) << 4) | (pkt[1] >> 4)
        o.update(tos=tos, flowlabel=struct.unpack("!I", pkt[0:4])[0] & 0xFFFFF, ttl=pkt[7])
    if tos != want_tos:
        errs.append(f"outer DS field 0x{tos:02x}, expected 0x{want_tos:02x} "
                    f"(inner 0x{inner_dsfield(inner):02x}, dont-encap-dscp={sa.dont_encap_dscp}, noecn={sa.noecn})")
    if o["ttl"] == 0:
        errs.append("outer TTL/hop limit 0")
    info["outer"] = o


def own_esp_input(sa, pkt, off, nh, nh_off, info):
    errs = info["errors"]
    esp_off = off
    if sa.encap:
        if nh != IPPROTO_UDP:
            raise PeerError(f"expected UDP-encapsulated ESP, found protocol {nh}")
        kind, sport, dport = sa.encap
        if len(pkt) < off + 8:
            raise PeerError("truncated UDP header")
        usport, udport, ulen, ucsum = struct.unpack("!HHHH", pkt[off:off + 8])
        info["udp"] = {"sport": usport, "dport": udport, "csum": ucsum}
        if (usport, udport) != (sport, dport):
            errs.append(f"UDP ports {usport}->{udport}, SA encap says {sport}->{dport}")
        if ulen != len(pkt) - off:
            errs.append(f"UDP length {ulen}, {len(pkt) - off} bytes present")
        if pkt[0] >> 4 == 4:
            if ucsum != 0:
                errs.append(f"UDP checksum 0x{ucsum:04x} over IPv4, Linux sends 0 (RFC 3948 2.1)")
        elif ucsum == 0 or csum16(l4_pseudo(pkt, IPPROTO_UDP, len(pkt) - off) + pkt[off:]) != 0:
            errs.append("UDP checksum over IPv6 missing or wrong (esp6 esp_output_encap_csum)")
        esp_off = off + 8
        if kind == "espinudp-nonike":
            if pkt[esp_off:esp_off + 8] != b"\0" * 8:
                errs.append("espinudp-nonike: the 8-byte non-IKE marker is not zero")
            esp_off += 8
        elif pkt[esp_off:esp_off + 4] == b"\0" * 4:
            raise PeerError("espinudp: non-ESP marker (IKE) where ESP was expected")
    elif nh != IPPROTO_ESP:
        raise PeerError(f"expected ESP, found protocol {nh}")
    esp = pkt[esp_off:]
    if len(esp) < 8 + sa.ivlen + sa.icv_len + 4:
        raise PeerError(f"ESP packet too short ({len(esp)} bytes)")
    spi, seq_lo = struct.unpack("!II", esp[:8])
    if spi != sa.spi:
        raise PeerError(f"SPI 0x{spi:08x}, SA has 0x{sa.spi:08x}")
    seq64 = sa.infer_seq64(seq_lo)
    iv = esp[8:8 + sa.ivlen]
    ct, icv = esp[8 + sa.ivlen:len(esp) - sa.icv_len], esp[len(esp) - sa.icv_len:]
    layer = {"proto": "esp", "spi": spi, "seq": seq_lo, "seq64": seq64, "iv": iv.hex(),
             "icv_len": len(icv), "esp_len": len(esp)}
    info["layers"].append(layer)
    if (len(ct)) % sa.blksize:
        errs.append(f"ESP payload+trailer of {len(ct)} bytes is not a multiple of {sa.blksize} (RFC 4303 2.4)")
    pt = esp_open(sa, esp[:8], iv, seq64, ct, icv)
    layer["icv_ok"] = True
    sa.accept_seq64(seq64)
    padlen, nexthdr = pt[-2], pt[-1]
    layer.update(padlen=padlen, nh=nexthdr)
    if padlen + 2 > len(pt):
        raise PeerError(f"pad length {padlen} larger than the payload")
    pad = pt[len(pt) - 2 - padlen:len(pt) - 2]
    if pad != bytes(range(1, padlen + 1)):
        errs.append(f"padding bytes {pad.hex()} are not 1,2,3,... (RFC 4303 2.4)")
    if padlen > sa.blksize - 1:
        errs.append(f"pad length {padlen}: Linux pads only to {sa.blksize}-byte alignment here")
    body = pt[:len(pt) - 2 - padlen]
    if nexthdr == IPPROTO_NONE:
        layer["dummy"] = True
        return None
    hdr = pkt[:off]
    if sa.mode == "tunnel":
        if nexthdr not in (IPPROTO_IPIP, IPPROTO_IPV6):
            raise PeerError(f"tunnel mode SA but next header {nexthdr}")
        n = ip_total_len(body)
        if n is None or n > len(body) or (body[0] >> 4) != (4 if nexthdr == IPPROTO_IPIP else 6):
            raise PeerError("inner packet malformed or does not match the next header")
        tfc = body[n:]
        layer["tfc_len"] = len(tfc)
        if tfc.strip(b"\0"):
            errs.append("TFC padding is not zero bytes")
        if sa.tfcpad:
            if sa.tfcpad <= 1280 and n + len(tfc) != max(n, sa.tfcpad):
                errs.append(f"TFC: inner {n} + {len(tfc)} padding bytes, tfcpad {sa.tfcpad} wants {max(n, sa.tfcpad)}")
        elif tfc:
            errs.append(f"{len(tfc)} bytes after the inner packet without tfcpad")
        inner = body[:n]
        check_outer(sa, pkt, off, inner, info)
        return inner
    # transport: the IP header gets the next header back, lengths and checksum are redone
    hdr = bytearray(hdr)
    hdr[nh_off] = nexthdr
    return fix_ip_lengths(bytes(hdr) + body)


def own_ah_input(sa, pkt, off, nh, nh_off, info):
    errs = info["errors"]
    if nh != IPPROTO_AH:
        raise PeerError(f"expected AH, found protocol {nh}")
    if len(pkt) < off + 12:
        raise PeerError("truncated AH")
    nexthdr, plen, reserved, spi, seq_lo = struct.unpack("!BBHII", pkt[off:off + 12])
    ah_len = (plen + 2) * 4
    family = pkt[0] >> 4
    layer = {"proto": "ah", "spi": spi, "seq": seq_lo, "ah_len": ah_len, "nh": nexthdr}
    info["layers"].append(layer)
    if spi != sa.spi:
        raise PeerError(f"SPI 0x{spi:08x}, SA has 0x{sa.spi:08x}")
    want_len = ah_len_for(sa, family)
    if ah_len != want_len:
        errs.append(f"AH length {ah_len} bytes, Linux makes {want_len} (IPv{family}, ICV {sa.icv_len}, "
                    f"align4={sa.align4})")
    if ah_len < 12 + sa.icv_len or off + ah_len > len(pkt):
        raise PeerError(f"AH length {ah_len} impossible")
    if reserved:
        errs.append(f"AH reserved field 0x{reserved:04x}")
    seq64 = sa.infer_seq64(seq_lo)
    layer["seq64"] = seq64
    got = pkt[off + 12:off + 12 + sa.icv_len]
    pad = pkt[off + 12 + sa.icv_len:off + ah_len]
    layer["pad"] = pad.hex()
    want = ah_icv(sa, pkt, off, seq64)
    if not hmac.compare_digest(got, want):
        raise PeerError(f"AH ICV mismatch ({sa.auth}, {sa.icv_len}-byte ICV, ESN {sa.esn})")
    layer["icv_ok"] = True
    sa.accept_seq64(seq64)
    body = pkt[off + ah_len:]
    if sa.mode == "tunnel":
        if nexthdr not in (IPPROTO_IPIP, IPPROTO_IPV6):
            raise PeerError(f"tunnel mode SA but next header {nexthdr}")
        n = ip_total_len(body)
        if n is None or n != len(body):
            raise PeerError("inner packet length does not match the AH payload")
        check_outer(sa, pkt, off, body, info)
        return body
    hdr = bytearray(pkt[:off])
    hdr[nh_off] = nexthdr
    return fix_ip_lengths(bytes(hdr) + body)


# ----------------------------------------------------------------------------------------------
# Scapy engine


def scapy_applicable(sa, direction, pkt):
    """Where scapy.layers.ipsec does what Linux does (checked with 2.8.0).
    `pkt`: the packet before this SA's output, or before its input."""
    family = sa.dst.version if sa.mode == "tunnel" and direction == "out" else pkt[0] >> 4
    if sa.proto == "esp":
        if sa.enc:
            if SCAPY_AUTH.get((sa.auth, sa.icv_len)) is None:
                return False  # Scapy knows each HMAC with its RFC truncation only
        elif sa.icv_len != 16:
            return False  # DEVIATION: Scapy's AES-GCM always uses a 16-byte tag
        if sa.encap and sa.encap[0] == "espinudp-nonike":
            return False  # DEVIATION: Scapy has no non-IKE marker (draft-ietf-ipsec-udp-encaps-00)
        if direction == "in" and sa.encap and 4500 not in sa.encap[1:]:
            return False  # Scapy binds UDP->ESP only on port 4500
        if direction == "out" and sa.tfcpad and sa.mode == "tunnel":
            return False  # DEVIATION: Scapy has no TFC padding (RFC 4303 2.7)
        if (sa.encap and sa.mode == "transport" and family == 6
                and pkt[6] in (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS)):
            # DEVIATION: with NAT-T and IPv6 extension headers Scapy's _encrypt_esp leaves
            # the last extension header's next header at 50 while inserting UDP after it,
            # and _decrypt_esp drops the extension headers with the UDP header.
            return False
        return True
    if direction == "out" and payload_is_esp(sa, pkt):
        # DEVIATION: Scapy's AuthAlgo.sign() looks for an ESP layer before an AH layer, so
        # for AH outside ESP (a bundle) it appends the ICV to the ESP data instead of filling
        # the AH ICV field.
        return False
    if direction == "out" and family == 4 and not sa.align4 and (12 + sa.icv_len) % 8:
        # DEVIATION: Scapy pads an IPv4 AH header to 4 bytes; Linux (ah4.c) to 8 unless
        # align4. On input Scapy's verify() splits the ICV from the padding and works on
        # either layout, so it is still used there.
        return False
    return True


def payload_is_esp(sa, pkt):
    """Whether the packet that AH will carry has an ESP header (in tunnel mode: the inner
    packet's own ESP header, which Scapy parses too)."""
    _, _, nh, rest = split_transport(pkt, True)
    return nh == IPPROTO_ESP or (nh == IPPROTO_UDP and len(rest) >= 12 and rest[8:12] != b"\0" * 4)


SCAPY_AUTH = {("hmac(sha256)", 16): "SHA2-256-128", ("hmac(sha384)", 24): "SHA2-384-192",
              ("hmac(sha512)", 32): "SHA2-512-256", ("hmac(sha1)", 12): "HMAC-SHA1-96"}


def scapy_sa(sa, seq64):
    if sa.proto == "esp" and sa.enc:
        name = {"cbc": "AES-CBC", "ctr": "AES-CTR", "null": "NULL"}[sa.enc]
        s = sipsec.SecurityAssociation(
            sipsec.ESP, spi=sa.spi, crypt_algo=name, crypt_key=sa.enc_key or None,
            auth_algo=SCAPY_AUTH[(sa.auth, sa.icv_len)], auth_key=sa.key, esn_en=sa.esn)
        if sa.encap:
            s.nat_t_header = UDP(sport=sa.encap[1], dport=sa.encap[2])
    elif sa.proto == "esp":
        name = {"gcm": "AES-GCM", "gmac": "AES-NULL-GMAC", "chacha": "CHACHA20-POLY1305"}[sa.aead]
        s = sipsec.SecurityAssociation(
            sipsec.ESP, spi=sa.spi, crypt_algo=name, crypt_key=sa.keysalt, crypt_icv_size=16,
            esn_en=sa.esn)
        if sa.encap:
            s.nat_t_header = UDP(sport=sa.encap[1], dport=sa.encap[2])
    else:
        name = "SHA2-256-128" if sa.auth == "hmac(sha256)" else "HMAC-SHA1-96"
        s = sipsec.SecurityAssociation(sipsec.AH, spi=sa.spi, auth_algo=name, auth_key=sa.key,
                                       esn_en=sa.esn)
        if sa.icv_len != s.auth_algo.icv_size:
            return None
    # Scapy pitfall: seq_num=0 / esn=0 passed as arguments mean "use the SA's value", so the
    # values are set on the SA for every packet instead (a 64-bit ESN has low half 0 at 2^32).
    s.seq_num = seq64 & 0xFFFFFFFF
    s.esn = seq64 >> 32
    return s


def scapy_parse(pkt):
    return IP(pkt) if pkt[0] >> 4 == 4 else IPv6(pkt)


def scapy_input(sa, pkt, seq64):
    """Scapy's SecurityAssociation.decrypt on one layer; returns the packet bytes."""
    s = scapy_sa(sa, seq64)
    if s is None:
        return None
    if sa.mode == "tunnel":
        s.tunnel_header = IP() if pkt[0] >> 4 == 4 else IPv6()  # decrypt only tests its truth
    p = scapy_parse(pkt)
    if sa.proto == "esp" and not p.haslayer(sipsec.ESP):
        raise PeerError("Scapy finds no ESP layer")
    try:
        out = s.decrypt(p)
    except sipsec.IPSecIntegrityError as e:
        raise PeerError(f"Scapy: integrity check failed: {e}")
    b = raw(out)
    n = ip_total_len(b)
    # DEVIATION: Scapy leaves TFC padding (RFC 4303 2.7) after the inner packet; the inner
    # packet's own length delimits it, as it does for Linux (xfrm4_remove_tunnel_encap).
    return b[:n] if n is not None else b


def scapy_output(sa, pkt, seq64, iv, outer):
    s = scapy_sa(sa, seq64)
    if s is None:
        return None
    if sa.mode == "tunnel":
        s.tunnel_header = scapy_parse(outer)
    p = scapy_parse(pkt)
    out = raw(s.encrypt(p, iv=iv or None) if sa.proto == "esp" else s.encrypt(p))
    if sa.encap and out[0] >> 4 == 6:
        # DEVIATION: Scapy writes UDP checksum 0 over IPv6 too; Linux computes it
        # (esp_output_encap_csum) and RFC 8200 requires it.
        hdr, _, _, _ = split_transport(out, False)
        udp = out[len(hdr):]
        c = csum16(l4_pseudo(out, IPPROTO_UDP, len(udp)) + udp[:6] + b"\0\0" + udp[8:]) or 0xFFFF
        out = out[:len(hdr) + 6] + struct.pack("!H", c) + out[len(hdr) + 8:]
    return out


# ----------------------------------------------------------------------------------------------
# decrypt / encrypt over a pcap


def first_ipsec_spi(pkt, sas):
    try:
        off, nh, _ = find_ipsec_header(pkt)
    except PeerError:
        return None
    if nh in (IPPROTO_ESP, IPPROTO_AH) and len(pkt) >= off + 8:
        return nh, struct.unpack("!I", pkt[off + (0 if nh == IPPROTO_ESP else 4):off + (4 if nh == IPPROTO_ESP else 8)])[0]
    if nh == IPPROTO_UDP and len(pkt) >= off + 12:
        for sa in sas:
            if sa.encap and struct.unpack("!H", pkt[off + 2:off + 4])[0] == sa.encap[2]:
                skip = 16 if sa.encap[0] == "espinudp-nonike" else 8
                if len(pkt) >= off + skip + 4:
                    return IPPROTO_ESP, struct.unpack("!I", pkt[off + skip:off + skip + 4])[0]
    return None


def decrypt_packet(sas, pkt, use_scapy=True):
    """Removes the bundle's layers, outermost first. Returns (plain or None, info)."""
    info = {"errors": [], "layers": [], "engines": []}
    first = first_ipsec_spi(pkt, sas)
    outermost = sas[-1]
    if first is None:
        info["status"] = "passthrough"
        return pkt, info
    proto, spi = first
    if not any(sa.spi == spi and sa.proto == ("esp" if proto == IPPROTO_ESP else "ah") for sa in sas):
        raise PeerError(f"{'ESP' if proto == IPPROTO_ESP else 'AH'} with SPI 0x{spi:08x}: no such SA")
    if spi != outermost.spi:
        raise PeerError(f"SPI 0x{spi:08x} outermost, the bundle's outermost SA is {outermost.label()}")
    cur = pkt
    for sa in reversed(sas):
        before = cur
        out = own_input(sa, cur, info)
        engines = ["own"]
        if use_scapy and scapy_applicable(sa, "in", before):
            seq64 = info["layers"][-1]["seq64"]
            sb = scapy_input(sa, before, seq64)
            if sb is not None:
                engines.append("scapy")
                if out is not None and sb != out:
                    info["errors"].append(
                        f"engines disagree on {sa.label()}: own {out.hex()} scapy {sb.hex()}")
        info["layers"][-1]["engines"] = engines
        if out is None:
            info["status"] = "dummy"
            return None, info
        cur = out
    info["status"] = "error" if info["errors"] else "ok"
    return cur, info


def encrypt_packet(sas, pkt, seqs, iv_fn, use_scapy=True, check=True):
    """Applies the bundle (innermost first). seqs: one 64-bit sequence number per SA."""
    info = {"errors": [], "layers": []}
    cur = pkt
    for sa, seq64 in zip(sas, seqs):
        iv = iv_fn(sa, seq64) if sa.proto == "esp" else None
        if sa.proto == "esp":
            own = own_esp_output(sa, cur, seq64, iv)
        else:
            own = own_ah_output(sa, cur, seq64)
        outer = own[:20] if own[0] >> 4 == 4 else own[:40]
        engine = "own"
        out = own
        if use_scapy and scapy_applicable(sa, "out", cur):
            sb = scapy_output(sa, cur, seq64, iv, outer)
            if sb is not None:
                engine = "scapy"
                out = sb
                if check and sb != own:
                    info["errors"].append(f"engines disagree on {sa.label()}: own {own.hex()} scapy {sb.hex()}")
        info["layers"].append({"proto": sa.proto, "spi": sa.spi, "seq64": seq64, "engine": engine,
                               "iv": iv.hex() if iv else None})
        cur = out
    return cur, info


def run_decrypt(sa_desc, in_path, out_path, report_path=None, use_scapy=True):
    sas = load_sas(sa_desc)
    cap = read_pcap(in_path)
    lt = cap["linktype"]
    out_recs = []
    reports = []
    nerr = 0
    ivs = {}
    for i, (ts, tf, orig, frame) in enumerate(cap["records"]):
        link, pkt, trailer = split_link(lt, frame)
        rep = {"index": i}
        if pkt is None:
            rep.update(status="passthrough", reason="not IP")
            out_recs.append((ts, tf, orig, frame))
        else:
            try:
                plain, info = decrypt_packet(sas, pkt, use_scapy)
                rep.update(info)
                for layer in info["layers"]:
                    if layer.get("iv"):
                        key = (layer["spi"], layer["iv"])
                        if key in ivs:
                            info["errors"].append(f"IV {layer['iv']} reused (packets {ivs[key]} and {i})")
                            rep["status"] = "error"
                        ivs[key] = i
                if plain is not None:
                    rep["plain_len"] = len(plain)
                    out_recs.append((ts, tf, orig, join_link(lt, link, plain)))
            except PeerError as e:
                rep.setdefault("errors", []).append(str(e))
                rep["status"] = "error"
            except Exception as e:  # a bug here or a packet too malformed to parse
                rep.setdefault("errors", []).append(f"{type(e).__name__}: {e}")
                rep["status"] = "error"
        if rep.get("status") == "error":
            nerr += 1
        rep.pop("engines", None)
        reports.append(rep)
    write_pcap(out_path, lt, out_recs, cap["nanos"], cap["snaplen"])
    if report_path:
        with open(report_path, "w") as f:
            for r in reports:
                f.write(json.dumps(r) + "\n")
    counts = {}
    for r in reports:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return nerr, reports, counts


def run_encrypt(sa_desc, in_path, out_path, report_path=None, use_scapy=True, iv_mode="random"):
    sas = load_sas(sa_desc)
    cap = read_pcap(in_path)
    lt = cap["linktype"]
    next_seq = [sa.seq for sa in sas]
    out_recs = []
    reports = []
    nerr = 0

    def iv_fn(sa, seq64):
        if iv_mode == "seq":
            return struct.pack("!Q", seq64).rjust(sa.ivlen, b"\0")[-sa.ivlen:] if sa.ivlen else b""
        return os.urandom(sa.ivlen)

    for i, (ts, tf, orig, frame) in enumerate(cap["records"]):
        link, pkt, trailer = split_link(lt, frame)
        rep = {"index": i}
        if pkt is None:
            rep.update(status="passthrough", reason="not IP")
            out_recs.append((ts, tf, orig, frame))
        else:
            try:
                wire, info = encrypt_packet(sas, pkt, list(next_seq), iv_fn, use_scapy)
                rep.update(info)
                rep["status"] = "error" if info["errors"] else "ok"
                rep["wire_len"] = len(wire)
                out_recs.append((ts, tf, len(link) + len(wire), join_link(lt, link, wire)))
            except Exception as e:
                rep.setdefault("errors", []).append(f"{type(e).__name__}: {e}")
                rep["status"] = "error"
            next_seq = [s + 1 for s in next_seq]
        if rep["status"] == "error":
            nerr += 1
        reports.append(rep)
    write_pcap(out_path, lt, out_recs, cap["nanos"], cap["snaplen"])
    if report_path:
        with open(report_path, "w") as f:
            for r in reports:
                f.write(json.dumps(r) + "\n")
    counts = {}
    for r in reports:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return nerr, reports, counts


def run_job(job):
    cmd = job["cmd"]
    use_scapy = not job.get("no_scapy", False)
    if cmd == "decrypt":
        nerr, reports, counts = run_decrypt(job["sa"], job["in"], job["out"], job.get("report"), use_scapy)
    elif cmd == "encrypt":
        nerr, reports, counts = run_encrypt(job["sa"], job["in"], job["out"], job.get("report"), use_scapy,
                                            job.get("iv", "random"))
    else:
        raise ValueError(f"unknown job cmd {cmd!r}")
    first_errors = [f"packet {r['index']}: {'; '.join(r['errors'])}" for r in reports if r.get("errors")][:5]
    return {"ok": nerr == 0, "errors": nerr, "counts": counts, "first_errors": first_errors}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("decrypt", "encrypt"):
        p = sub.add_parser(name)
        p.add_argument("--sa", required=True, help="SA description JSON")
        p.add_argument("--in", dest="inp", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--report", help="per-packet report, JSON lines")
        p.add_argument("--no-scapy", action="store_true", help="own engine only")
        if name == "encrypt":
            p.add_argument("--iv", choices=("random", "seq"), default="random",
                           help="IVs: random, or the 64-bit sequence number (reproducible)")
    p = sub.add_parser("batch", help="run a JSON list of jobs {cmd, sa, in, out, report}")
    p.add_argument("jobs")
    sub.add_parser("selftest")
    a = ap.parse_args(argv)
    if a.cmd == "selftest":
        import ipsec_peer_selftest
        return ipsec_peer_selftest.main()
    if a.cmd == "batch":
        with open(a.jobs) as f:
            jobs = json.load(f)
        bad = 0
        for i, job in enumerate(jobs):
            try:
                res = run_job(job)
            except Exception as e:
                res = {"ok": False, "errors": -1, "first_errors": [f"{type(e).__name__}: {e}"],
                       "trace": traceback.format_exc()}
            res["job"] = i
            res["name"] = job.get("name", "")
            print(json.dumps(res), flush=True)
            bad += not res["ok"]
        return 1 if bad else 0
    job = {"cmd": a.cmd, "sa": a.sa, "in": a.inp, "out": a.out, "report": a.report,
           "no_scapy": a.no_scapy}
    if a.cmd == "encrypt":
        job["iv"] = a.iv
    res = run_job(job)
    print(f"{a.cmd}: {json.dumps(res['counts'])}", file=sys.stderr)
    for e in res["first_errors"]:
        print(f"  {e}", file=sys.stderr)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
