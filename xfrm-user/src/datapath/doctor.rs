//! `xfrm-user doctor`: what this kernel and these interfaces offer the datapath, as a table
//! and a verdict. `run` logs the kernel part and the interface facts at start; the attach
//! and socket probes are only here, since `run` then does the real thing.
//!
//! The attach probes put the pass-everything program on an interface for a moment (through
//! a bpf_link, gone with this process) and bind an AF_XDP socket to queue 0: on an interface
//! that has no XDP program yet, some NIC drivers reset their rings when the first one comes,
//! a moment without traffic. An interface that already has a program (a running gateway's)
//! is reported as it is and not touched.

use std::fmt;
use std::path::PathBuf;

use aya::programs::ProgramType;
use aya::sys::{is_helper_supported, is_program_supported, BpfHelper};

use super::neigh::{Rtnl, XdpAttachMode};
use super::{AttachMode, Datapath};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Present and usable.
    Yes,
    /// Absent; `run` needs it.
    Missing,
    /// Absent; `run` does without (or there is a way around it, in the detail).
    No,
    /// A fact, not a check.
    Info,
}

#[derive(Clone, Debug)]
pub struct Row {
    pub area: String,
    pub what: String,
    pub status: Status,
    pub detail: String,
}

fn row(area: &str, what: &str, status: Status, detail: impl Into<String>) -> Row {
    Row {
        area: area.into(),
        what: what.into(),
        status,
        detail: detail.into(),
    }
}

/// The helpers the programs call, with what each is for; `required` false for what the
/// datapath could use but does without.
const HELPERS: [(ProgramType, BpfHelper, &str, &str, bool); 8] = [
    (
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_xdp_adjust_head,
        "bpf_xdp_adjust_head",
        "the XdpMeta header in front of redirected frames",
        true,
    ),
    (
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_redirect_map,
        "bpf_redirect_map",
        "redirect to the AF_XDP sockets",
        true,
    ),
    (
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_fib_lookup,
        "bpf_fib_lookup",
        "in/fwd check when the tables disagree",
        true,
    ),
    (
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_loop,
        "bpf_loop",
        "policy index candidates",
        true,
    ),
    (
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_ringbuf_output,
        "bpf_ringbuf_output",
        "the programs' log records (aya-log)",
        false,
    ),
    (
        ProgramType::SchedClassifier,
        BpfHelper::BPF_FUNC_redirect,
        "bpf_redirect (TC)",
        "the host's own traffic to the TAP",
        true,
    ),
    (
        ProgramType::SchedClassifier,
        BpfHelper::BPF_FUNC_skb_pull_data,
        "bpf_skb_pull_data (TC)",
        "headers of the host's GSO packets",
        true,
    ),
    (
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_xdp_adjust_meta,
        "bpf_xdp_adjust_meta",
        "not used (the header travels in the frame)",
        false,
    ),
];

/// The kernel's part: release, program types, helpers. Loads only probe programs.
pub fn kernel_rows() -> Vec<Row> {
    let mut rows = vec![row(
        "kernel",
        "release",
        Status::Info,
        super::explain::kernel_release(),
    )];
    for (ty, name) in [
        (ProgramType::Xdp, "XDP programs"),
        (ProgramType::SchedClassifier, "TC (sched_cls) programs"),
    ] {
        rows.push(match is_program_supported(ty) {
            Ok(true) => row("kernel", name, Status::Yes, ""),
            Ok(false) => row("kernel", name, Status::Missing, "needed"),
            Err(e) => row(
                "kernel",
                name,
                Status::Missing,
                format!("probe failed: {e}"),
            ),
        });
    }
    for (ty, helper, name, why, required) in HELPERS {
        let absent = if required {
            Status::Missing
        } else {
            Status::No
        };
        rows.push(match is_helper_supported(ty, helper) {
            Ok(true) => row("helper", name, Status::Yes, why),
            Ok(false) => row("helper", name, absent, why),
            Err(e) => row("helper", name, absent, format!("probe failed: {e}")),
        });
    }
    rows
}

