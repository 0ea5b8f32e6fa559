//! Linux's own XFRM as an IPsec peer: `tests/kernel-peer/run.sh --batch DIR` boots Debian's
//! kernel under qemu (TCG, no network device) and runs every case directory of DIR in that
//! one boot (see tests/kernel-peer/README.md). This module writes the batch, runs it and
//! reads the results back; `craft` builds plaintext packets, `wire` takes ESP/AH apart.

#![allow(dead_code)] // each test binary uses its own part of the support code

pub mod craft;
pub mod wire;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::DataLink;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plaintext in (injected on the guest's protected side and forwarded), what the kernel
    /// sends on the wire out.
    Encrypt,
    /// Wire packets in, the packets XFRM decapsulated out (before any forwarding).
    Decrypt,
}

pub struct Case {
    /// Letters, digits, '-' and '_' only (a directory name in the guest).
    pub name: String,
    pub mode: Mode,
    /// The product's configuration words (`state add …` / `policy add …` lines).
    pub config: String,
    /// Raw IP packets.
    pub input: Vec<Vec<u8>>,
}

pub struct CaseResult {
    pub name: String,
    pub dir: PathBuf,
    /// "ok …" or "error …" (the guest's status line).
    pub status: String,
    /// Raw IP packets: what the kernel sent on the wire (encrypt) or decapsulated (decrypt).
    pub output: Vec<Vec<u8>>,
    /// The counters of /proc/net/xfrm_stat that changed during the case.
    pub stats: BTreeMap<String, u64>,
}

impl CaseResult {
    pub fn ok(&self) -> bool {
        self.status.starts_with("ok")
    }

    /// A side capture: "tin", "tout" (what the guest sent out of either device, besides the
    /// output), "fwd" and "local" (decapsulated packets forwarded / delivered locally).
    pub fn side(&self, name: &str) -> Vec<Vec<u8>> {
        let p = self.dir.join(format!("{name}.side.pcap"));
        if p.exists() {
            read_pcap(&p)
        } else {
            Vec::new()
        }
    }

    /// Everything worth seeing when a case goes wrong.
    pub fn describe(&self) -> String {
        let read = |f: &str| fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "case {} ({}): {}\nxfrm_stat delta: {:?}\nconfig.log:\n{}report (tail):\n{}",
            self.name,
            self.dir.display(),
            self.status,
            self.stats,
            read("config.log"),
            read("report")
                .lines()
                .rev()
                .take(12)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// True when the kernel peer can run here (root: it installs packages on first use).
/// Otherwise prints why the test is skipped, straight to fd 2 so that libtest shows it.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: the kernel peer needs root (apt-get on first use); run the test \
         command as root, as CI does"
    );
    false
}

/// Notes for the reader of the test output (straight to fd 2: not captured by libtest).
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// A directory for this checkout's test files under `$CARGO_TARGET_TMPDIR`: checkouts that
/// share a target directory (worktrees) do not overwrite each other's runs.
pub fn tmp_dir(name: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    env!("CARGO_MANIFEST_DIR").hash(&mut h);
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{:08x}", h.finish() as u32));
    fs::create_dir_all(&d).expect("create the test directory");
    d
}

/// Runs `cases` in one boot of the guest; the batch directory is
/// `tmp_dir("kernel-peer")/<label>` and is kept for inspection.
pub fn run_batch(label: &str, cases: &[Case]) -> Vec<CaseResult> {
    let dir = tmp_dir("kernel-peer").join(label);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the batch directory");
    let mut dirs = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        assert!(
            c.name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'),
            "case name {:?}",
            c.name
        );
        let d = dir.join(format!("{i:03}-{}", c.name));
        fs::create_dir_all(&d).unwrap();
        let mode = match c.mode {
            Mode::Encrypt => "encrypt\n",
            Mode::Decrypt => "decrypt\n",
        };
        fs::write(d.join("mode"), mode).unwrap();
        xfrm_user::keyfile::write_private(&d.join("config"), &c.config).unwrap();
        write_pcap(&d.join("in.pcap"), &c.input);
        dirs.push(d);
    }
    let t0 = Instant::now();
    let out = Command::new(repo_root().join("tests/kernel-peer/run.sh"))
        .arg("--batch")
        .arg(&dir)
        .output()
        .expect("run tests/kernel-peer/run.sh");
    let took = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 0: every case ok; 3: the guest ran every case, some have an error status (the caller
    // looks at them); anything else: the guest itself failed.
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "kernel peer batch {label} failed ({:?}):\n{stderr}",
        out.status
    );
    note(&format!(
        "kernel peer: batch {label}: {} cases in {:.1}s ({})",
        cases.len(),
        took.as_secs_f64(),
        stderr.lines().last().unwrap_or("")
    ));
    cases
        .iter()
        .zip(dirs)
        .map(|(c, d)| {
            let status = fs::read_to_string(d.join("status"))
                .unwrap_or_else(|_| "error: no status".into())
                .trim()
                .to_string();
            let output = if d.join("out.pcap").exists() {
                read_pcap(&d.join("out.pcap"))
            } else {
                Vec::new()
            };
            let stats = stat_delta(
                &fs::read_to_string(d.join("xfrm_stat.before")).unwrap_or_default(),
                &fs::read_to_string(d.join("xfrm_stat.after")).unwrap_or_default(),
            );
            CaseResult {
                name: c.name.clone(),
                dir: d,
                status,
                output,
                stats,
            }
        })
        .collect()
}

/// `Name value` lines (/proc/net/xfrm_stat, or xfrm-user's counters) as a map.
pub fn parse_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?;
            let v = w.next()?.parse().ok()?;
            name.starts_with("Xfrm").then(|| (name.to_string(), v))
        })
        .collect()
}

fn stat_delta(before: &str, after: &str) -> BTreeMap<String, u64> {
    let b = parse_stats(before);
    parse_stats(after)
        .into_iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(*b.get(&k).unwrap_or(&0));
            (d != 0).then_some((k, d))
        })
        .collect()
}

/// Writes raw IP packets as a pcap (link type 101).
pub fn write_pcap(path: &Path, pkts: &[Vec<u8>]) {
    let f = fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = PcapHeader {
        datalink: DataLink::RAW,
        ..Default::default()
    };
    let mut w = PcapWriter::with_header(std::io::BufWriter::new(f), header).unwrap();
    for (i, p) in pkts.iter().enumerate() {
        let ts = Duration::from_secs(1_000_000 + i as u64);
        w.write_packet(&PcapPacket::new(ts, p.len() as u32, p))
            .unwrap();
    }
}

/// Reads the packets of a pcap as raw IP (an Ethernet header, if any, is removed; frames
/// that are not IP are skipped).
pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut r = PcapReader::new(std::io::BufReader::new(f))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ethernet = r.header().datalink == DataLink::ETHERNET;
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let d: &[u8] = &p.data;
        if !ethernet {
            out.push(d.to_vec());
            continue;
        }
        let mut off = 14;
        if d.len() < off {
            continue;
        }
        let mut et = u16::from_be_bytes([d[12], d[13]]);
        while (et == 0x8100 || et == 0x88a8) && d.len() >= off + 4 {
            et = u16::from_be_bytes([d[off + 2], d[off + 3]]);
            off += 4;
        }
        if et == 0x0800 || et == 0x86dd {
            out.push(d[off..].to_vec());
        }
    }
    out
}
