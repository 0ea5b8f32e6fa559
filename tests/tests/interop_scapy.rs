//! Interop: `xfrm-user pcap` against IPsec implementations nobody here wrote.
//!
//! For every mode × algorithm × flag combination below, in both directions:
//! * out: plaintext packets → `xfrm-user pcap --dir out` → the peer (tests/interop/ipsec_peer.py:
//!   Scapy's scapy.layers.ipsec where it matches Linux, `cryptography`/`hmac` code where it
//!   does not) decrypts and ICV-checks every packet and checks the Linux layout (padding,
//!   alignment, outer header, sequence numbers); its plaintext must equal ours byte for byte.
//! * in: the peer encrypts the plaintext → `xfrm-user pcap --dir in` → equal to the plaintext.
//!
//! Plus tshark (Wireshark 4.0, RFC 4106 without ESN): our ESP-GCM output decrypts there and the
//! ICV is "correct".
//!
//! Transport mode: the plaintext compared is the whole packet; no field is exempt, because
//! neither RFC 4303/4302 nor Linux change a transport-mode IP header except for protocol,
//! length and checksum, which decapsulation restores.
//!
//! The peer lives in <repo>/.tools/venv (tests/interop/setup.sh makes it). Without it these
//! tests print SKIPPED and pass, unless CI is set: then a missing peer is a failure.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::DataLink;
use serde_json::{json, Value};

// ------------------------------------------------------------------------------------------
// Environment: the peer, tshark, our binary

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn in_ci() -> bool {
    env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The venv's python, or None (test skipped) when it is missing and CI is not set.
fn peer_python() -> Option<PathBuf> {
    let py = repo_root().join(".tools/venv/bin/python");
    if py.exists() {
        return Some(py);
    }
    let msg = format!(
        "the interop peer is missing ({} does not exist); run tests/interop/setup.sh",
        py.display()
    );
    assert!(!in_ci(), "{msg} (CI is set: a missing peer is a failure)");
    eprintln!("SKIPPED: {msg}");
    None
}

fn tshark() -> Option<PathBuf> {
    let found = env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|p| p.join("tshark"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let msg = "tshark is not installed; run tests/interop/setup.sh";
        assert!(!in_ci(), "{msg} (CI is set: a missing peer is a failure)");
        eprintln!("SKIPPED: {msg}");
    }
    found
}

/// Our binary. The tests crate cannot name another package's binary (CARGO_BIN_EXE_ is only
/// set for the package's own), so it is built here with the cargo that runs the tests, into
/// the same target directory and profile; XFRM_USER_BIN overrides.
fn xfrm_user() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = env::var_os("XFRM_USER_BIN") {
            return Ok(PathBuf::from(p));
        }
        // <target>/<profile>/deps/<this test>
        let exe = env::current_exe().map_err(|e| e.to_string())?;
        let profile_dir = exe.parent().and_then(Path::parent).ok_or("no target dir")?;
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let target_dir = profile_dir.parent().ok_or("no target dir")?;
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "xfrm-user", "--bin", "xfrm-user"])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(repo_root());
        if release {
            cmd.arg("--release");
        }
        let st = cmd.status().map_err(|e| format!("cargo build: {e}"))?;
        if !st.success() {
            return Err(format!("cargo build -p xfrm-user failed: {st}"));
        }
        let bin = profile_dir.join("xfrm-user");
        if bin.exists() {
            Ok(bin)
        } else {
            Err(format!("{} not found after the build", bin.display()))
        }
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

// ------------------------------------------------------------------------------------------
// Plaintext packets

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// An IP packet with a correct header and L4 checksum.
#[allow(clippy::too_many_arguments)]
fn ip_packet(
    src: IpAddr,
    dst: IpAddr,
    ds: u8,
    df: bool,
    ttl: u8,
    id: u16,
    proto: u8,
    l4: &[u8],
) -> Vec<u8> {
    let mut l4 = l4.to_vec();
    // L4 checksum over the pseudo header (RFC 768/793/8200; ICMPv4 has none)
    let ck_off = match proto {
        6 => Some(16),
        17 => Some(6),
        1 => Some(2),
        58 => Some(2),
        _ => None,
    };
    if let Some(off) = ck_off {
        l4[off..off + 2].copy_from_slice(&[0, 0]);
        let mut sum = 0;
        if proto != 1 {
            sum = csum_add(sum, &addr_bytes(src));
            sum = csum_add(sum, &addr_bytes(dst));
            sum = csum_add(sum, &(l4.len() as u32).to_be_bytes());
            sum = csum_add(sum, &[0, 0, 0, proto]);
        }
        let mut c = csum_fold(csum_add(sum, &l4));
        if proto == 17 && c == 0 {
            c = 0xffff;
        }
        l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    }
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&[0x45, ds]);
            p.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&(if df { 0x4000u16 } else { 0 }).to_be_bytes());
            p.extend_from_slice(&[ttl, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let c = csum_fold(csum_add(0, &p));
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let flow = 0x1_2345 ^ u32::from(id);
            let w = (6u32 << 28) | (u32::from(ds) << 20) | (flow & 0xfffff);
            p.extend_from_slice(&w.to_be_bytes());
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, ttl]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => unreachable!("mixed families"),
    }
    p.extend_from_slice(&l4);
    p
}

