//! `xfrm-user attach`: the classifier alone, before the workers exist. Loads the XDP object,
//! attaches it to one interface, installs the out policies of a config file, and prints the
//! verdict counters until told to stop. With `xsk`, one AF_XDP socket per queue takes the
//! protected packets (and shows a sample of them); they are not transformed yet, so they are
//! dropped there. Without it, protected packets are dropped in XDP (fail closed).
//!
//! `xfrm-user detach`: the other way, for the programs `xfrm-user run` leaves attached when
//! it stops (see loader.rs, "Fail closed across the death of the daemon").

use std::{
    io::Write,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use xfrm_common::PROG_LOCAL_OUT;

use super::{
    loader::{detach_xfrm_programs, AttachMode, Datapath, Detached},
    rules::compile_db,
    xsk::{XskConfig, XskSocket},
};

#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub config: PathBuf,
    pub iface: String,
    pub mode: AttachMode,
    pub bpf: Option<PathBuf>,
    pub queues: u32,
    pub xsk: bool,
    pub interval: Duration,
    /// Stop after this long (None: until `stop`).
    pub duration: Option<Duration>,
}

pub fn attach_and_watch(
    opts: &AttachOptions,
    stop: &AtomicBool,
    out: &mut dyn Write,
) -> Result<()> {
    let cfg = crate::config::load_config(&opts.config).map_err(|errs| {
        let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("invalid configuration:\n{}", lines.join("\n"))
    })?;
    let db = crate::xfrm::XfrmDb::new(cfg.states, cfg.policies)
        .map_err(|e| anyhow::anyhow!("{}: {e}", opts.config.display()))?;
    let rules = compile_db(&db)?;
    let mut dp = Datapath::load_default(opts.bpf.as_deref())?;
    // Policies, and the SAs and NAT-T ports an outside program would use.
    dp.install(&db)?;
    let mut sockets = Vec::new();
    if opts.xsk {
        for q in 0..opts.queues {
            let s = XskSocket::bind(&opts.iface, q, XskConfig::default())
                .with_context(|| format!("AF_XDP socket on {} queue {q}", opts.iface))?;
            dp.set_socket(q, s.fd())?;
            sockets.push(s);
        }
    }
    dp.attach_classifier(&opts.iface, opts.mode)?;
    writeln!(
        out,
        "xfrm-user: classifier on {} ({:?}), {} out policies, {} AF_XDP socket(s); Ctrl-C stops",
        opts.iface,
        opts.mode,
        rules.len(),
        sockets.len()
    )?;
    out.flush()?;

    let start = Instant::now();
    let mut next = start + opts.interval;
    let mut samples = 0u32;
    while !stop.load(Ordering::Relaxed) && opts.duration.is_none_or(|d| start.elapsed() < d) {
        if sockets.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
        for (q, s) in sockets.iter_mut().enumerate() {
            s.recv(Duration::from_millis(50), |f| {
                if samples < 3 {
                    samples += 1;
                    let m = f.meta.map_or("no metadata".to_string(), |m| {
                        format!(
                            "policy {} sa {} l3@{} l4@{}",
                            m.policy_id, m.sa_id, m.l3_offset, m.l4_offset
                        )
                    });
                    let _ = writeln!(
                        out,
                        "  queue {q}: {} bytes, {m} (no worker yet: dropped)",
                        f.packet.len()
                    );
                }
            })?;
        }
        if Instant::now() >= next {
            next += opts.interval;
            samples = 0;
            writeln!(
                out,
                "[{:>5.1}s] {}",
                start.elapsed().as_secs_f64(),
                dp.counters()?
            )?;
            out.flush()?;
        }
    }
    writeln!(out, "final: {}", dp.counters()?)?;
    dp.flush_logs();
    // Dropping dp detaches the program (bpf_link) and closes the maps.
    Ok(())
}

/// `xfrm-user detach --inside IF --outside IF`: takes xfrm-user's XDP programs, and its TC
/// egress filter for the host's own traffic, off each interface (each named once), says
/// what it did. The protected flows are then routed by the
/// kernel: in clear, unless its own xfrm protects them.
pub fn detach(ifaces: &[&str], out: &mut dyn Write) -> Result<()> {
    let mut seen: Vec<&str> = Vec::new();
    for &i in ifaces {
        if seen.contains(&i) {
            continue;
        }
        seen.push(i);
        for d in detach_xfrm_programs(i)? {
            match d {
                Detached::Removed { name, id } => {
                    writeln!(out, "{i}: detached {name} (program id {id})")?
                }
                Detached::Nothing => writeln!(out, "{i}: no XDP program")?,
            }
        }
        if Datapath::detach_local_out_by_name(i)? {
            writeln!(out, "{i}: detached {PROG_LOCAL_OUT} (TC egress)")?;
        }
    }
    Ok(())
}
