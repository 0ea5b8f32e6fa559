//! The pcap mode: the same output path over a capture file. Link types Ethernet (1) and
//! raw IP (101, and 228/229 IPv4/IPv6) are read, and the same link type is written. Packets
//! of allow policies come out transformed, packets without a policy (and non-IP frames
//! such as ARP) are copied unchanged, packets of block policies and failures are dropped.
//!
//! `--dir in` runs the input path the same way (`run_input`): ESP/AH packets come out
//! decrypted and verified (tunnel mode: the inner packet), packets that are not IPsec (and
//! IKE on the NAT-T port) are copied, NAT-T keepalives and dummy packets are taken in,
//! everything refused is dropped and counted.
//!
//! The clock is the capture's: the SAs are added at the first packet's timestamp and every
//! packet is processed at its own, so time lifetimes behave as they would have live.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::DataLink;

use crate::config::Config;
use crate::frame::Frame;
use crate::stats::XfrmStats;
use crate::wire::ethernet::{self, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use crate::xfrm::input::{xfrm_input, InputTables, InputVerdict};
use crate::xfrm::output::{xfrm_output, Verdict};
use crate::xfrm::spd::{DbError, XfrmDb};
use crate::xfrm::state::ManualClock;

mod records;

const HEADROOM: usize = 256;
const TAILROOM: usize = 2048;
const MAX_PACKET: usize = 65535;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Out,
    In,
}

#[derive(Debug, thiserror::Error)]
pub enum PcapModeError {
    #[error("pcap: {0}")]
    Pcap(#[from] pcap_file::PcapError),
    #[error("unsupported link type {0:?} (Ethernet, raw IP, IPv4 or IPv6 only)")]
    LinkType(DataLink),
    #[error("{0}")]
    Db(#[from] DbError),
}

/// What happened to the packets of a capture.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PcapSummary {
    pub read: u64,
    pub transformed: u64,
    /// No policy, an allow policy without transforms, or not IP: written unchanged.
    pub passed: u64,
    pub dropped: u64,
    /// Captured shorter than on the wire (snaplen): cannot be transformed, not written.
    pub truncated: u64,
}

impl std::fmt::Display for PcapSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} packets read: {} transformed, {} passed unchanged, {} dropped, {} truncated",
            self.read, self.transformed, self.passed, self.dropped, self.truncated
        )
    }
}

/// Runs the output path over the capture in `input` and writes the result to `output`.
pub fn run_output<R: Read, W: Write>(
    cfg: &Config,
    input: R,
    output: W,
    stats: &XfrmStats,
) -> Result<PcapSummary, PcapModeError> {
    let t = run_capture(
        cfg,
        input,
        output,
        |db| db,
        // A capture taken on the sending host holds the partial checksums its stack left
        // for offload (tcpdump calls them incorrect): completed, as the kernel would.
        |db, frame| match xfrm_output(db, stats, frame, None) {
            Verdict::Pass => Step::Pass,
            Verdict::Dropped(_) => Step::Drop,
            Verdict::Transformed => Step::Write,
        },
    )?;
    Ok(PcapSummary {
        read: t.read,
        transformed: t.written,
        passed: t.passed,
        dropped: t.dropped,
        truncated: t.truncated,
    })
}

/// What happened to the packets of a capture on the input path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PcapInputSummary {
    pub read: u64,
    /// IPsec undone, plaintext written.
    pub decapsulated: u64,
    /// Not IPsec, IKE, or not IP: written unchanged.
    pub passed: u64,
    /// NAT-T keepalives and dummy packets: nothing to write, nothing wrong.
    pub consumed: u64,
    pub dropped: u64,
    /// Captured shorter than on the wire (snaplen): not processed, not written.
    pub truncated: u64,
}

impl std::fmt::Display for PcapInputSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} packets read: {} decapsulated, {} passed unchanged, {} consumed, {} dropped, {} truncated",
            self.read, self.decapsulated, self.passed, self.consumed, self.dropped, self.truncated
        )
    }
}