/// The packet with IPv4 options or an IPv6 hop-by-hop header (`opts`: its option bytes, 6 of
/// them for IPv6) inserted after the fixed header; the L4 checksum stays valid.
fn with_options(p: &[u8], opts: &[u8]) -> Vec<u8> {
    let mut q = Vec::with_capacity(p.len() + 8);
    if p[0] >> 4 == 4 {
        assert_eq!(opts.len() % 4, 0);
        q.extend_from_slice(&p[..20]);
        q.extend_from_slice(opts);
        q.extend_from_slice(&p[20..]);
        q[0] = 0x40 | ((20 + opts.len()) / 4) as u8;
        let len = q.len() as u16;
        q[2..4].copy_from_slice(&len.to_be_bytes());
        q[10..12].copy_from_slice(&[0, 0]);
        let c = csum_fold(csum_add(0, &q[..20 + opts.len()]));
        q[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        assert_eq!(opts.len(), 6);
        q.extend_from_slice(&p[..40]);
        q.extend_from_slice(&[p[6], 0]); // hop-by-hop: next header, length 0 (8 bytes)
        q.extend_from_slice(opts);
        q.extend_from_slice(&p[40..]);
        q[6] = 0; // next header: hop-by-hop options
        let plen = (q.len() - 40) as u16;
        q[4..6].copy_from_slice(&plen.to_be_bytes());
    }
    q
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn tcp(sport: u16, dport: u16, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    t.extend_from_slice(&(if flags & 0x10 != 0 { 0x0a0b_0c0du32 } else { 0 }).to_be_bytes());
    t.push((((20 + options.len()) / 4) as u8) << 4);
    t.push(flags);
    t.extend_from_slice(&[0xfa, 0xf0, 0, 0, 0, 0]);
    t.extend_from_slice(options);
    t.extend_from_slice(payload);
    t
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn echo(v6: bool, request: bool, payload: &[u8]) -> Vec<u8> {
    let ty = match (v6, request) {
        (false, true) => 8,
        (false, false) => 0,
        (true, true) => 128,
        (true, false) => 129,
    };
    let mut e = vec![ty, 0, 0, 0, 0x12, 0x34, 0, 1];
    e.extend_from_slice(payload);
    e
}

/// TCP, UDP, ICMP; 0-byte payloads, odd sizes, and whole packets of 1400 bytes; DSCP and every
/// ECN codepoint; DF set and clear; IPv4 options and IPv6 hop-by-hop options, immutable (router
/// alert) and mutable (record route; an option type with the may-change bit), which AH's ICV
/// must see zeroed (RFC 4302 3.3.3.1, ip_clear_mutable_options, ah6's zero_out_mutable_opts).
fn plaintexts(src: IpAddr, dst: IpAddr) -> Vec<Vec<u8>> {
    let mut v = plaintexts_plain(src, dst);
    let (ra, mutable): (&[u8], &[u8]) = if src.is_ipv6() {
        (
            &[0x05, 0x02, 0x00, 0x00, 0x01, 0x00],
            &[0x3e, 0x04, 0xde, 0xad, 0xbe, 0xef],
        )
    } else {
        (
            &[0x94, 0x04, 0x00, 0x00],
            &[0x07, 0x07, 0x04, 0, 0, 0, 0, 0x00],
        )
    };
    v.push(with_options(&v[4], ra));
    v.push(with_options(&v[1], mutable));
    v
}

fn plaintexts_plain(src: IpAddr, dst: IpAddr) -> Vec<Vec<u8>> {
    let v6 = src.is_ipv6();
    let ip_hdr = if v6 { 40 } else { 20 };
    let icmp = if v6 { 58 } else { 1 };
    let mss = [2, 4, 0x05, 0xb4];
    let big_tcp = 1400 - ip_hdr - 20;
    let big_udp = 1400 - ip_hdr - 8;
    vec![
        ip_packet(
            src,
            dst,
            0x00,
            true,
            64,
            0x1001,
            6,
            &tcp(40001, 5201, 0x02, &mss, &[]),
        ),
        ip_packet(
            src,
            dst,
            0xb8,
            true,
            64,
            0x1002,
            6,
            &tcp(40001, 5201, 0x18, &[], &pattern(1, 1)),
        ),
        ip_packet(
            src,
            dst,
            0x02,
            true,
            63,
            0x1003,
            6,
            &tcp(40001, 5201, 0x18, &[], &pattern(3, 2)),
        ),
        ip_packet(
            src,
            dst,
            0x03,
            true,
            64,
            0x1004,
            6,
            &tcp(40001, 5201, 0x10, &[], &pattern(big_tcp, 3)),
        ),
        ip_packet(
            src,
            dst,
            0x01,
            false,
            64,
            0x1005,
            17,
            &udp(40002, 5202, &[]),
        ),
        ip_packet(
            src,
            dst,
            0x48,
            false,
            17,
            0x1006,
            17,
            &udp(40002, 5202, &pattern(37, 4)),
        ),
        ip_packet(
            src,
            dst,
            0x00,
            false,
            64,
            0x1007,
            17,
            &udp(40002, 5202, &pattern(big_udp, 5)),
        ),
        ip_packet(
            src,
            dst,
            0x00,
            true,
            1,
            0x1008,
            icmp,
            &echo(v6, true, &pattern(56, 6)),
        ),
        ip_packet(
            src,
            dst,
            0x2e,
            false,
            255,
            0x1009,
            icmp,
            &echo(v6, false, &[]),
        ),
    ]
}

// ------------------------------------------------------------------------------------------
// pcap files

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

fn write_pcap(path: &Path, link: DataLink, packets: &[Vec<u8>]) {
    let frames: Vec<Vec<u8>> = packets.iter().map(|p| frame_of(link, p)).collect();
    write_frames(path, link, &frames);
}

fn write_frames(path: &Path, link: DataLink, frames: &[Vec<u8>]) {
    let f = fs::File::create(path).unwrap();
    let hdr = PcapHeader {
        datalink: link,
        ..Default::default()
    };
    let mut w = PcapWriter::with_header(f, hdr).unwrap();
    for (i, frame) in frames.iter().enumerate() {
        let ts = Duration::from_millis(1_700_000_000_000 + i as u64);
        w.write_packet(&PcapPacket::new(ts, frame.len() as u32, frame))
            .unwrap();
    }
}

fn frame_of(link: DataLink, ip: &[u8]) -> Vec<u8> {
    match link {
        DataLink::ETHERNET => {
            let mut f = MAC_B.to_vec();
            f.extend_from_slice(&MAC_A);
            f.extend_from_slice(if ip[0] >> 4 == 4 {
                &[0x08, 0x00]
            } else {
                &[0x86, 0xdd]
            });
            f.extend_from_slice(ip);
            f
        }
        _ => ip.to_vec(),
    }
}

fn read_pcap(path: &Path) -> Result<(DataLink, Vec<Vec<u8>>), String> {
    let f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut r = PcapReader::new(f).map_err(|e| format!("{}: {e}", path.display()))?;
    let link = r.header().datalink;
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        out.push(
            p.map_err(|e| format!("{}: {e}", path.display()))?
                .data
                .into_owned(),
        );
    }
    Ok((link, out))
}

// ------------------------------------------------------------------------------------------
// Cases: SAs in ip-xfrm words and in the peer's JSON

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fam {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Transport,
    Tunnel,
}

#[derive(Clone, Copy, Debug)]
enum Alg {
    Gcm {
        key: usize,
        icv_bits: u32,
    },
    Gmac {
        key: usize,
    },
    ChaCha,
    /// ESP `enc` + `auth-trunc`: the cipher's name and key length as configured, the HMAC's
    /// name, key length and truncation.
    EncAuth {
        enc: &'static str,
        enc_key: usize,
        auth: &'static str,
        auth_key: usize,
        trunc: u32,
    },
    Sha256 {
        trunc: u32,
    },
    Sha1 {
        trunc: u32,
    },
}

impl Alg {
    fn is_esp(self) -> bool {
        matches!(
            self,
            Alg::Gcm { .. } | Alg::Gmac { .. } | Alg::ChaCha | Alg::EncAuth { .. }
        )
    }
    fn label(self) -> String {
        match self {
            Alg::Gcm { key, icv_bits } => format!("gcm{}-icv{}", key * 8, icv_bits / 8),
            Alg::Gmac { key } => format!("gmac{}", key * 8),
            Alg::ChaCha => "chacha20poly1305".to_string(),
            Alg::EncAuth {
                enc,
                enc_key,
                auth,
                trunc,
                ..
            } => format!("{enc}-{}-{auth}-{trunc}", enc_key * 8),
            Alg::Sha256 { trunc } => format!("hmac-sha256-{trunc}"),
            Alg::Sha1 { trunc } => format!("hmac-sha1-{trunc}"),
        }
    }
}

#[derive(Clone, Debug)]
struct SaSpec {
    mode: Mode,
    alg: Alg,
    flags: Vec<&'static str>,
    extra_flags: Vec<&'static str>,
    /// (type, our port, the peer's port)
    encap: Option<(&'static str, u16, u16)>,
    tfcpad: u32,
    /// First sequence number, 64 bits (the high half matters with esn).
    first_seq: u64,
    /// The outer DS field the peer writes when it encrypts (instead of copying the inner
    /// one), to exercise our ECN/DSCP decapsulation.
    peer_outer_tos: Option<u8>,
}

impl SaSpec {
    fn new(mode: Mode, alg: Alg) -> Self {
        SaSpec {
            mode,
            alg,
            flags: vec![],
            extra_flags: vec![],
            encap: None,
            tfcpad: 0,
            first_seq: 1,
            peer_outer_tos: None,
        }
    }
    fn flag(mut self, f: &'static str) -> Self {
        self.flags.push(f);
        self
    }
    fn extra(mut self, f: &'static str) -> Self {
        self.extra_flags.push(f);
        self
    }
    fn encap(mut self, kind: &'static str, ours: u16, theirs: u16) -> Self {
        self.encap = Some((kind, ours, theirs));
        self
    }
    fn tfc(mut self, n: u32) -> Self {
        self.tfcpad = n;
        self
    }
    fn seq(mut self, s: u64) -> Self {
        self.first_seq = s;
        self
    }
    fn peer_outer_tos(mut self, tos: u8) -> Self {
        self.peer_outer_tos = Some(tos);
        self
    }
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    outer: Fam,
    inner: Fam,
    /// In the order applied on output (ip xfrm `tmpl` order: the first is innermost).
    sas: Vec<SaSpec>,
    link: DataLink,
}

fn case(outer: Fam, inner: Fam, sas: Vec<SaSpec>) -> Case {
    let mut name = String::new();
    for (i, s) in sas.iter().enumerate() {
        if i > 0 {
            name.push_str(" + ");
        }
        let _ = write!(
            name,
            "{} {} {}",
            if s.alg.is_esp() { "esp" } else { "ah" },
            if s.mode == Mode::Tunnel {
                "tunnel"
            } else {
                "transport"
            },
            s.alg.label()
        );
        for f in s.flags.iter().chain(&s.extra_flags) {
            let _ = write!(name, " {f}");
        }
        if let Some((k, a, b)) = s.encap {
            let _ = write!(name, " {k} {a}/{b}");
        }
        if s.tfcpad > 0 {
            let _ = write!(name, " tfcpad {}", s.tfcpad);
        }
        if s.first_seq != 1 {
            let _ = write!(name, " seq {:#x}", s.first_seq);
        }
    }
    let fam = |f: Fam| if f == Fam::V4 { "4" } else { "6" };
    let _ = write!(name, " [{}in{}]", fam(inner), fam(outer));
    Case {
        name,
        outer,
        inner,
        sas,
        link: DataLink::RAW,
    }
}

const US4: &str = "192.0.2.1";
const PEER4: &str = "192.0.2.2";
const US6: &str = "2001:db8::1";
const PEER6: &str = "2001:db8::2";
const LOCAL4: (&str, &str) = ("198.51.100.10", "198.51.100.0/24");
const REMOTE4: (&str, &str) = ("203.0.113.20", "203.0.113.0/24");
const LOCAL6: (&str, &str) = ("2001:db8:1::10", "2001:db8:1::/64");
const REMOTE6: (&str, &str) = ("2001:db8:2::20", "2001:db8:2::/64");

#[derive(Clone, Copy, PartialEq, Debug)]
enum Dir {
    Out,
    In,
}

impl Case {
    fn tunnel(&self) -> bool {
        self.sas.iter().any(|s| s.mode == Mode::Tunnel)
    }
    fn endpoints(&self) -> (&'static str, &'static str) {
        match self.outer {
            Fam::V4 => (US4, PEER4),
            Fam::V6 => (US6, PEER6),
        }
    }
    /// (local host, local selector, remote host, remote selector) of the plaintext.
    fn hosts(&self) -> (&'static str, String, &'static str, String) {
        let (us, peer) = self.endpoints();
        if !self.tunnel() {
            let len = if self.outer == Fam::V4 { 32 } else { 128 };
            return (us, format!("{us}/{len}"), peer, format!("{peer}/{len}"));
        }
        let (l, r) = if self.inner == Fam::V4 {
            (LOCAL4, REMOTE4)
        } else {
            (LOCAL6, REMOTE6)
        };
        (l.0, l.1.to_string(), r.0, r.1.to_string())
    }
    fn plaintexts(&self, dir: Dir) -> Vec<Vec<u8>> {
        let (l, _, r, _) = self.hosts();
        let (l, r): (IpAddr, IpAddr) = (l.parse().unwrap(), r.parse().unwrap());
        match dir {
            Dir::Out => plaintexts(l, r),
            Dir::In => plaintexts(r, l),
        }
    }
    /// What our input makes of a plaintext the peer tunnelled with `peer_outer_tos`: the
    /// inner DS field after decapsulation, RFC 6040 section 4.2 for ECN (the rule we follow; Linux's
    /// xfrm ipip_ecn_decapsulate only copies CE into an ECT inner header and never drops) unless
    /// noecn, the outer DSCP with decap-dscp (ipv4_copy_dscp / ipv6_copy_dscp). None: dropped
    /// (outer CE over a not-ECT inner packet).
    fn expected_decap(&self, p: &[u8]) -> Option<Vec<u8>> {
        let [s] = &self.sas[..] else {
            return Some(p.to_vec());
        };
        let Some(outer) = s.peer_outer_tos else {
            return Some(p.to_vec());
        };
        let v4 = p[0] >> 4 == 4;
        let inner = if v4 { p[1] } else { (p[0] << 4) | (p[1] >> 4) };
        let mut ds = inner;
        if s.flags.contains(&"decap-dscp") {
            ds = (outer & 0xfc) | (inner & 3);
        }
        if !s.flags.contains(&"noecn") {
            let ecn = match (inner & 3, outer & 3) {
                (0, 3) => return None,
                (_, 3) => 3,
                (2, 1) => 1,
                (i, _) => i,
            };
            ds = (ds & 0xfc) | ecn;
        }
        let mut q = p.to_vec();
        if v4 {
            q[1] = ds;
            q[10..12].copy_from_slice(&[0, 0]);
            let ihl = usize::from(q[0] & 0xf) * 4;
            let c = csum_fold(csum_add(0, &q[..ihl]));
            q[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            q[0] = 0x60 | (ds >> 4);
            q[1] = (ds << 4) | (q[1] & 0x0f);
        }
        Some(q)
    }

    /// A UDP packet that no policy selects (between two other hosts of the outer family).
    fn bypass(&self) -> Vec<u8> {
        let (s, d): (IpAddr, IpAddr) = match self.outer {
            Fam::V4 => ("192.0.2.77".parse().unwrap(), "192.0.2.78".parse().unwrap()),
            Fam::V6 => (
                "2001:db8::77".parse().unwrap(),
                "2001:db8::78".parse().unwrap(),
            ),
        };
        ip_packet(s, d, 0x10, false, 9, 0x4242, 17, &udp(7, 9, b"no policy"))
    }

    fn spi(&self, idx: usize, dir: Dir) -> u32 {
        0x1000 + idx as u32 + if dir == Dir::In { 0x100 } else { 0 }
    }
    fn reqid(&self, idx: usize, dir: Dir) -> u32 {
        1 + idx as u32 + if dir == Dir::In { 100 } else { 0 }
    }
    /// Key bytes (hex), different for every case, SA and direction.
    fn key(&self, idx: usize, dir: Dir, len: usize) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.name.bytes().chain([idx as u8, dir as u8]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        (0..len)
            .map(|i| {
                h = h
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407 + i as u64);
                format!("{:02x}", (h >> 33) as u8)
            })
            .collect()
    }
    fn key_material(&self, idx: usize, dir: Dir) -> String {
        match self.sas[idx].alg {
            Alg::Gcm { key, .. } | Alg::Gmac { key } => self.key(idx, dir, key + 4), // key || salt
            Alg::ChaCha => self.key(idx, dir, 36),
            Alg::EncAuth { enc_key, .. } => self.key(idx, dir, enc_key),
            Alg::Sha256 { .. } => self.key(idx, dir, 32),
            Alg::Sha1 { .. } => self.key(idx, dir, 20),
        }
    }

    /// The configuration file: both directions' states, out/in/fwd policies.
    fn config(&self) -> String {
        let (us, peer) = self.endpoints();
        let mut c = format!("# {}\n", self.name);
        for dir in [Dir::Out, Dir::In] {
            let (src, dst) = if dir == Dir::Out {
                (us, peer)
            } else {
                (peer, us)
            };
            for (i, s) in self.sas.iter().enumerate() {
                let _ = write!(
                    c,
                    "state add src {src} dst {dst} proto {} spi {:#010x} reqid {} mode {} ",
                    if s.alg.is_esp() { "esp" } else { "ah" },
                    self.spi(i, dir),
                    self.reqid(i, dir),
                    if s.mode == Mode::Tunnel {
                        "tunnel"
                    } else {
                        "transport"
                    }
                );
                let key = self.key_material(i, dir);
                let _ = match s.alg {
                    Alg::Gcm { icv_bits, .. } => {
                        write!(c, "aead 'rfc4106(gcm(aes))' 0x{key} {icv_bits}")
                    }
                    Alg::Gmac { .. } => write!(c, "aead 'rfc4543(gcm(aes))' 0x{key} 128"),
                    Alg::ChaCha => {
                        write!(c, "aead 'rfc7539esp(chacha20,poly1305)' 0x{key} 128")
                    }
                    Alg::EncAuth {
                        enc,
                        auth,
                        auth_key,
                        trunc,
                        ..
                    } => write!(
                        c,
                        "enc '{enc}' {} auth-trunc '{auth}' 0x{} {trunc}",
                        if key.is_empty() {
                            "''".to_string()
                        } else {
                            format!("0x{key}")
                        },
                        self.key(i + 100, dir, auth_key)
                    ),
                    Alg::Sha256 { trunc } => write!(c, "auth-trunc 'hmac(sha256)' 0x{key} {trunc}"),
                    Alg::Sha1 { trunc } => write!(c, "auth-trunc 'hmac(sha1)' 0x{key} {trunc}"),
                };
                c.push_str(" replay-window 128");
                let mut flags = s.flags.clone();
                if self.inner != self.outer {
                    // The inner family differs from the outer one: as on Linux, every SA of
                    // the bundle needs it, since xfrm_state_look_at skips a state whose
                    // selector family (the SA's own family without af-unspec) is not the
                    // flow's.
                    flags.push("af-unspec");
                }
                if !flags.is_empty() {
                    let _ = write!(c, " flag {}", flags.join(" "));
                }
                if !s.extra_flags.is_empty() {
                    let _ = write!(c, " extra-flag {}", s.extra_flags.join(" "));
                }
                if let Some((kind, ours, theirs)) = s.encap {
                    let (sp, dp) = if dir == Dir::Out {
                        (ours, theirs)
                    } else {
                        (theirs, ours)
                    };
                    let _ = write!(c, " encap {kind} {sp} {dp} {dst}");
                }
                if s.tfcpad > 0 {
                    let _ = write!(c, " tfcpad {}", s.tfcpad);
                }
                if s.first_seq != 1 {
                    // the last number sent (out) / the top of the replay window (in)
                    let last = s.first_seq - 1;
                    let (lo, hi) = (last & 0xffff_ffff, last >> 32);
                    if dir == Dir::Out {
                        let _ = write!(c, " replay-oseq {lo:#x} replay-oseq-hi {hi:#x}");
                    } else {
                        let _ = write!(c, " replay-seq {lo:#x} replay-seq-hi {hi:#x}");
                    }
                }
                c.push('\n');
            }
        }
        let (_, lsel, _, rsel) = self.hosts();
        for (dir, pdirs) in [(Dir::Out, &["out"][..]), (Dir::In, &["in", "fwd"][..])] {
            let (src, dst) = if dir == Dir::Out {
                (us, peer)
            } else {
                (peer, us)
            };
            let (ssel, dsel) = if dir == Dir::Out {
                (&lsel, &rsel)
            } else {
                (&rsel, &lsel)
            };
            for pdir in pdirs {
                let _ = write!(
                    c,
                    "policy add src {ssel} dst {dsel} dir {pdir} priority 100"
                );
                for (i, s) in self.sas.iter().enumerate() {
                    let _ = write!(
                        c,
                        " tmpl src {src} dst {dst} proto {} reqid {} mode {}",
                        if s.alg.is_esp() { "esp" } else { "ah" },
                        self.reqid(i, dir),
                        if s.mode == Mode::Tunnel {
                            "tunnel"
                        } else {
                            "transport"
                        }
                    );
                }
                c.push('\n');
            }
        }
        c
    }

    /// The same SAs of one direction for the peer (tests/interop/ipsec_peer.py).
    fn peer_sas(&self, dir: Dir) -> Value {
        let (us, peer) = self.endpoints();
        let (src, dst) = if dir == Dir::Out {
            (us, peer)
        } else {
            (peer, us)
        };
        let sas: Vec<Value> = self
            .sas
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let key = self.key_material(i, dir);
                let mut v = json!({
                    "proto": if s.alg.is_esp() { "esp" } else { "ah" },
                    "spi": self.spi(i, dir),
                    "mode": if s.mode == Mode::Tunnel { "tunnel" } else { "transport" },
                    "src": src, "dst": dst,
                    "flags": s.flags, "extra_flags": s.extra_flags,
                    "tfcpad": s.tfcpad, "replay_window": 128, "seq": s.first_seq,
                });
                if let (Some(tos), Dir::In) = (s.peer_outer_tos, dir) {
                    v["outer_tos"] = json!(tos);
                }
                let field = if s.alg.is_esp() { "aead" } else { "auth" };
                let val = match s.alg {
                    Alg::Gcm { icv_bits, .. } => {
                        json!({"name": "rfc4106(gcm(aes))", "key": key, "icv_bits": icv_bits})
                    }
                    Alg::ChaCha => json!({"name": "rfc7539esp(chacha20,poly1305)", "key": key,
                                          "icv_bits": 128}),
                    Alg::EncAuth {
                        enc,
                        auth,
                        auth_key,
                        trunc,
                        ..
                    } => {
                        // ESP with a cipher: "enc" beside "auth", no "aead".
                        v["enc"] = json!({"name": enc, "key": key});
                        v["auth"] = json!({"name": auth, "key": self.key(i + 100, dir, auth_key),
                                           "trunc_bits": trunc});
                        Value::Null
                    }
                    Alg::Gmac { .. } => {
                        json!({"name": "rfc4543(gcm(aes))", "key": key, "icv_bits": 128})
                    }
                    Alg::Sha256 { trunc } => {
                        json!({"name": "hmac(sha256)", "key": key, "trunc_bits": trunc})
                    }
                    Alg::Sha1 { trunc } => {
                        json!({"name": "hmac(sha1)", "key": key, "trunc_bits": trunc})
                    }
                };
                if !val.is_null() {
                    v[field] = val;
                }
                if let Some((kind, ours, theirs)) = s.encap {
                    let (sp, dp) = if dir == Dir::Out {
                        (ours, theirs)
                    } else {
                        (theirs, ours)
                    };
                    v["encap"] = json!({"type": kind, "sport": sp, "dport": dp});
                }
                v
            })
            .collect();
        json!({ "sas": sas })
    }
}

// ------------------------------------------------------------------------------------------
// Running a matrix

struct Outcome {
    name: String,
    dir: Dir,
    failure: Option<String>,
    note: String,
}

fn run_xfrm_user(config: &Path, dir: Dir, input: &Path, output: &Path) -> Result<String, String> {
    let out = Command::new(xfrm_user())
        .args(["pcap", "--config"])
        .arg(config)
        .args(["--dir", if dir == Dir::Out { "out" } else { "in" }, "--in"])
        .arg(input)
        .arg("--out")
        .arg(output)
        .output()
        .map_err(|e| format!("cannot run xfrm-user: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!(
            "xfrm-user pcap --dir {dir:?} exited {}: {}",
            out.status,
            stderr.trim()
        ));
    }
    Ok(stderr)
}

