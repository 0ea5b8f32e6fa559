//! `xfrm-user detach`: takes off the programs `xfrm-user run` leaves attached when it
//! stops (fail closed; see docs/operations.md).

use std::io::Write;

use anyhow::Result;
use xfrm_common::PROG_LOCAL_OUT;

use super::loader::{detach_xfrm_programs, Datapath, Detached};

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