/// Runs the input path over the capture in `input` and writes the result to `output`.
pub fn run_input<R: Read, W: Write>(
    cfg: &Config,
    input: R,
    output: W,
    stats: &XfrmStats,
) -> Result<PcapInputSummary, PcapModeError> {
    let t = run_capture(
        cfg,
        input,
        output,
        |db| {
            let tables = InputTables::new(&db);
            (db, tables)
        },
        |(db, tables), frame| match xfrm_input(db, tables, stats, frame) {
            InputVerdict::Pass => Step::Pass,
            InputVerdict::Consumed(_) => Step::Consume,
            InputVerdict::Dropped(_) => Step::Drop,
            InputVerdict::Decapsulated => Step::Write,
        },
    )?;
    Ok(PcapInputSummary {
        read: t.read,
        decapsulated: t.written,
        passed: t.passed,
        consumed: t.consumed,
        dropped: t.dropped,
        truncated: t.truncated,
    })
}

/// What the per-packet step of a capture run decided.
enum Step {
    /// Write the transformed frame.
    Write,
    /// Write the original packet unchanged.
    Pass,
    /// Nothing to write, nothing wrong (NAT-T keepalive, dummy packet).
    Consume,
    /// Refused and counted by the step.
    Drop,
}

#[derive(Default)]
struct Tally {
    read: u64,
    written: u64,
    passed: u64,
    consumed: u64,
    dropped: u64,
    truncated: u64,
}