fn run_peer_batch(py: &Path, jobs: &[Value], dir: &Path) -> Vec<Value> {
    if jobs.is_empty() {
        return vec![];
    }
    let jobs_file = dir.join(format!("jobs-{}.json", jobs[0]["cmd"].as_str().unwrap()));
    fs::write(&jobs_file, serde_json::to_vec_pretty(jobs).unwrap()).unwrap();
    let out = Command::new(py)
        .arg(repo_root().join("tests/interop/ipsec_peer.py"))
        .arg("batch")
        .arg(&jobs_file)
        .output()
        .expect("run the peer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let res: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(
        res.len(),
        jobs.len(),
        "the peer answered {} of {} jobs; stderr: {}",
        res.len(),
        jobs.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    res
}

fn hex_diff(a: &[u8], b: &[u8]) -> String {
    let first = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let from = first.saturating_sub(4);
    let show = |p: &[u8]| {
        p[from.min(p.len())..(first + 12).min(p.len())]
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    format!(
        "lengths {} vs {}, first difference at byte {first}: [{from}..] {} vs {}",
        a.len(),
        b.len(),
        show(a),
        show(b)
    )
}

fn compare_packets(what: &str, got: &[Vec<u8>], want: &[Vec<u8>]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} packets, expected {}",
            got.len(),
            want.len()
        ));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            return Err(format!(
                "{what}: packet {i} differs: {} (got vs expected)",
                hex_diff(g, w)
            ));
        }
    }
    Ok(())
}

