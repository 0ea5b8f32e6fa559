//! The independent peer (tests/interop/ipsec_peer.py: Scapy's scapy.layers.ipsec plus its own
//! `cryptography` engine, Linux as the reference) run over what the wire capture sampled:
//! every sampled ESP/AH packet must decrypt and verify with the case's keys, and the inner
//! packets must be the ones the hosts sent (addresses of the protected flow, payload blocks of
//! the sending side's stream, see [`crate::traffic`]).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{
    capture::{self, in_prefix, CaptureReport},
    daemon::repo_root,
    gateway::{Case, GatewayNet, Side},
    traffic::check_payload,
};

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The venv's python (tests/interop/setup.sh makes it), or None when it is missing and CI is
/// not set (the caller skips that part, saying so). In CI a missing peer is a failure.
pub fn peer_python() -> Option<PathBuf> {
    let py = repo_root().join(".tools/venv/bin/python");
    if py.exists() {
        return Some(py);
    }
    let msg = format!(
        "the Scapy peer is missing ({} does not exist); run tests/interop/setup.sh",
        py.display()
    );
    assert!(!in_ci(), "{msg} (CI is set: a missing peer is a failure)");
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP (peer part): {msg}");
    None
}

pub fn peer_script(name: &str) -> PathBuf {
    repo_root().join("tests/interop").join(name)
}

/// What the peer found in one direction.
#[derive(Clone, Debug, Default)]
pub struct DirCheck {
    /// Sampled IPsec frames given to the peer.
    pub frames: usize,
    /// Decrypted with every ICV and layout check passing.
    pub ok: usize,
    /// Inner packets by IP protocol.
    pub inner_by_proto: std::collections::BTreeMap<u8, usize>,
    /// Payload blocks of the sender's stream found in the inner TCP packets.
    pub blocks: usize,
}

/// The peer's verdict on a capture's samples, per direction (from A, from B).
#[derive(Clone, Debug, Default)]
pub struct PeerCheck {
    pub from_a: DirCheck,
    pub from_b: DirCheck,
}

impl std::fmt::Display for PeerCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, d) in [("A->B", &self.from_a), ("B->A", &self.from_b)] {
            write!(
                f,
                "{n}: {}/{} decrypted, inner {:?}, {} stream blocks; ",
                d.ok, d.frames, d.inner_by_proto, d.blocks
            )?;
        }
        Ok(())
    }
}

/// Streams of the TCP transfers from each side.
pub fn stream_of(s: Side) -> u8 {
    match s {
        Side::A => b'a',
        Side::B => b'b',
    }
}

/// Decrypt the capture's samples with the peer and check the inner packets. `work`: a
/// directory for the pcaps, SA files and reports.
pub fn check_samples(
    python: &Path,
    case: &Case,
    net: &GatewayNet,
    cap: &CaptureReport,
    work: &Path,
) -> Result<PeerCheck> {
    std::fs::create_dir_all(work)?;
    let natt = case.natt_ports();
    let mut jobs = Vec::new();
    let mut counts = [0usize; 2];
    for (i, from) in [Side::A, Side::B].into_iter().enumerate() {
        let bundle = case.bundle(net, from);
        let outer_spi = bundle.last().expect("a bundle").spi;
        let pcap = work.join(format!("wire-from-{from:?}.pcap"));
        counts[i] = cap.write_samples(&pcap, |f| {
            capture::parse(&f.data, &natt).and_then(|p| p.3.spi()) == Some(outer_spi)
        })?;
        let sa = work.join(format!("sa-from-{from:?}.json"));
        xfrm_user::keyfile::write_private(
            &sa,
            serde_json::to_string_pretty(&case.peer_json(net, from))?,
        )?;
        jobs.push(json!({
            "cmd": "decrypt",
            "name": format!("{} from {from:?}", case.name),
            "sa": sa,
            "in": pcap,
            "out": work.join(format!("plain-from-{from:?}.pcap")),
            "report": work.join(format!("report-from-{from:?}.jsonl")),
        }));
    }
    let jobs_path = work.join("jobs.json");
    std::fs::write(&jobs_path, serde_json::to_string_pretty(&jobs)?)?;
    let out = Command::new(python)
        .arg(peer_script("ipsec_peer.py"))
        .arg("batch")
        .arg(&jobs_path)
        .output()
        .context("run tests/interop/ipsec_peer.py")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if results.len() != 2 || !results.iter().all(|r| r["ok"] == json!(true)) {
        bail!(
            "the peer rejected our wire packets ({}): {}\n{}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut check = PeerCheck::default();
    for (i, from) in [Side::A, Side::B].into_iter().enumerate() {
        let d = if from == Side::A {
            &mut check.from_a
        } else {
            &mut check.from_b
        };
        d.frames = counts[i];
        let report = std::fs::read_to_string(work.join(format!("report-from-{from:?}.jsonl")))?;
        for (k, line) in report.lines().enumerate() {
            let r: Value = serde_json::from_str(line)?;
            if r["status"] != json!("ok") {
                bail!("from {from:?}: sampled packet {k}: peer says {r}");
            }
            d.ok += 1;
        }
        if d.ok != d.frames {
            bail!(
                "from {from:?}: {} sampled frames, the peer reported {}",
                d.frames,
                d.ok
            );
        }
        let plain = capture::read_pcap(&work.join(format!("plain-from-{from:?}.pcap")))?;
        if plain.len() != d.frames {
            bail!(
                "from {from:?}: {} frames in, {} inner packets out",
                d.frames,
                plain.len()
            );
        }
        let flows = case.protected_flows(net);
        let flow = flows[i];
        for (k, f) in plain.iter().enumerate() {
            let Some((off, src, dst, kind)) = capture::parse(f, &[]) else {
                bail!(
                    "from {from:?}: inner packet {k} is not IP: {}",
                    capture::hex(f)
                );
            };
            if !(in_prefix(src, flow.src) && in_prefix(dst, flow.dst)) {
                bail!(
                    "from {from:?}: inner packet {k} {src} -> {dst} is not of the protected flow \
                     {:?} -> {:?}",
                    flow.src,
                    flow.dst
                );
            }
            let proto = match kind {
                capture::Kind::Other { proto } => proto,
                k2 => bail!("from {from:?}: inner packet {k} is itself IPsec ({k2:?})"),
            };
            *d.inner_by_proto.entry(proto).or_default() += 1;
            if proto == 6 {
                let payload = tcp_payload(&f[off..]).unwrap_or(&[]);
                let c = check_payload(payload);
                if c.bad > 0 || c.streams.iter().any(|&s| s != stream_of(from)) {
                    bail!(
                        "from {from:?}: inner TCP packet {k} carries data the sender did not \
                         send: {c:?}"
                    );
                }
                d.blocks += c.good;
            }
        }
    }
    Ok(check)
}

/// The TCP payload of an IP packet (IPv4 or IPv6 without extension headers).
fn tcp_payload(ip: &[u8]) -> Option<&[u8]> {
    let (l4, end) = match ip.first()? >> 4 {
        4 => (
            usize::from(ip[0] & 0x0f) * 4,
            usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?])),
        ),
        6 => (
            40,
            40 + usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?])),
        ),
        _ => return None,
    };
    let doff = usize::from(ip.get(l4 + 12)? >> 4) * 4;
    ip.get(l4 + doff..end.min(ip.len()))
}