/// The loop both directions share: read a capture, strip and restore layer 2, run `step` on
/// the IP packet in a buffer with head- and tailroom, write what it says. The SA database is
/// built at the first packet, on the capture's clock.
fn run_capture<R: Read, W: Write, S>(
    cfg: &Config,
    input: R,
    output: W,
    setup: impl Fn(XfrmDb) -> S,
    mut step: impl FnMut(&S, &mut Frame<'_>) -> Step,
) -> Result<Tally, PcapModeError> {
    let mut reader = records::Records::new(input)?;
    let header = reader.header();
    let (ethernet, only_family) = match header.datalink {
        DataLink::ETHERNET => (true, None),
        DataLink::RAW => (false, None),
        DataLink::IPV4 => (false, Some(4)),
        DataLink::IPV6 => (false, Some(6)),
        other => return Err(PcapModeError::LinkType(other)),
    };
    let mut writer = PcapWriter::with_header(
        output,
        PcapHeader {
            snaplen: header.snaplen.max(MAX_PACKET as u32),
            ..header
        },
    )?;
    let clock = Arc::new(ManualClock::new(0));
    let mut state: Option<S> = None;
    let mut buf = vec![0u8; HEADROOM + MAX_PACKET + TAILROOM];
    let mut t = Tally::default();

    while let Some(pkt) = reader.next_packet() {
        let pkt = pkt?;
        t.read += 1;
        clock.set(pkt.timestamp.as_secs());
        if state.is_none() {
            let db = XfrmDb::with_clock(cfg.states.clone(), cfg.policies.clone(), clock.clone())?;
            state = Some(setup(db));
        }
        let Some(st) = state.as_ref() else { continue };
        let data: &[u8] = &pkt.data;
        if (data.len() as u64) < u64::from(pkt.orig_len) || data.len() > MAX_PACKET {
            t.truncated += 1;
            continue;
        }
        buf[HEADROOM..HEADROOM + data.len()].copy_from_slice(data);
        let mut frame = Frame::new(&mut buf, HEADROOM, data.len());
        let l2 = if ethernet {
            match ethernet::L2Header::parse(frame.data()) {
                Ok((h, et)) if et == ETHERTYPE_IPV4 || et == ETHERTYPE_IPV6 => {
                    if frame.pull_head(h.len()).is_err() {
                        t.dropped += 1;
                        continue;
                    }
                    Some(h)
                }
                // ARP and everything else that is not IP goes by untouched.
                _ => {
                    t.passed += 1;
                    writer.write_packet(&pkt)?;
                    continue;
                }
            }
        } else {
            None
        };
        match step(st, &mut frame) {
            Step::Pass => {
                t.passed += 1;
                writer.write_packet(&pkt)?;
            }
            Step::Consume => t.consumed += 1,
            Step::Drop => t.dropped += 1,
            Step::Write => {
                if let Some(h) = l2 {
                    if ethernet::push(&mut frame, &h).is_err() {
                        t.dropped += 1;
                        continue;
                    }
                } else if let Some(v) = only_family {
                    // A 4-in-6 / 6-in-4 tunnel's result cannot go into a capture whose link
                    // type is the other family.
                    if crate::wire::ip_version(frame.data()) != Some(v) {
                        log::warn!(
                            "pcap: packet of the other family dropped (link type {:?})",
                            header.datalink
                        );
                        t.dropped += 1;
                        continue;
                    }
                }
                let out = frame.data();
                writer.write_packet(&PcapPacket::new(pkt.timestamp, out.len() as u32, out))?;
                t.written += 1;
            }
        }
    }
    Ok(t)
}

/// `xfrm-user pcap --config FILE --dir out|in --in X.pcap --out Y.pcap`: returns the exit
/// code (0 done, 1 I/O or capture error, 2 bad config) after writing the summary and the
/// non-zero counters to `err`.
pub fn pcap_main(
    config: &Path,
    dir: Direction,
    input: &Path,
    output: &Path,
    err: &mut dyn Write,
) -> u8 {
    let cfg = match crate::config::load_config(config) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                let _ = writeln!(err, "{e}");
            }
            return 2;
        }
    };
    let r = std::fs::File::open(input)
        .map_err(|e| format!("{}: {e}", input.display()))
        .and_then(|i| {
            std::fs::File::create(output)
                .map_err(|e| format!("{}: {e}", output.display()))
                .map(|o| (i, o))
        });
    let (i, o) = match r {
        Ok(x) => x,
        Err(e) => {
            let _ = writeln!(err, "xfrm-user pcap: {e}");
            return 1;
        }
    };
    let stats = XfrmStats::new();
    let (i, o) = (std::io::BufReader::new(i), std::io::BufWriter::new(o));
    let res = match dir {
        Direction::Out => run_output(&cfg, i, o, &stats).map(|s| format!("pcap out: {s}")),
        Direction::In => run_input(&cfg, i, o, &stats).map(|s| format!("pcap in: {s}")),
    };
    match res {
        Ok(sum) => {
            let _ = writeln!(err, "{sum}");
            let _ = write!(err, "{}", stats.render_nonzero());
            0
        }
        Err(e) => {
            let _ = writeln!(err, "xfrm-user pcap: {e}");
            let _ = write!(err, "{}", stats.render_nonzero());
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;
    use crate::stats::XfrmStat;
    use crate::xfrm::mode::tests::{udp4, udp6};
    use std::time::Duration;

    const CONF: &str = "\
state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1000 reqid 1 mode tunnel aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f10cafebabe 128 limit time-hard 100
policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir out priority 100 tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 1 mode tunnel
policy add src 10.1.0.0/16 dst 10.3.0.0/16 dir out priority 100 action block
";

    fn capture(link: DataLink, pkts: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut w = PcapWriter::with_header(
            Vec::new(),
            PcapHeader {
                datalink: link,
                ..Default::default()
            },
        )
        .unwrap();
        for (t, p) in pkts {
            w.write_packet(&PcapPacket::new(Duration::from_secs(*t), p.len() as u32, p))
                .unwrap();
        }
        w.into_writer()
    }

    fn read(cap: &[u8]) -> (DataLink, Vec<Vec<u8>>) {
        let mut r = pcap_file::pcap::PcapReader::new(cap).unwrap();
        let link = r.header().datalink;
        let mut v = Vec::new();
        while let Some(p) = r.next_packet() {
            v.push(p.unwrap().data.to_vec());
        }
        (link, v)
    }

    fn eth(et: [u8; 2], ip: &[u8]) -> Vec<u8> {
        let mut v = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, et[0], et[1]];
        v.extend_from_slice(ip);
        v
    }

    #[test]
    fn ethernet_capture_transformed_passed_dropped() {
        let cfg = parse_config(CONF, "test.conf").unwrap();
        let prot = udp4(0, true, b"protect me");
        let mut clear = prot.clone();
        clear[12..16].copy_from_slice(&[10, 9, 0, 1]); // no policy
        let mut blocked = prot.clone();
        blocked[16..20].copy_from_slice(&[10, 3, 0, 1]);
        let arp = eth([0x08, 0x06], &[0; 28]);
        let cap = capture(
            DataLink::ETHERNET,
            &[
                (1000, eth([0x08, 0x00], &prot)),
                (1001, eth([0x08, 0x00], &clear)),
                (1002, eth([0x08, 0x00], &blocked)),
                (1003, arp.clone()),
                (1200, eth([0x08, 0x00], &prot)), // past time-hard 100
            ],
        );
        let stats = XfrmStats::new();
        let mut out = Vec::new();
        let sum = run_output(&cfg, &cap[..], &mut out, &stats).unwrap();
        assert_eq!(
            sum,
            PcapSummary {
                read: 5,
                transformed: 1,
                passed: 2,
                dropped: 2,
                truncated: 0
            }
        );
        assert_eq!(stats.get(XfrmStat::XfrmOutPolBlock), 1);
        assert_eq!(stats.get(XfrmStat::XfrmOutStateExpired), 1);
        let (link, pkts) = read(&out);
        assert_eq!(link, DataLink::ETHERNET);
        assert_eq!(pkts.len(), 3);
        assert_eq!(&pkts[0][..12], &eth([0x08, 0], &[])[..12], "MACs kept");
        assert_eq!(&pkts[0][12..14], &[0x08, 0x00]);
        assert_eq!(pkts[0][14 + 9], 50, "ESP");
        let t = crate::xfrm::esp::esp_trailer_len(prot.len(), 0, 4);
        assert_eq!(pkts[0].len(), 14 + 20 + 16 + t.clen + 16);
        assert_eq!(pkts[1], eth([0x08, 0x00], &clear));
        assert_eq!(pkts[2], arp);
    }

    #[test]
    fn raw_ip_capture_and_link_type_kept() {
        let conf = "\
state add src fd00::a dst fd00::b proto esp spi 0x2000 reqid 2 mode tunnel aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f10cafebabe 128
policy add src fd00:1::/64 dst fd00:2::/64 dir out tmpl src fd00::a dst fd00::b proto esp reqid 2 mode tunnel
";
        let cfg = parse_config(conf, "t").unwrap();
        let p6 = udp6(0, 1, b"raw six");
        let cap = capture(DataLink::RAW, &[(5, p6.clone()), (6, udp4(0, true, b"v4"))]);
        let stats = XfrmStats::new();
        let mut out = Vec::new();
        let sum = run_output(&cfg, &cap[..], &mut out, &stats).unwrap();
        assert_eq!((sum.transformed, sum.passed), (1, 1));
        let (link, pkts) = read(&out);
        assert_eq!(link, DataLink::RAW);
        assert_eq!(pkts[0][6], 50);
        let t = crate::xfrm::esp::esp_trailer_len(p6.len(), 0, 4);
        assert_eq!(pkts[0].len(), 40 + 16 + t.clen + 16);
        // Unsupported link type.
        let cap = capture(DataLink::IEEE802_11, &[(5, p6)]);
        assert!(matches!(
            run_output(&cfg, &cap[..], Vec::new(), &stats),
            Err(PcapModeError::LinkType(_))
        ));
    }

    /// The receiving gateway's view of CONF's SA: the same state, a fwd policy.
    const CONF_RX: &str = "\
state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1000 reqid 1 mode tunnel aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f10cafebabe 128 replay-window 32 limit time-hard 100
state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1001 reqid 3 mode tunnel aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f10cafebabe 128 encap espinudp 4500 4500 0.0.0.0
policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir fwd tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 1 mode tunnel
policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir in tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 1 mode tunnel
";

    #[test]
    fn input_direction_decapsulates_passes_and_drops() {
        let tx = parse_config(CONF, "tx.conf").unwrap();
        let rx = parse_config(CONF_RX, "rx.conf").unwrap();
        let a = udp4(0, true, b"first");
        let b = udp4(0x2a, false, &[9; 300]);
        let cap = capture(
            DataLink::ETHERNET,
            &[
                (1000, eth([0x08, 0x00], &a)),
                (1001, eth([0x08, 0x00], &b)),
                (1002, eth([0x08, 0x00], &b)),
            ],
        );
        let mut wire = Vec::new();
        run_output(&tx, &cap[..], &mut wire, &XfrmStats::new()).unwrap();
        let (_, w) = read(&wire);
        // The capture the receiver sees: both ESP packets, one replayed, one tampered,
        // plaintext without a policy, plaintext a policy wants protected, ARP, an IKE
        // packet and a keepalive on 4500 (a NAT-T SA makes it an encapsulation port), and
        // an ESP packet after the SA's hard lifetime.
        let mut tampered = w[1].clone();
        *tampered.last_mut().unwrap() ^= 1;
        let clear6 = eth([0x86, 0xdd], &udp6(0, 0, b"v6"));
        let arp = eth([0x08, 0x06], &[0; 28]);
        let udp_4500 = |payload: &[u8]| {
            let mut p = udp4(0, false, payload);
            p[12..20].copy_from_slice(&[192, 0, 2, 1, 192, 0, 2, 2]);
            p[20..24].copy_from_slice(&[0x11, 0x94, 0x11, 0x94]);
            p[26..28].fill(0);
            crate::wire::Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
            eth([0x08, 0x00], &p)
        };
        let ike = udp_4500(&[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        let keepalive = udp_4500(&[0xff]);
        let cap = capture(
            DataLink::ETHERNET,
            &[
                (1000, w[0].clone()),
                (1001, w[0].clone()),
                (1001, tampered),
                (1002, w[1].clone()),
                (1003, clear6.clone()),
                (1003, eth([0x08, 0x00], &a)),
                (1004, arp.clone()),
                (1005, ike.clone()),
                (1005, keepalive),
                (1200, w[2].clone()),
            ],
        );
        let stats = XfrmStats::new();
        let mut out = Vec::new();
        let sum = run_input(&rx, &cap[..], &mut out, &stats).unwrap();
        assert_eq!(
            sum,
            PcapInputSummary {
                read: 10,
                decapsulated: 2,
                passed: 3,
                consumed: 1,
                dropped: 4,
                truncated: 0
            }
        );
        assert_eq!(stats.get(XfrmStat::XfrmInStateSeqError), 1);
        assert_eq!(stats.get(XfrmStat::XfrmInStateProtoError), 1);
        assert_eq!(stats.get(XfrmStat::XfrmInTmplMismatch), 1);
        assert_eq!(stats.get(XfrmStat::XfrmInStateExpired), 1);
        let (link, pkts) = read(&out);
        assert_eq!(link, DataLink::ETHERNET);
        assert_eq!(
            pkts,
            vec![
                eth([0x08, 0x00], &a),
                eth([0x08, 0x00], &b),
                clear6,
                arp,
                ike
            ]
        );
    }

    #[test]
    fn main_reports_both_directions() {
        let dir = std::env::temp_dir().join(format!("xfrm-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("c.conf");
        crate::keyfile::write_private(&conf, CONF).unwrap();
        let inp = dir.join("in.pcap");
        std::fs::write(&inp, capture(DataLink::RAW, &[(1000, udp4(0, true, b"x"))])).unwrap();
        let outp = dir.join("out.pcap");
        let conf_rx = dir.join("rx.conf");
        crate::keyfile::write_private(&conf_rx, CONF_RX).unwrap();
        let mut err = Vec::new();
        assert_eq!(pcap_main(&conf, Direction::Out, &inp, &outp, &mut err), 0);
        let text = String::from_utf8(err).unwrap();
        assert!(text.contains("1 packets read: 1 transformed"), "{text}");
        // And back: the wire capture through the input direction.
        let back = dir.join("back.pcap");
        let mut err = Vec::new();
        assert_eq!(
            pcap_main(&conf_rx, Direction::In, &outp, &back, &mut err),
            0
        );
        let text = String::from_utf8(err).unwrap();
        assert!(
            text.contains("pcap in: 1 packets read: 1 decapsulated"),
            "{text}"
        );
        let (_, pkts) = read(&std::fs::read(&back).unwrap());
        assert_eq!(pkts, vec![udp4(0, true, b"x")]);
        crate::keyfile::write_private(&conf, "state add bogus\n").unwrap();
        let mut err = Vec::new();
        assert_eq!(pcap_main(&conf, Direction::Out, &inp, &outp, &mut err), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