/// Runs every case in both directions; returns the outcomes (one per case and direction).
fn run_matrix(title: &str, cases: &[Case]) -> Option<Vec<Outcome>> {
    let py = peer_python()?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!("interop-{title}-"))
        .tempdir()
        .unwrap();
    let d = tmp.path();
    let mut outcomes = Vec::new();
    let mut dec_jobs = Vec::new();
    let mut enc_jobs = Vec::new();
    let mut pending_out = Vec::new();
    // out: ours encrypts; in: the peer encrypts
    for (ci, c) in cases.iter().enumerate() {
        let cfg = d.join(format!("{ci}.conf"));
        xfrm_user::keyfile::write_private(&cfg, c.config()).unwrap();
        for dir in [Dir::Out, Dir::In] {
            let tag = if dir == Dir::Out { "out" } else { "in" };
            let sa = d.join(format!("{ci}-{tag}.json"));
            xfrm_user::keyfile::write_private(
                &sa,
                serde_json::to_vec_pretty(&c.peer_sas(dir)).unwrap(),
            )
            .unwrap();
            let plain = d.join(format!("{ci}-{tag}-plain.pcap"));
            let mut pkts = c.plaintexts(dir);
            if dir == Dir::Out {
                pkts.push(c.bypass()); // no policy: copied unchanged
            }
            write_pcap(&plain, c.link, &pkts);
        }
        let plain = d.join(format!("{ci}-out-plain.pcap"));
        let wire = d.join(format!("{ci}-out-wire.pcap"));
        match run_xfrm_user(&cfg, Dir::Out, &plain, &wire) {
            Ok(stderr) => {
                dec_jobs.push(json!({
                    "cmd": "decrypt", "name": c.name,
                    "sa": d.join(format!("{ci}-out.json")), "in": wire,
                    "out": d.join(format!("{ci}-out-back.pcap")),
                    "report": d.join(format!("{ci}-out-report.jsonl")),
                }));
                pending_out.push((ci, stderr));
            }
            Err(e) => outcomes.push(Outcome {
                name: c.name.clone(),
                dir: Dir::Out,
                failure: Some(e),
                note: String::new(),
            }),
        }
        enc_jobs.push(json!({
            "cmd": "encrypt", "name": c.name,
            "sa": d.join(format!("{ci}-in.json")), "in": d.join(format!("{ci}-in-plain.pcap")),
            "out": d.join(format!("{ci}-in-wire.pcap")),
            "report": d.join(format!("{ci}-in-report.jsonl")),
        }));
    }
    let dec_res = run_peer_batch(&py, &dec_jobs, d);
    for ((ci, stderr), res) in pending_out.iter().zip(&dec_res) {
        let c = &cases[*ci];
        let r = check_out(c, d, *ci, res);
        outcomes.push(Outcome {
            name: c.name.clone(),
            dir: Dir::Out,
            failure: r.as_ref().err().map(|e| {
                format!(
                    "{e}\n      xfrm-user stderr: {}",
                    stderr.trim().replace('\n', "\n        ")
                )
            }),
            note: r.unwrap_or_default(),
        });
    }
    let enc_res = run_peer_batch(&py, &enc_jobs, d);
    for ((ci, c), res) in cases.iter().enumerate().zip(&enc_res) {
        let r = check_in(c, d, ci, res);
        outcomes.push(Outcome {
            name: c.name.clone(),
            dir: Dir::In,
            failure: r.as_ref().err().cloned(),
            note: r.unwrap_or_default(),
        });
    }
    if env::var_os("INTEROP_KEEP").is_some() {
        eprintln!("keeping {}", tmp.keep().display());
    }
    Some(outcomes)
}

