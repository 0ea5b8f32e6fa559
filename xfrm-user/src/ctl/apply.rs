//! One control request end to end, on the run loop: a read is answered from the store; a
//! change is prepared (a refused one changes nothing), compiled for the XDP maps (a table
//! too large is refused before anything moves), handed to the workers and acknowledged by
//! each, written to the maps, and only then committed (store and state file), told to
//! `monitor` and answered.
//!
//! The workers go first: what the maps newly send them (a new SA's SPI) finds tables that
//! know it. Between the two, a packet classified by the old XDP rules carries an id of the
//! old policy table, which the worker's tag check turns into its own lookup.
//!
//! Every step costs what the change holds: the SA map entries of the SAs it removes and adds
//! (`Datapath::change_sas`), the policy tables only when a policy changed, the NAT-T ports
//! only when they moved.

use std::{path::Path, sync::Arc, time::Duration, time::Instant};

use anyhow::Result;

use super::{
    handover::Handover,
    render::Show,
    store::{Executed, Store, Tables, TablesDelta},
};
use crate::config::request::Request;
use crate::datapath::{
    loader::{Datapath, Table},
    rules::{compile_db, compile_inbound, encap_ports, sa_entry},
};
use crate::policy::PolicyDir;
use crate::xfrm::{SystemClock, XfrmDb};
use xfrm_common::{EncapPort, PolicyRule, SaKey, MAX_ENCAP_PORTS};

/// How long a change waits for every worker to take it (a worker takes it between two
/// batches, within a millisecond or so; one that does not is stuck).
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the XDP maps get from a change: the SA entries to remove and to insert, the NAT-T
/// ports when they moved, the policy tables (out, in, fwd) when a policy changed.
pub struct Compiled {
    pub remove: Vec<SaKey>,
    pub insert: Vec<(SaKey, u32)>,
    pub ports: Option<[EncapPort; MAX_ENCAP_PORTS]>,
    pub rules: Option<(Vec<PolicyRule>, Vec<PolicyRule>, Vec<PolicyRule>)>,
}

/// Compiles a change for the XDP maps; a change they cannot take is an error here, before
/// anything moves.
pub fn compile(d: &TablesDelta) -> Result<Compiled> {
    let remove = d.removed.iter().map(|x| sa_entry(x).0).collect();
    let insert = d.added.iter().map(|x| sa_entry(x)).collect();
    let ports = d.input.as_ref().map(encap_ports).transpose()?;
    let rules = match &d.policies {
        Some((policies, tag)) => {
            // The rules need the policies in lookup order and their tagged ids: a
            // database of them alone (no SA) gives both.
            let db = XfrmDb::from_sas(Vec::new(), policies.clone(), Arc::new(SystemClock), *tag)?;
            Some((
                compile_db(&db)?,
                compile_inbound(&db, PolicyDir::In)?,
                compile_inbound(&db, PolicyDir::Fwd)?,
            ))
        }
        None => None,
    };
    Ok(Compiled {
        remove,
        insert,
        ports,
        rules,
    })
}

/// One request (`text`: its words as received, kept in the state file for what it adds).
#[allow(clippy::too_many_arguments)]
pub fn control(
    req: &Request,
    text: Option<&str>,
    show: Show,
    config: &Path,
    sad: &mut Store,
    tables: &Handover<Tables>,
    dp: &mut Datapath,
    events: &tokio::sync::broadcast::Sender<String>,
) -> Result<String, String> {
    let mut p = if *req == Request::Reload {
        // All or nothing, as at start: a file with an error changes nothing.
        let cfg = crate::config::load_config(config).map_err(|errs| {
            let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            format!(
                "reload: invalid configuration (nothing applied): {}",
                lines.join("; ")
            )
        })?;
        sad.prepare_reload(cfg, Instant::now())?
    } else {
        match sad.execute(req, text, show, Instant::now())? {
            Executed::Read(body) => return Ok(body),
            Executed::Change(p) => *p,
        }
    };
    let d = p.delta.clone();
    let mut late = None;
    if d.sas_changed() || d.policies.is_some() || d.input.is_some() {
        let Compiled {
            remove,
            insert,
            ports,
            rules,
        } = compile(&d).map_err(|e| format!("request: {e:#} (nothing applied)"))?;
        p.claim_slots();
        let g = tables.publish(d.clone());
        if let Err(e) = tables.wait(g, HANDOVER_TIMEOUT) {
            log::error!("control: {e}");
            late = Some(e.to_string());
        }
        let maps = (|| -> Result<()> {
            if d.sas_changed() {
                dp.change_sas(&remove, &insert)?;
            }
            if let Some((out, inp, fwd)) = &rules {
                dp.set_out_policies(out)?;
                dp.set_policies(Table::In, inp)?;
                dp.set_policies(Table::Fwd, fwd)?;
            }
            match ports {
                Some(ports) => dp.set_encap_ports(ports),
                None => Ok(()),
            }
        })();
        if let Err(e) = maps {
            // The workers have the change; the store must say what they run.
            log::error!("control: the XDP maps refused the change: {e:#}");
            late.get_or_insert(format!("the XDP maps refused the change: {e:#}"));
        }
    }
    drop(d);
    let body = std::mem::take(&mut p.body);
    let evs = std::mem::take(&mut p.events);
    if let Err(e) = sad.commit(p) {
        log::error!("control: {e}");
        late.get_or_insert(e);
    }
    for e in evs {
        // No subscriber is not an error.
        let _ = events.send(e);
    }
    match late {
        Some(e) => Err(format!("internal: {e}; the change is in the tables")),
        None => Ok(body),
    }
}