/// The programs of the object, as `run` loaded and verified them.
pub fn object_rows(loaded: &anyhow::Result<Datapath>) -> Vec<Row> {
    match loaded {
        Ok(dp) => {
            let mut rows = Vec::new();
            match dp.verifier_stats() {
                Ok(stats) => {
                    for (name, n) in stats {
                        rows.push(row(
                            "object",
                            name,
                            Status::Yes,
                            format!("verified, {n} of the verifier's 1000000 instructions"),
                        ));
                    }
                }
                Err(e) => rows.push(row("object", "programs", Status::Yes, format!("{e:#}"))),
            }
            rows.push(row(
                "object",
                "xfrm_local_out, xfrm_pass",
                Status::Yes,
                "verified",
            ));
            rows
        }
        Err(e) => vec![row("object", "programs", Status::Missing, format!("{e:#}"))],
    }
}

/// Facts of an interface that change nothing: index, driver, MTU, queues, its XDP program.
pub fn interface_facts(role: &str, iface: &str) -> Vec<Row> {
    let link = match super::neigh::interface(iface) {
        Ok(l) => l,
        Err(e) => return vec![row(role, iface, Status::Missing, format!("{e:#}"))],
    };
    let driver = ethtool_driver(iface).unwrap_or_else(|| "unknown".into());
    let queues = match ethtool_channels(iface) {
        Some((rx, combined)) => format!("{} rx queue(s)", rx.max(combined)),
        None => "queue count unknown".into(),
    };
    let mut rows = vec![row(
        role,
        iface,
        Status::Info,
        format!(
            "ifindex {}, driver {driver}, mtu {}, {queues}",
            link.index, link.mtu
        ),
    )];
    if let Some(p) = attached_program(iface) {
        rows.push(row(role, "XDP program now", Status::Info, p.to_string()));
    }
    rows
}

/// The receive queues an interface has (rx or combined channels), if the driver says.
pub fn rx_queues(iface: &str) -> Option<u32> {
    ethtool_channels(iface).map(|(rx, combined)| rx.max(combined))
}

/// The XDP program an interface runs now (the first mode that has one).
struct Attached {
    name: String,
    id: u32,
    mode: XdpAttachMode,
}

impl fmt::Display for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            XdpAttachMode::Drv => "native",
            XdpAttachMode::Skb => "skb",
            XdpAttachMode::Hw => "offloaded",
        };
        write!(f, "{} (id {}, {mode})", self.name, self.id)
    }
}

fn attached_program(iface: &str) -> Option<Attached> {
    let (_, progs) = Rtnl::new().ok()?.xdp_programs(iface).ok()?;
    let p = progs.first()?;
    let name = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|i| i.id() == p.id)
        .and_then(|i| i.name_as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    Some(Attached {
        name,
        id: p.id,
        mode: p.mode,
    })
}

/// Attach the pass program in each mode for a moment, and bind an AF_XDP socket to queue 0
/// in zero-copy and in copy mode. Returns the rows and the XDP modes that worked.
fn interface_probes(role: &str, iface: &str, dp: &mut Datapath) -> (Vec<Row>, Vec<AttachMode>) {
    let mut rows = Vec::new();
    let mut modes = Vec::new();
    let busy = attached_program(iface);
    for (mode, word) in [
        (AttachMode::Native, "native XDP"),
        (AttachMode::Skb, "generic (skb) XDP"),
    ] {
        if let Some(p) = &busy {
            let now = matches!(
                (mode, p.mode),
                (AttachMode::Native, XdpAttachMode::Drv) | (AttachMode::Skb, XdpAttachMode::Skb)
            );
            if now {
                modes.push(mode);
                rows.push(row(role, word, Status::Yes, format!("in use: {p}")));
            } else {
                rows.push(row(
                    role,
                    word,
                    Status::Info,
                    "not probed: a program is attached",
                ));
            }
            continue;
        }
        match dp.attach_pass(iface, mode) {
            Ok(id) => {
                let _ = dp.detach_pass(id);
                modes.push(mode);
                rows.push(row(role, word, Status::Yes, ""));
            }
            Err(e) => rows.push(row(role, word, Status::No, root_cause(&e))),
        }
    }
    let mut any_xsk = false;
    for (zero_copy, word) in [(true, "AF_XDP zero-copy"), (false, "AF_XDP copy")] {
        match super::umem::probe_bind(iface, 0, zero_copy) {
            Ok(()) => {
                any_xsk = true;
                rows.push(row(role, word, Status::Yes, "queue 0"));
            }
            Err(e) if busy.is_some() => rows.push(row(
                role,
                word,
                Status::Info,
                format!("not probed while a gateway runs: {}", root_cause(&e)),
            )),
            Err(e) => rows.push(row(role, word, Status::No, root_cause(&e))),
        }
    }
    if busy.is_some() {
        any_xsk = true; // a running gateway's sockets are bound there
    }
    if !any_xsk {
        if let Some(r) = rows.last_mut() {
            r.status = Status::Missing;
        }
    }
    (rows, modes)
}