/// Our output, decrypted by the peer.
fn check_out(c: &Case, d: &Path, ci: usize, res: &Value) -> Result<String, String> {
    let mut want = c.plaintexts(Dir::Out);
    want.push(c.bypass());
    let report = fs::read_to_string(d.join(format!("{ci}-out-report.jsonl")))
        .map_err(|e| format!("no peer report: {e}"))?;
    let reports: Vec<Value> = report
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    if res["ok"] != json!(true) {
        return Err(format!(
            "the peer rejects our output: {}",
            res["first_errors"]
        ));
    }
    if reports.len() != want.len() {
        return Err(format!(
            "{} packets on the wire, {} sent",
            reports.len(),
            want.len()
        ));
    }
    let mut engines = std::collections::BTreeSet::new();
    for (i, r) in reports.iter().enumerate() {
        if i == want.len() - 1 {
            // the packet without a policy: on the wire as it was (compared below)
            if r["status"] != "passthrough" {
                return Err(format!("packet {i} has no policy but the peer sees {r}"));
            }
            continue;
        }
        if r["status"] != "ok" {
            return Err(format!(
                "packet {i}: peer status {} (not IPsec?)",
                r["status"]
            ));
        }
        // layers: outermost first; sequence numbers 1, 2, 3... or from replay-oseq(-hi)
        let layers = r["layers"].as_array().unwrap();
        if layers.len() != c.sas.len() {
            return Err(format!(
                "packet {i}: {} IPsec layers, the bundle has {}",
                layers.len(),
                c.sas.len()
            ));
        }
        for (l, s) in layers.iter().zip(c.sas.iter().rev()) {
            let want_seq = s.first_seq + i as u64;
            if l["seq64"].as_u64() != Some(want_seq) {
                return Err(format!(
                    "packet {i}: sequence number {}, expected {want_seq:#x}",
                    l["seq64"]
                ));
            }
            for e in l["engines"].as_array().into_iter().flatten() {
                engines.insert(e.as_str().unwrap_or("").to_string());
            }
        }
    }
    let (link, got) = read_pcap(&d.join(format!("{ci}-out-back.pcap")))?;
    if link != c.link {
        return Err(format!(
            "link type {link:?} after the round trip, expected {:?}",
            c.link
        ));
    }
    let want_frames: Vec<Vec<u8>> = want.iter().map(|p| frame_of(c.link, p)).collect();
    compare_packets("peer-decrypted plaintext", &got, &want_frames)?;
    Ok(format!(
        "peer engines {}",
        engines.into_iter().collect::<Vec<_>>().join("+")
    ))
}

