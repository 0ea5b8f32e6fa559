//! What the workers run on (the databases and the input tables derived from them) and a
//! change to it: the SAs that leave, those that come, the policies when they changed. Each
//! worker applies a change to its own copy between two batches (handover.rs); the control
//! plane applies the same change to its copy when it commits.

use super::handover::Apply;
use crate::policy::Policy;
use crate::xfrm::state::SaRef;
use crate::xfrm::{InputTables, XfrmDb};

#[derive(Clone)]
pub struct Tables {
    pub db: XfrmDb,
    pub input: InputTables,
}

impl Tables {
    pub fn new(db: XfrmDb) -> Self {
        let input = InputTables::new(&db);
        Self { db, input }
    }
}

/// One change. Its cost to apply is its own size (plus the policies' when they changed),
/// whatever the number of SAs.
#[derive(Clone, Default)]
pub struct TablesDelta {
    /// SAs that leave (the same objects as in the tables), applied first.
    pub removed: Vec<SaRef>,
    /// SAs that come (an updated SA: its replacement, with the same index).
    pub added: Vec<SaRef>,
    /// Every policy and the new out-policy tag, when any policy changed (checked already:
    /// `XfrmDb::check_policies`).
    pub policies: Option<(Vec<Policy>, u16)>,
    /// The input tables, when the change moves them (policies, or an SA with encap).
    pub input: Option<InputTables>,
}

impl Apply for Tables {
    type Delta = TablesDelta;

    fn apply(&mut self, d: &TablesDelta) {
        for x in &d.removed {
            self.db.remove_sa(x);
        }
        for x in &d.added {
            self.db.add_sa(x.clone());
        }
        if let Some((p, tag)) = &d.policies {
            if let Err(e) = self.db.set_policies(p.clone(), *tag) {
                // Checked before the change was published: not reached.
                log::error!("policies of a change refused after their check: {e}");
            }
        }
        if let Some(i) = &d.input {
            self.input = i.clone();
        }
    }
}

impl TablesDelta {
    /// Whether the SA map of the XDP program changes.
    pub fn sas_changed(&self) -> bool {
        !self.removed.is_empty() || !self.added.is_empty()
    }
}