fn root_cause(e: &anyhow::Error) -> String {
    e.chain().last().map(|c| c.to_string()).unwrap_or_default()
}

/// What `doctor` is asked about.
#[derive(Clone, Debug)]
pub struct DoctorOptions {
    pub inside: String,
    pub outside: String,
    /// The mode `run` will be given, if the operator has one in mind.
    pub mode: Option<AttachMode>,
    pub queues: u32,
    pub bpf: Option<PathBuf>,
    /// Also the host's own traffic (TC egress + TAP), as `run` does without --no-local.
    pub local: bool,
}

pub struct Report {
    pub rows: Vec<Row>,
    /// Why `run` would not work, one line each (empty: it will).
    pub blockers: Vec<String>,
    /// The mode to give `run`.
    pub mode: Option<AttachMode>,
    pub command: String,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.blockers.is_empty()
    }
}

/// Every probe, in the calling thread's network namespace (root).
pub fn doctor(opts: &DoctorOptions) -> Report {
    let mut rows = kernel_rows();
    let mut blockers: Vec<String> = rows
        .iter()
        .filter(|r| r.status == Status::Missing)
        .map(|r| format!("the kernel lacks {} ({})", r.what, r.detail))
        .collect();
    // Loaded once: its rows, then its pass program for the attach probes.
    let loaded = Datapath::load_default(opts.bpf.as_deref());
    rows.extend(object_rows(&loaded));
    if let Some(r) = rows
        .iter()
        .find(|r| r.area == "object" && r.status == Status::Missing)
    {
        blockers.push(format!("the programs do not load: {}", r.detail));
    }
    let one_armed = opts.inside == opts.outside;
    let mut ifaces = vec![("inside", opts.inside.as_str())];
    if !one_armed {
        ifaces.push(("outside", opts.outside.as_str()));
    }
    let mut common: Vec<AttachMode> = vec![AttachMode::Native, AttachMode::Skb];
    let mut dp = loaded.ok();
    for (role, iface) in ifaces {
        let facts = interface_facts(role, iface);
        let exists = facts.first().is_some_and(|r| r.status != Status::Missing);
        rows.extend(facts);
        if !exists {
            blockers.push(format!("no interface {iface}"));
            common.clear();
            continue;
        }
        if let Some(q) = rx_queues(iface) {
            if opts.queues > q {
                blockers.push(format!(
                    "{iface} has {q} receive queue(s), --queues {} asks for more",
                    opts.queues
                ));
            }
        }
        let Some(dp) = dp.as_mut() else {
            continue;
        };
        let (r, modes) = interface_probes(role, iface, dp);
        if r.iter().any(|r| r.status == Status::Missing) {
            blockers.push(format!("{iface}: no AF_XDP socket can be bound"));
        }
        rows.extend(r);
        common.retain(|m| modes.contains(m));
    }
    let mode = match opts.mode {
        Some(m) if common.contains(&m) => Some(m),
        Some(m) => {
            blockers.push(format!(
                "--xdp-mode {} does not attach on every interface{}",
                mode_word(m),
                common
                    .first()
                    .map(|c| format!(" (use --xdp-mode {})", mode_word(*c)))
                    .unwrap_or_default()
            ));
            None
        }
        None => common.first().copied(),
    };
    if mode.is_none() && dp.is_some() && !blockers.iter().any(|b| b.contains("--xdp-mode")) {
        blockers.push("no XDP mode attaches on every interface".into());
    }
    if opts.local {
        let name = format!("xfrmdoc{}", std::process::id() % 100_000);
        match super::tap::Tap::create(&name, 1, 1500) {
            Ok(_) => rows.push(row(
                "host",
                "TAP device",
                Status::Yes,
                "the host's own traffic",
            )),
            Err(e) => {
                rows.push(row("host", "TAP device", Status::Missing, root_cause(&e)));
                blockers.push(
                    "no TAP device (run with --no-local to leave the host's own traffic alone)"
                        .into(),
                );
            }
        }
    }
    let command = format!(
        "xfrm-user run --config FILE --inside {} --outside {} --queues {} --xdp-mode {}{}",
        opts.inside,
        opts.outside,
        opts.queues,
        mode.map(mode_word).unwrap_or("?"),
        if opts.local { "" } else { " --no-local" }
    );
    Report {
        rows,
        blockers,
        mode,
        command,
    }
}