/// The peer's output, decrypted by us.
fn check_in(c: &Case, d: &Path, ci: usize, res: &Value) -> Result<String, String> {
    if res["ok"] != json!(true) {
        return Err(format!(
            "the peer could not encrypt: {}",
            res["first_errors"]
        ));
    }
    let report = fs::read_to_string(d.join(format!("{ci}-in-report.jsonl")))
        .map_err(|e| format!("no peer report: {e}"))?;
    let mut engines = std::collections::BTreeSet::new();
    for l in report.lines() {
        let r: Value = serde_json::from_str(l).unwrap();
        for layer in r["layers"].as_array().into_iter().flatten() {
            engines.insert(layer["engine"].as_str().unwrap_or("").to_string());
        }
    }
    let cfg = d.join(format!("{ci}.conf"));
    let wire = d.join(format!("{ci}-in-wire.pcap"));
    let back = d.join(format!("{ci}-in-back.pcap"));
    // a packet without a policy joins the peer's ESP/AH: copied unchanged
    let (wlink, mut frames) = read_pcap(&wire)?;
    frames.push(frame_of(wlink, &c.bypass()));
    write_frames(&wire, wlink, &frames);
    let stderr = run_xfrm_user(&cfg, Dir::In, &wire, &back)?;
    let (link, got) = read_pcap(&back).map_err(|e| format!("{e}; xfrm-user stderr: {stderr}"))?;
    if link != c.link {
        return Err(format!("link type {link:?} out, {:?} in", c.link));
    }
    let want: Vec<Vec<u8>> = c
        .plaintexts(Dir::In)
        .iter()
        .filter_map(|p| c.expected_decap(p))
        .collect::<Vec<_>>()
        .iter()
        .chain([&c.bypass()])
        .map(|p| frame_of(c.link, p))
        .collect();
    compare_packets("our plaintext", &got, &want).map_err(|e| {
        format!(
            "{e}\n      xfrm-user stderr: {}",
            stderr.trim().replace('\n', "\n        ")
        )
    })?;
    Ok(format!(
        "peer engines {}",
        engines.into_iter().collect::<Vec<_>>().join("+")
    ))
}

fn report(title: &str, outcomes: &[Outcome]) {
    let mut failed = 0;
    let mut text = String::new();
    for o in outcomes {
        let dir = if o.dir == Dir::Out { "out" } else { "in " };
        match &o.failure {
            None => {
                let _ = writeln!(text, "PASS {dir} {} ({})", o.name, o.note);
            }
            Some(e) => {
                failed += 1;
                let _ = writeln!(text, "FAIL {dir} {}\n      {e}", o.name);
            }
        }
    }
    println!(
        "== interop {title}\n{text}{} passed, {failed} failed",
        outcomes.len() - failed
    );
    assert_eq!(
        failed,
        0,
        "interop {title}: {failed} of {} combinations failed:\n{text}",
        outcomes.len()
    );
}

// ------------------------------------------------------------------------------------------
// The matrix

const LAYOUTS: [(Mode, Fam, Fam); 6] = [
    (Mode::Transport, Fam::V4, Fam::V4),
    (Mode::Transport, Fam::V6, Fam::V6),
    (Mode::Tunnel, Fam::V4, Fam::V4),
    (Mode::Tunnel, Fam::V6, Fam::V6),
    (Mode::Tunnel, Fam::V4, Fam::V6),
    (Mode::Tunnel, Fam::V6, Fam::V4),
];

const ESP_ALGS: [Alg; 8] = [
    Alg::Gcm {
        key: 16,
        icv_bits: 64,
    },
    Alg::Gcm {
        key: 16,
        icv_bits: 96,
    },
    Alg::Gcm {
        key: 16,
        icv_bits: 128,
    },
    Alg::Gcm {
        key: 32,
        icv_bits: 64,
    },
    Alg::Gcm {
        key: 32,
        icv_bits: 96,
    },
    Alg::Gcm {
        key: 32,
        icv_bits: 128,
    },
    Alg::Gmac { key: 16 },
    Alg::Gmac { key: 32 },
];

const AH_ALGS: [Alg; 2] = [Alg::Sha256 { trunc: 128 }, Alg::Sha1 { trunc: 96 }];

/// ESP with a cipher and HMAC (RFC 8221's MUST beside GCM, and the rest Linux accepts),
/// and ChaCha20-Poly1305.
const NEW_ESP_ALGS: [Alg; 9] = [
    Alg::EncAuth {
        enc: "cbc(aes)",
        enc_key: 16,
        auth: "hmac(sha256)",
        auth_key: 32,
        trunc: 128,
    },
    Alg::EncAuth {
        enc: "cbc(aes)",
        enc_key: 24,
        auth: "hmac(sha384)",
        auth_key: 48,
        trunc: 192,
    },
    Alg::EncAuth {
        enc: "cbc(aes)",
        enc_key: 32,
        auth: "hmac(sha512)",
        auth_key: 64,
        trunc: 256,
    },
    Alg::EncAuth {
        enc: "cbc(aes)",
        enc_key: 32,
        auth: "hmac(sha1)",
        auth_key: 20,
        trunc: 96,
    },
    Alg::EncAuth {
        enc: "rfc3686(ctr(aes))",
        enc_key: 20,
        auth: "hmac(sha256)",
        auth_key: 32,
        trunc: 128,
    },
    Alg::EncAuth {
        enc: "rfc3686(ctr(aes))",
        enc_key: 36,
        auth: "hmac(sha1)",
        auth_key: 20,
        trunc: 96,
    },
    Alg::EncAuth {
        enc: "cipher_null",
        enc_key: 0,
        auth: "hmac(sha256)",
        auth_key: 32,
        trunc: 128,
    },
    Alg::EncAuth {
        enc: "cipher_null",
        enc_key: 0,
        auth: "hmac(sha1)",
        auth_key: 20,
        trunc: 96,
    },
    Alg::ChaCha,
];

fn run(title: &str, cases: Vec<Case>) {
    if let Some(outcomes) = run_matrix(title, &cases) {
        report(title, &outcomes);
    }
}

