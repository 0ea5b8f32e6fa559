//! Loading the XDP object (aya), attaching it, filling its maps, reading its counters, and
//! forwarding its aya-log records to the `log` crate.

mod attach;
mod log_pump;
mod maps;
mod object;
#[cfg(feature = "test-support")]
mod test_run;

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use aya::{
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
use xfrm_common::{
    Config, SaKey, PROG_CLASSIFY, PROG_LOCAL_OUT, PROG_OUTSIDE, PROG_PASS, TABLE_SLOTS,
};

use attach::Persistent;
pub use attach::{detach_xfrm_programs, AttachMode, Detached};
use log_pump::LogPump;
use maps::SlotKeys;
pub use maps::{Counters, Table};
pub use object::{default_object_path, resolve_object, ENV_BPF_OBJ};
#[cfg(feature = "test-support")]
pub use test_run::{TestRunOutcome, XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};

/// The programs of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// `xfrm_classify`: the inside interface (policy lookup).
    Inside,
    /// `xfrm_outside`: the outside interface (inbound SA lookup; one-armed: then policies).
    Outside,
    /// `xfrm_pass`: passes everything; the peer figure of the benchmarks.
    Pass,
}

impl Program {
    pub fn name(self) -> &'static str {
        match self {
            Self::Inside => PROG_CLASSIFY,
            Self::Outside => PROG_OUTSIDE,
            Self::Pass => PROG_PASS,
        }
    }
}

/// The loaded XDP object: programs verified and in the kernel, maps reachable.
pub struct Datapath {
    ebpf: Ebpf,
    /// Which half of each table's two slots is live, by [`Table::id`] (the other one is
    /// written on the next update).
    live_half: [u32; 3],
    /// What CONFIG holds (written whole on every change).
    config: Config,
    /// Index entries of each slot.
    slot_keys: [SlotKeys; TABLE_SLOTS as usize],
    /// What SAS holds.
    sas: std::collections::HashMap<SaKey, u32>,
    /// Netlink-mode attachments: left in place by Drop (fail closed), removed only by
    /// [`Self::detach_persistent`].
    persistent: Vec<Persistent>,
    /// The interface whose egress runs `xfrm_local_out` (see [`Self::attach_local_out`]).
    local_out: Option<String>,
    logs: Option<LogPump>,
    /// Programs found on interfaces before attaching, taken while privileged
    /// ([`Self::remember_previous`]): opening a program by id needs CAP_SYS_ADMIN, which the
    /// daemon has dropped by the time it attaches.
    previous: Vec<(String, AttachMode, aya::programs::ProgramFd)>,
}

impl Datapath {
    /// Load and verify both programs; start forwarding the program's aya-log records to `log`.
    /// The program's log level follows `log::max_level()` (RUST_LOG), so disabled levels cost
    /// nothing in the kernel (the verifier prunes them).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let level = log::max_level() as u8;
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, false)
            .load(&bytes)
            .with_context(|| format!("load {}", path.display()))?;
        let logs = match EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(LogPump::start(logger)?),
            Err(e) => {
                log::warn!("eBPF logs unavailable: {e}");
                None
            }
        };
        for name in [PROG_CLASSIFY, PROG_OUTSIDE, PROG_PASS] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("{}: no program {name}", path.display()))?
                .try_into()?;
            prog.load()
                .map_err(|e| super::explain::load_error(name, e))?;
        }
        let local: &mut SchedClassifier = ebpf
            .program_mut(PROG_LOCAL_OUT)
            .ok_or_else(|| anyhow!("{}: no program {PROG_LOCAL_OUT}", path.display()))?
            .try_into()?;
        local
            .load()
            .map_err(|e| super::explain::load_error(PROG_LOCAL_OUT, e))?;
        let mut dp = Self {
            ebpf,
            live_half: [0; 3],
            config: Config::default(),
            slot_keys: Default::default(),
            sas: Default::default(),
            persistent: Vec::new(),
            local_out: None,
            logs,
            previous: Vec::new(),
        };
        for t in [Table::Out, Table::In, Table::Fwd] {
            dp.set_policies(t, &[])?;
        }
        Ok(dp)
    }

    /// Load the object found by [`resolve_object`].
    pub fn load_default(explicit: Option<&Path>) -> Result<Self> {
        let path = resolve_object(explicit)?;
        log::debug!("loading XDP object {}", path.display());
        Self::load(&path)
    }

    fn prog(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?)
    }

    /// How many instructions the verifier processed for each program (its budget is 1M):
    /// the headroom left for the program to grow.
    pub fn verifier_stats(&self) -> Result<Vec<(&'static str, u32)>> {
        [PROG_CLASSIFY, PROG_OUTSIDE]
            .into_iter()
            .map(|name| {
                let prog: &Xdp = self
                    .ebpf
                    .program(name)
                    .ok_or_else(|| anyhow!("no program {name}"))?
                    .try_into()?;
                let n = prog.info()?.verified_instruction_count().unwrap_or(0);
                Ok((name, n))
            })
            .collect()
    }

    /// Drain pending eBPF log records now (they are also drained every 100 ms).
    pub fn flush_logs(&mut self) {
        if let Some(p) = &self.logs {
            p.flush_now();
        }
    }
}