fn mode_word(m: AttachMode) -> &'static str {
    match m {
        AttachMode::Native => "native",
        AttachMode::Skb => "skb",
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_rows(f, &self.rows)?;
        if self.ok() {
            writeln!(f, "verdict: run will work here: {}", self.command)
        } else {
            writeln!(f, "verdict: run will NOT work here:")?;
            for b in &self.blockers {
                writeln!(f, "  - {b}")?;
            }
            Ok(())
        }
    }
}

/// The rows as an aligned table.
pub fn write_rows(f: &mut dyn fmt::Write, rows: &[Row]) -> fmt::Result {
    let w = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    for r in rows {
        let status = match r.status {
            Status::Yes => "yes",
            Status::Missing => "MISSING",
            Status::No => "no",
            Status::Info => "",
        };
        writeln!(f, "{:<8} {:<w$} {:<7} {}", r.area, r.what, status, r.detail)?;
    }
    Ok(())
}

/// What `run` logs at start: the kernel and the interfaces as they are (no probe that
/// attaches or binds anything: `run` is about to do that for real).
pub fn startup_summary(inside: &str, outside: &str) -> String {
    let mut rows = kernel_rows();
    rows.extend(interface_facts("inside", inside));
    if inside != outside {
        rows.extend(interface_facts("outside", outside));
    }
    let mut s = String::new();
    let _ = write_rows(&mut s, &rows);
    s
}

// struct ethtool_drvinfo / ethtool_channels through SIOCETHTOOL (linux/ethtool.h).
const ETHTOOL_GDRVINFO: u32 = 0x3;
const ETHTOOL_GCHANNELS: u32 = 0x3c;

#[repr(C)]
struct IfReqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

fn ethtool<T>(iface: &str, cmd: &mut T) -> Option<()> {
    if iface.is_empty() || iface.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (d, s) in name.iter_mut().zip(iface.bytes()) {
        *d = s as libc::c_char;
    }
    let mut ifr = IfReqData {
        name,
        data: (cmd as *mut T).cast(),
        _pad: [0; 16],
    };
    let s = super::sys::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0).ok()?;
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCETHTOOL takes a struct ifreq whose data points at the command struct,
    // which lives across the call and is as large as the kernel writes for its command.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
    (r == 0).then_some(())
}

fn ethtool_driver(iface: &str) -> Option<String> {
    // cmd, driver[32], version[32], fw_version[32], bus_info[32], erom_version[32],
    // reserved2[12], five u32 counts.
    let mut info = [0u8; 196];
    info[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    ethtool(iface, &mut info)?;
    let d = &info[4..36];
    let end = d.iter().position(|&b| b == 0).unwrap_or(d.len());
    Some(String::from_utf8_lossy(&d[..end]).into_owned())
}

/// (rx_count, combined_count) of ETHTOOL_GCHANNELS.
fn ethtool_channels(iface: &str) -> Option<(u32, u32)> {
    // cmd, max_rx, max_tx, max_other, max_combined, rx_count, tx_count, other_count,
    // combined_count.
    let mut ch = [0u32; 9];
    ch[0] = ETHTOOL_GCHANNELS;
    ethtool(iface, &mut ch)?;
    Some((ch[5], ch[8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lines_up_and_the_verdict_names_the_blockers() {
        let rep = Report {
            rows: vec![
                row("kernel", "release", Status::Info, "6.18"),
                row("helper", "bpf_xdp_adjust_head", Status::Yes, "header"),
                row("inside", "AF_XDP copy", Status::Missing, "EPERM"),
            ],
            blockers: vec!["eth0: no AF_XDP socket can be bound".into()],
            mode: None,
            command: String::new(),
        };
        let text = rep.to_string();
        assert!(
            text.contains("helper   bpf_xdp_adjust_head yes     header"),
            "{text}"
        );
        assert!(text.contains("MISSING"), "{text}");
        assert!(text.contains("run will NOT work here"), "{text}");
        assert!(
            text.contains("  - eth0: no AF_XDP socket can be bound"),
            "{text}"
        );
    }

    #[test]
    fn loopback_facts_without_root() {
        // Read-only facts work for anyone; lo has no ethtool driver info.
        let rows = interface_facts("inside", "lo");
        assert_eq!(rows[0].status, Status::Info, "{:?}", rows);
        assert!(rows[0].detail.contains("ifindex 1"), "{:?}", rows);
    }
}