#[test]
fn peer_selftest() {
    let Some(py) = peer_python() else { return };
    let out = Command::new(py)
        .arg(repo_root().join("tests/interop/ipsec_peer_selftest.py"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    println!("peer selftest: {last}");
    assert!(
        out.status.success() && last.ends_with(" 0 failed"),
        "the peer's own selftest fails, its verdicts cannot be trusted:\n{}\n{}",
        stdout
            .lines()
            .filter(|l| l.starts_with("FAIL"))
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn esp_every_layout_and_algorithm() {
    let mut cases = Vec::new();
    for (mode, outer, inner) in LAYOUTS {
        for alg in ESP_ALGS {
            cases.push(case(outer, inner, vec![SaSpec::new(mode, alg)]));
        }
    }
    run("esp", cases);
}

/// The cipher + HMAC algorithms and ChaCha20-Poly1305 in every layout, with and without ESN
/// (across 2^32), with NAT-T (both kinds), TFC padding and below AH in a bundle.
#[test]
fn esp_enc_auth_and_chacha_every_layout() {
    let mut cases = Vec::new();
    for (mode, outer, inner) in LAYOUTS {
        for alg in NEW_ESP_ALGS {
            cases.push(case(outer, inner, vec![SaSpec::new(mode, alg)]));
            cases.push(case(
                outer,
                inner,
                vec![SaSpec::new(mode, alg).flag("esn").seq(0xffff_fffc)],
            ));
        }
        for alg in [NEW_ESP_ALGS[0], NEW_ESP_ALGS[8]] {
            for kind in ["espinudp", "espinudp-nonike"] {
                cases.push(case(
                    outer,
                    inner,
                    vec![SaSpec::new(mode, alg).encap(kind, 4500, 4500)],
                ));
            }
            if mode == Mode::Tunnel {
                cases.push(case(outer, inner, vec![SaSpec::new(mode, alg).tfc(600)]));
            }
            cases.push(case(
                outer,
                inner,
                vec![
                    SaSpec::new(mode, alg),
                    SaSpec::new(Mode::Transport, AH_ALGS[0]),
                ],
            ));
        }
    }
    run("esp enc+auth, chacha20-poly1305", cases);
}

#[test]
fn ah_every_layout_and_algorithm() {
    let mut cases = Vec::new();
    for (mode, outer, inner) in LAYOUTS {
        for alg in AH_ALGS {
            cases.push(case(outer, inner, vec![SaSpec::new(mode, alg)]));
            cases.push(case(
                outer,
                inner,
                vec![SaSpec::new(mode, alg).flag("align4")],
            ));
        }
    }
    run("ah", cases);
}

#[test]
fn esn() {
    let mut cases = Vec::new();
    for (mode, outer, inner) in LAYOUTS {
        for alg in [
            ESP_ALGS[2],
            ESP_ALGS[4],
            ESP_ALGS[7],
            AH_ALGS[0],
            AH_ALGS[1],
        ] {
            // the 64-bit counter crosses 2^32 within the packets sent
            cases.push(case(
                outer,
                inner,
                vec![SaSpec::new(mode, alg).flag("esn").seq(0xffff_fffc)],
            ));
        }
        // a high half from the start (replay-oseq-hi), and esn from 1
        cases.push(case(
            outer,
            inner,
            vec![SaSpec::new(mode, ESP_ALGS[0])
                .flag("esn")
                .seq((5 << 32) + 3)],
        ));
        cases.push(case(
            outer,
            inner,
            vec![SaSpec::new(mode, AH_ALGS[0])
                .flag("esn")
                .flag("align4")
                .seq((1 << 32) + 1)],
        ));
        cases.push(case(
            outer,
            inner,
            vec![SaSpec::new(mode, ESP_ALGS[6]).flag("esn")],
        ));
    }
    run("esn", cases);
}

#[test]
fn nat_traversal() {
    let mut cases = Vec::new();
    for (mode, outer, inner) in LAYOUTS {
        for kind in ["espinudp", "espinudp-nonike"] {
            cases.push(case(
                outer,
                inner,
                vec![SaSpec::new(mode, ESP_ALGS[2]).encap(kind, 4500, 4500)],
            ));
            cases.push(case(
                outer,
                inner,
                vec![SaSpec::new(mode, ESP_ALGS[3]).encap(kind, 4501, 14500)],
            ));
        }
        cases.push(case(
            outer,
            inner,
            vec![SaSpec::new(mode, ESP_ALGS[6])
                .encap("espinudp", 4500, 4500)
                .flag("esn")
                .seq(0xffff_fffe)],
        ));
    }
    run("nat-t", cases);
}

#[test]
fn tunnel_tfc_padding_and_outer_header_flags() {
    let mut cases = Vec::new();
    for (mode, outer, inner) in LAYOUTS.into_iter().filter(|l| l.0 == Mode::Tunnel) {
        for (alg, tfc) in [(ESP_ALGS[2], 300), (ESP_ALGS[0], 1000), (ESP_ALGS[7], 64)] {
            cases.push(case(outer, inner, vec![SaSpec::new(mode, alg).tfc(tfc)]));
        }
        let base = SaSpec::new(mode, ESP_ALGS[2]);
        cases.push(case(outer, inner, vec![base.clone().flag("noecn")]));
        cases.push(case(
            outer,
            inner,
            vec![base.clone().extra("dont-encap-dscp")],
        ));
        cases.push(case(outer, inner, vec![base.clone().flag("nopmtudisc")]));
        cases.push(case(
            outer,
            inner,
            vec![base
                .clone()
                .flag("noecn")
                .flag("nopmtudisc")
                .extra("dont-encap-dscp")],
        ));
        cases.push(case(
            outer,
            inner,
            vec![SaSpec::new(mode, AH_ALGS[0])
                .flag("noecn")
                .extra("dont-encap-dscp")],
        ));
    }
    run("tfc+outer-flags", cases);
}

#[test]
fn tunnel_decap_ecn_and_dscp() {
    // The peer marks the outer header; our input decapsulates ECN per RFC 6040 and copies
    // the DSCP only with decap-dscp (the out direction runs too, as everywhere).
    let mut cases = Vec::new();
    for (mode, outer, inner) in LAYOUTS.into_iter().filter(|l| l.0 == Mode::Tunnel) {
        for tos in [
            0xab, /* DSCP 42, CE */
            0x29, /* DSCP 10, ECT(1) */
            0x60, /* CS3, not-ECT */
        ] {
            let base = SaSpec::new(mode, ESP_ALGS[2]).peer_outer_tos(tos);
            for flags in [
                &[][..],
                &["decap-dscp"],
                &["noecn"],
                &["decap-dscp", "noecn"],
            ] {
                let mut sa = base.clone();
                for f in flags {
                    sa = sa.flag(f);
                }
                let mut c = case(outer, inner, vec![sa]);
                let _ = write!(c.name, " peer outer DS {tos:#04x}");
                cases.push(c);
            }
        }
        let mut c = case(
            outer,
            inner,
            vec![SaSpec::new(mode, AH_ALGS[0])
                .flag("decap-dscp")
                .peer_outer_tos(0xab)],
        );
        c.name.push_str(" peer outer DS 0xab");
        cases.push(c);
    }
    run("decap-ecn-dscp", cases);
}

#[test]
fn bundles_ah_outside_esp() {
    let mut cases = Vec::new();
    for (mode, outer, inner) in LAYOUTS {
        // ESP (transport or tunnel) then AH transport over it: IP | AH | ESP | ...
        for ah in AH_ALGS {
            cases.push(case(
                outer,
                inner,
                vec![
                    SaSpec::new(mode, ESP_ALGS[2]),
                    SaSpec::new(Mode::Transport, ah),
                ],
            ));
        }
        cases.push(case(
            outer,
            inner,
            vec![
                SaSpec::new(mode, ESP_ALGS[1]).flag("esn").seq(0xffff_fffd),
                SaSpec::new(Mode::Transport, AH_ALGS[0])
                    .flag("esn")
                    .flag("align4"),
            ],
        ));
        if mode == Mode::Tunnel {
            // two tunnels: outer2 | AH | outer1 | ESP | inner
            cases.push(case(
                outer,
                inner,
                vec![
                    SaSpec::new(mode, ESP_ALGS[6]),
                    SaSpec::new(Mode::Tunnel, AH_ALGS[1]),
                ],
            ));
        }
    }
    run("bundles", cases);
}

#[test]
fn ethernet_link_type() {
    let mut cases = Vec::new();
    for (mode, outer, inner) in LAYOUTS {
        let mut c = case(outer, inner, vec![SaSpec::new(mode, ESP_ALGS[2])]);
        c.link = DataLink::ETHERNET;
        c.name.push_str(" ethernet");
        cases.push(c);
        let mut c = case(outer, inner, vec![SaSpec::new(mode, AH_ALGS[0])]);
        c.link = DataLink::ETHERNET;
        c.name.push_str(" ethernet");
        cases.push(c);
    }
    let mut c = case(
        Fam::V4,
        Fam::V4,
        vec![SaSpec::new(Mode::Tunnel, ESP_ALGS[2]).encap("espinudp", 4500, 4500)],
    );
    c.link = DataLink::ETHERNET;
    c.name.push_str(" ethernet");
    cases.push(c);
    run("ethernet", cases);
}

// ------------------------------------------------------------------------------------------
// tshark

/// Wireshark 4.0's esp_sa UAT record (epan/dissectors/packet-ipsec.c, esp_uat_flds): protocol,
/// source, destination, SPI, encryption (by its label), key (AES key || salt), authentication,
/// authentication key.
fn tshark_uat(fam: Fam, src: &str, dst: &str, spi: u32, icv_bytes: u32, key: &str) -> String {
    format!(
        "\"{}\",\"{src}\",\"{dst}\",\"{spi:#010x}\",\"AES-GCM with {icv_bytes} octet ICV [RFC4106]\",\"0x{key}\",\"NULL\",\"\"",
        if fam == Fam::V4 { "IPv4" } else { "IPv6" }
    )
}

#[test]
fn tshark_decrypts_our_esp_gcm() {
    let Some(tshark) = tshark() else { return };
    let tmp = tempfile::Builder::new()
        .prefix("interop-tshark-")
        .tempdir()
        .unwrap();
    let d = tmp.path();
    let mut outcomes = Vec::new();
    for (mode, outer, inner) in LAYOUTS {
        // Wireshark 4.0 has RFC 4106 GCM (ICV 8/12/16), no GMAC, no ESN
        for alg in &ESP_ALGS[..6] {
            for natt in [false, true] {
                let mut sa = SaSpec::new(mode, *alg);
                if natt {
                    sa = sa.encap("espinudp", 4500, 4500);
                }
                let c = case(outer, inner, vec![sa]);
                let r = tshark_case(&tshark, &c, d);
                outcomes.push(Outcome {
                    name: c.name.clone(),
                    dir: Dir::Out,
                    failure: r.as_ref().err().cloned(),
                    note: r.unwrap_or_default(),
                });
            }
        }
    }
    report("tshark", &outcomes);
}

fn tshark_case(tshark: &Path, c: &Case, d: &Path) -> Result<String, String> {
    let cfg = d.join("t.conf");
    xfrm_user::keyfile::write_private(&cfg, c.config()).unwrap();
    // the peer's view of the same SA, kept beside the config for debugging (INTEROP_KEEP)
    xfrm_user::keyfile::write_private(
        &d.join("t-out.json"),
        serde_json::to_vec_pretty(&c.peer_sas(Dir::Out)).unwrap(),
    )
    .unwrap();
    let plain = d.join("t-plain.pcap");
    let wire = d.join("t-wire.pcap");
    let pkts = c.plaintexts(Dir::Out);
    write_pcap(&plain, c.link, &pkts);
    run_xfrm_user(&cfg, Dir::Out, &plain, &wire)?;
    let (us, peer) = c.endpoints();
    let Alg::Gcm { icv_bits, .. } = c.sas[0].alg else {
        unreachable!()
    };
    // transport mode: the packets' own addresses are the SA's
    let uat = tshark_uat(
        c.outer,
        us,
        peer,
        c.spi(0, Dir::Out),
        icv_bits / 8,
        &c.key_material(0, Dir::Out),
    );
    let out = Command::new(tshark)
        .arg("-r")
        .arg(&wire)
        .args([
            "-o",
            "esp.enable_encryption_decode:TRUE",
            "-o",
            "esp.enable_authentication_check:TRUE",
        ])
        .args(["-o", &format!("uat:esp_sa:{uat}")])
        .args(["-o", "udp.try_heuristic_first:FALSE"])
        .args([
            "-T",
            "fields",
            "-E",
            "separator=/t",
            "-e",
            "esp.spi",
            "-e",
            "esp.sequence",
            "-e",
            "esp.icv_good",
        ])
        .args([
            "-e",
            "frame.protocols",
            "-e",
            "ip.len",
            "-e",
            "ipv6.plen",
            "-e",
            "tcp.srcport",
            "-e",
            "udp.srcport",
        ])
        .output()
        .map_err(|e| format!("tshark: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tshark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() != pkts.len() {
        return Err(format!(
            "tshark shows {} frames, {} sent",
            lines.len(),
            pkts.len()
        ));
    }
    for (i, (line, p)) in lines.iter().zip(&pkts).enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        let (spi, seq, good, protos) = (f[0], f[1], f[2], f[3]);
        if spi != format!("{:#010x}", c.spi(0, Dir::Out)) || seq != (i + 1).to_string() {
            return Err(format!("frame {i}: tshark sees SPI {spi} seq {seq}"));
        }
        if good != "1" {
            return Err(format!(
                "frame {i}: tshark's ICV check: good={good:?} (protocols {protos})"
            ));
        }
        // The decrypted packet: the innermost IP header and its L4 protocol, as in the plaintext.
        // the L4 protocol, past a hop-by-hop header
        let proto = match p[0] >> 4 {
            4 => p[9],
            _ if p[6] == 0 => p[40],
            _ => p[6],
        };
        let l4 = match proto {
            6 => "tcp",
            17 => "udp",
            1 => "icmp",
            58 => "icmpv6",
            x => return Err(format!("protocol {x}")),
        };
        let layers: Vec<&str> = protos.split(':').collect();
        let esp_at = layers
            .iter()
            .position(|l| *l == "esp")
            .ok_or(format!("frame {i}: no esp in {protos}"))?;
        let after: Vec<&str> = layers[esp_at + 1..]
            .iter()
            .copied()
            .filter(|l| !l.starts_with("ipv6."))
            .collect();
        let want_fam = if p[0] >> 4 == 4 { "ip" } else { "ipv6" };
        let ok = if c.tunnel() {
            after.first() == Some(&want_fam) && after.get(1) == Some(&l4)
        } else {
            after.first() == Some(&l4)
        };
        if !ok {
            return Err(format!(
                "frame {i}: after ESP tshark decodes {after:?}, expected {}{l4}",
                if c.tunnel() {
                    format!("{want_fam}:")
                } else {
                    String::new()
                }
            ));
        }
        if c.tunnel() {
            let inner_len = if p[0] >> 4 == 4 {
                f[4].rsplit(',').next().unwrap_or("").parse::<usize>().ok()
            } else {
                f[5].rsplit(',')
                    .next()
                    .unwrap_or("")
                    .parse::<usize>()
                    .ok()
                    .map(|n| n + 40)
            };
            if inner_len != Some(p.len()) {
                return Err(format!(
                    "frame {i}: tshark's inner IP length {inner_len:?}, sent {}",
                    p.len()
                ));
            }
        }
    }
    Ok(format!("tshark: {} frames, ICV correct", pkts.len()))
}
