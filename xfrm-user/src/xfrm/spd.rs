//! The SPD and SAD: out-policy lookup in the kernel's order, template resolution
//! (xfrm_tmpl_resolve / xfrm_state_find), and SA lookup by (daddr, spi, proto) for input.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::policy::{Policy, PolicyDir, Template, TmplLevel};
use crate::sa::{SaConfig, XfrmId, XfrmMode, XfrmProto};
use crate::selector::FlowKey;
use crate::stats::XfrmStat;

use super::persist::SeqSlot;
use super::policy_index::PolicyIndex;
use super::state::{Clock, SaError, SaRef, SecurityAssociation, SystemClock};

/// XFRM_MAX_DEPTH: the most transforms one bundle can hold.
pub const XFRM_MAX_DEPTH: usize = 6;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DbError {
    #[error(transparent)]
    Sa(#[from] SaError),
    /// xfrm_state_add: -EEXIST for a second state with the same (daddr, spi, proto).
    #[error("state {0}: an SA with the same dst, spi and proto exists already")]
    DuplicateState(usize),
    /// xfrm_policy_insert_list with excl (ip xfrm policy add): -EEXIST for a second policy
    /// with the same selector and direction.
    #[error("policy {0}: a policy with the same selector and direction exists already")]
    DuplicatePolicy(usize),
    #[error("policy {0}: more than {XFRM_MAX_DEPTH} templates")]
    TooManyTemplates(usize),
    #[error("{slots} counter slots for {states} states")]
    SlotCount { states: usize, slots: usize },
}

/// The databases one datapath runs on: every SA and every policy of a config.
///
/// A running gateway changes it in place, SA by SA ([`Self::add_sa`], [`Self::remove_sa`]:
/// each worker applies the same change to its own copy between two batches, see
/// ctl/handover.rs), so a change costs the same with 10 000 SAs as with 10.
#[derive(Clone)]
pub struct XfrmDb {
    /// In index order (newest last).
    states: Vec<SaRef>,
    /// Per direction, in lookup order (see `sort_like_the_kernel`).
    out: Vec<Policy>,
    inp: Vec<Policy>,
    fwd: Vec<Policy>,
    /// `out`, `inp`, `fwd` indexed: a lookup costs the same with 1 024 policies as with one.
    index: [PolicyIndex; 3],
    by_id: FastMap<XfrmId, SaRef>,
    /// What a template names of an SA (daddr, proto, mode, reqid) → the SAs that have it, in
    /// index order: xfrm_state_find's bydst hash, so a lookup meets the few candidates and
    /// not every SA.
    by_tmpl: FastMap<TmplKey, Vec<SaRef>>,
    clock: Arc<dyn Clock>,
    policy_tag: u16,
}

type TmplKey = (IpAddr, XfrmProto, XfrmMode, u32);

fn tmpl_key(x: &SecurityAssociation) -> TmplKey {
    let c = &x.cfg;
    (c.id.daddr, c.id.proto, c.mode, c.reqid)
}

/// The per-packet tables: filled once at start, then only read, so a packet cannot grow a
/// collision chain; foldhash instead of SipHash halves the lookup (benches/lookup.rs).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

impl std::fmt::Debug for XfrmDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XfrmDb")
            .field("states", &self.states.len())
            .field("out", &self.out.len())
            .field("in", &self.inp.len())
            .field("fwd", &self.fwd.len())
            .finish()
    }
}

/// The order in which the kernel's lookup meets the policies of one direction.
///
/// Lower priority value first. For equal priority the policy added first wins:
/// xfrm_policy_insert -> xfrm_policy_insert_list walks the bydst chain and inserts the new
/// policy *behind* every policy whose priority is <= its own (`if (policy->priority >=
/// pol->priority) newpos = pol;` then hlist_add_behind_rcu), and the inexact lists keep the
/// same rule through `pos`: __xfrm_policy_eval_candidates prefers, among equal priorities,
/// the candidate with the lower insertion position ("matches. Is it older than *prefer?").
/// So a stable sort by priority over the config order gives the kernel's order.
fn sort_like_the_kernel(p: &mut [Policy]) {
    p.sort_by_key(|p| (p.priority, p.index));
}

impl XfrmDb {
    /// Builds the databases with the wall clock.
    pub fn new(states: Vec<SaConfig>, policies: Vec<Policy>) -> Result<Self, DbError> {
        Self::with_clock(states, policies, Arc::new(SystemClock))
    }

    /// With the SAs' counters in memory (nothing survives the process).
    pub fn with_clock(
        states: Vec<SaConfig>,
        policies: Vec<Policy>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, DbError> {
        let slots = states.iter().map(|_| SeqSlot::in_memory()).collect();
        Self::with_slots(states, policies, clock, slots)
    }

    /// With each SA's counters in `slots[i]` (a state file's records, see persist.rs), one
    /// per state in config order.
    pub fn with_slots(
        states: Vec<SaConfig>,
        policies: Vec<Policy>,
        clock: Arc<dyn Clock>,
        slots: Vec<SeqSlot>,
    ) -> Result<Self, DbError> {
        if slots.len() != states.len() {
            return Err(DbError::SlotCount {
                states: states.len(),
                slots: slots.len(),
            });
        }
        let mut ids = std::collections::HashSet::new();
        if let Some(i) = states.iter().position(|c| !ids.insert(c.id)) {
            return Err(DbError::DuplicateState(i));
        }
        let now = clock.now();
        let mut sas = Vec::with_capacity(states.len());
        for (i, (cfg, slot)) in states.into_iter().zip(slots).enumerate() {
            sas.push(Arc::new(SecurityAssociation::with_slot(cfg, i, now, slot)?));
        }
        Self::from_sas(sas, policies, clock, 0)
    }

    /// From running SAs (shared with an earlier database, so their counters, sequence
    /// numbers and replay windows go on) and policies. A newer SA has a higher `index`, which
    /// is what `state_find` prefers. `policy_tag` marks the out-policy ids of this database
    /// in the XDP rule table (see [`Self::policy_by_id`]).
    pub fn from_sas(
        sas: Vec<SaRef>,
        policies: Vec<Policy>,
        clock: Arc<dyn Clock>,
        policy_tag: u16,
    ) -> Result<Self, DbError> {
        let mut sas = sas;
        sas.sort_by_key(|x| x.index);
        let mut by_id = FastMap::default();
        for (i, x) in sas.iter().enumerate() {
            if by_id.insert(x.cfg.id, x.clone()).is_some() {
                return Err(DbError::DuplicateState(i));
            }
        }
        let (out, inp, fwd) = Self::sort_policies(policies)?;
        let mut by_tmpl: FastMap<TmplKey, Vec<SaRef>> = FastMap::default();
        for x in &sas {
            by_tmpl.entry(tmpl_key(x)).or_default().push(x.clone());
        }
        let index = [&out, &inp, &fwd].map(|l| PolicyIndex::build(l));
        Ok(Self {
            states: sas,
            out,
            inp,
            fwd,
            index,
            by_id,
            by_tmpl,
            clock,
            policy_tag,
        })
    }

    /// The policies of each direction in lookup order, checked (xfrm_policy_insert's
    /// refusals).
    #[allow(clippy::type_complexity)]
    fn sort_policies(
        policies: Vec<Policy>,
    ) -> Result<(Vec<Policy>, Vec<Policy>, Vec<Policy>), DbError> {
        let (mut out, mut inp, mut fwd) = (Vec::new(), Vec::new(), Vec::new());
        for (i, p) in policies.into_iter().enumerate() {
            if p.templates.len() > XFRM_MAX_DEPTH {
                return Err(DbError::TooManyTemplates(i));
            }
            let list = match p.dir {
                PolicyDir::Out => &mut out,
                PolicyDir::In => &mut inp,
                PolicyDir::Fwd => &mut fwd,
            };
            if list.iter().any(|q: &Policy| q.selector == p.selector) {
                return Err(DbError::DuplicatePolicy(i));
            }
            list.push(p);
        }
        sort_like_the_kernel(&mut out);
        sort_like_the_kernel(&mut inp);
        sort_like_the_kernel(&mut fwd);
        Ok((out, inp, fwd))
    }

    /// Checks policies as [`Self::set_policies`] would take them, without taking them.
    pub fn check_policies(policies: &[Policy]) -> Result<(), DbError> {
        Self::sort_policies(policies.to_vec()).map(|_| ())
    }

    /// Replaces every policy (a change of the SPD: its size is the policies', not the SAs').
    pub fn set_policies(&mut self, policies: Vec<Policy>, tag: u16) -> Result<(), DbError> {
        (self.out, self.inp, self.fwd) = Self::sort_policies(policies)?;
        self.index = [&self.out, &self.inp, &self.fwd].map(|l| PolicyIndex::build(l));
        self.policy_tag = tag;
        Ok(())
    }

    /// xfrm_state_add of a running SA (its index above every other's, or in its place for
    /// the replacement of an updated one): the caller checked its id is free.
    pub fn add_sa(&mut self, x: SaRef) {
        let at = self.states.partition_point(|y| y.index < x.index);
        self.states.insert(at, x.clone());
        let list = self.by_tmpl.entry(tmpl_key(&x)).or_default();
        let at = list.partition_point(|y| y.index < x.index);
        list.insert(at, x.clone());
        self.by_id.insert(x.cfg.id, x);
    }

    /// xfrm_state_delete: this SA (the same object) leaves the tables.
    pub fn remove_sa(&mut self, x: &SaRef) {
        if let Some(at) = self.position(x) {
            self.states.remove(at);
        }
        if self.by_id.get(&x.cfg.id).is_some_and(|y| Arc::ptr_eq(y, x)) {
            self.by_id.remove(&x.cfg.id);
        }
        let k = tmpl_key(x);
        if let Some(list) = self.by_tmpl.get_mut(&k) {
            list.retain(|y| !Arc::ptr_eq(y, x));
            if list.is_empty() {
                self.by_tmpl.remove(&k);
            }
        }
    }

    /// Where `x` is in index order (a binary search, then the few of the same index).
    fn position(&self, x: &SaRef) -> Option<usize> {
        let from = self.states.partition_point(|y| y.index < x.index);
        self.states[from..]
            .iter()
            .take_while(|y| y.index == x.index)
            .position(|y| Arc::ptr_eq(y, x))
            .map(|i| from + i)
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The tag of this database's out-policy ids (0 for a database built at start).
    pub fn policy_tag(&self) -> u16 {
        self.policy_tag
    }

    /// The id the XDP rule table carries for the out policy at `pos`: the position, tagged
    /// with the database it comes from, so that a worker already on a newer database does
    /// not take a position in the old table for one in its own.
    pub fn policy_id(&self, pos: usize) -> u32 {
        (u32::from(self.policy_tag) << 16) | pos as u32
    }

    /// The out policy an XDP rule's id names, if the id is of this database.
    pub fn policy_by_id(&self, id: u32) -> Option<&Policy> {
        if (id >> 16) as u16 != self.policy_tag {
            return None;
        }
        self.out.get((id & 0xffff) as usize)
    }

    pub fn now(&self) -> u64 {
        self.clock.now()
    }
    pub fn states(&self) -> &[SaRef] {
        &self.states
    }
    pub fn state(&self, index: usize) -> Option<&SaRef> {
        self.states.get(index)
    }
    /// The policies of one direction in lookup order.
    pub fn policies(&self, dir: PolicyDir) -> &[Policy] {
        match dir {
            PolicyDir::Out => &self.out,
            PolicyDir::In => &self.inp,
            PolicyDir::Fwd => &self.fwd,
        }
    }

    /// xfrm_policy_lookup: the first policy of `dir` whose selector matches the flow.
    pub fn policy_lookup(&self, dir: PolicyDir, flow: &FlowKey) -> Option<&Policy> {
        let ix = match dir {
            PolicyDir::Out => &self.index[0],
            PolicyDir::In => &self.index[1],
            PolicyDir::Fwd => &self.index[2],
        };
        ix.lookup(self.policies(dir), flow)
    }

    /// xfrm_state_lookup: the SA an inbound ESP/AH packet names (any km state; the caller
    /// checks it is valid).
    pub fn state_lookup(&self, daddr: IpAddr, spi: u32, proto: XfrmProto) -> Option<&SaRef> {
        self.by_id.get(&XfrmId { daddr, spi, proto })
    }

    /// xfrm_state_find for one template: a VALID SA with the template's dst, proto, mode,
    /// reqid, spi (when given) and src (when given; in transport mode the flow's source),
    /// usable for the flow's family and matched by the SA's selector when it has one.
    /// Among several, xfrm_state_look_at prefers one that is not dying, then the newest.
    pub fn state_find(&self, t: &Template, flow: &FlowKey) -> Option<&SaRef> {
        let src = match (t.src, t.mode) {
            (Some(s), _) => Some(s),
            (None, XfrmMode::Transport) => Some(flow.src),
            (None, XfrmMode::Tunnel) => None,
        };
        let mut best: Option<&SaRef> = None;
        let candidates = self
            .by_tmpl
            .get(&(t.dst, t.proto, t.mode, t.reqid))
            .map_or(&[][..], Vec::as_slice);
        for x in candidates {
            let c = &x.cfg;
            if t.spi.is_some_and(|s| s != c.id.spi)
                || src.is_some_and(|s| s != c.saddr)
                || !x.is_valid()
                || !sa_covers_flow(c, flow)
            {
                continue;
            }
            best = match best {
                Some(b) if !b.is_dying() && x.is_dying() => Some(b),
                Some(b) if b.is_dying() == x.is_dying() && b.index > x.index => Some(b),
                _ => Some(x),
            };
        }
        best
    }

    /// xfrm_tmpl_resolve: one SA per template, in template order (the first template is
    /// applied first, i.e. innermost, as xfrm_bundle_create chains them). A `level use`
    /// template without an SA is skipped; a `required` one fails the lookup with
    /// XfrmOutNoStates (the kernel would ask the key manager and queue or drop).
    pub fn tmpl_resolve<'a>(
        &'a self,
        pol: &Policy,
        flow: &FlowKey,
        out: &mut [Option<&'a SaRef>; XFRM_MAX_DEPTH],
    ) -> Result<usize, XfrmStat> {
        let mut n = 0;
        for t in &pol.templates {
            match self.state_find(t, flow) {
                Some(x) => {
                    let slot = out.get_mut(n).ok_or(XfrmStat::XfrmOutBundleGenError)?;
                    *slot = Some(x);
                    n += 1;
                }
                None if t.level == TmplLevel::Use => continue,
                None => return Err(XfrmStat::XfrmOutNoStates),
            }
        }
        Ok(n)
    }
}

/// Can this SA carry a packet of the flow's family, and does its selector (when it has
/// one) match? xfrm_state_look_at skips a state whose sel.family is set and differs from
/// the flow's, or whose selector does not match. Without `sel`, the kernel sets sel.family
/// to the SA's own family unless `flag af-unspec` is given (copy_from_user_state), which is
/// why a 4-in-6 or 6-in-4 tunnel needs af-unspec or an explicit selector of the inner family.
pub fn sa_covers_flow(c: &SaConfig, flow: &FlowKey) -> bool {
    match &c.selector {
        Some(sel) => sel.src.addr.is_ipv4() == flow.src.is_ipv4() && sel.matches(flow),
        None => c.flags.af_unspec || c.id.daddr.is_ipv4() == flow.src.is_ipv4(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyAction;
    use crate::sa::AuthAlgo;
    use crate::selector::{PortMatch, Prefix, Selector};
    use crate::xfrm::state::tests::{ah_cfg, esp_cfg};

    fn sel(src: &str, dst: &str) -> Selector {
        let p = |s: &str| {
            let (a, l) = s.split_once('/').unwrap();
            Prefix {
                addr: a.parse().unwrap(),
                len: l.parse().unwrap(),
            }
        };
        Selector {
            src: p(src),
            dst: p(dst),
            proto: 0,
            sport: PortMatch::ANY,
            dport: PortMatch::ANY,
        }
    }

    pub(crate) fn tmpl(dst: &str, proto: XfrmProto, mode: XfrmMode, reqid: u32) -> Template {
        Template {
            src: None,
            dst: dst.parse().unwrap(),
            proto,
            spi: None,
            reqid,
            mode,
            level: TmplLevel::Required,
        }
    }

    fn pol(s: Selector, prio: u32, index: u32, action: PolicyAction, t: Vec<Template>) -> Policy {
        Policy {
            selector: s,
            dir: PolicyDir::Out,
            priority: prio,
            action,
            templates: t,
            index,
        }
    }

    fn flow(src: &str, dst: &str) -> FlowKey {
        FlowKey {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: 17,
            sport: 1,
            dport: 2,
        }
    }

    #[test]
    fn lower_priority_value_wins_then_first_added() {
        let pols = vec![
            pol(
                sel("10.0.0.0/8", "10.0.0.0/8"),
                200,
                0,
                PolicyAction::Allow,
                vec![],
            ),
            pol(
                sel("10.1.0.0/16", "0.0.0.0/0"),
                100,
                1,
                PolicyAction::Block,
                vec![],
            ),
            pol(
                sel("0.0.0.0/0", "10.2.0.0/16"),
                100,
                2,
                PolicyAction::Allow,
                vec![],
            ),
        ];
        let db = XfrmDb::new(vec![], pols).unwrap();
        // Matches all three: priority 100 beats 200; of the two at 100, the first added.
        let p = db
            .policy_lookup(PolicyDir::Out, &flow("10.1.0.1", "10.2.0.1"))
            .unwrap();
        assert_eq!(p.index, 1);
        let p = db
            .policy_lookup(PolicyDir::Out, &flow("10.3.0.1", "10.2.0.1"))
            .unwrap();
        assert_eq!(p.index, 2);
        let p = db
            .policy_lookup(PolicyDir::Out, &flow("10.3.0.1", "10.4.0.1"))
            .unwrap();
        assert_eq!(p.index, 0);
        assert!(db
            .policy_lookup(PolicyDir::Out, &flow("fd00::1", "fd00::2"))
            .is_none());
        assert!(db
            .policy_lookup(PolicyDir::In, &flow("10.1.0.1", "10.2.0.1"))
            .is_none());
    }

    #[test]
    fn duplicates_are_refused() {
        let s = esp_cfg(5, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
        assert_eq!(
            XfrmDb::new(vec![s.clone(), s], vec![]).unwrap_err(),
            DbError::DuplicateState(1)
        );
        let p = pol(
            sel("10.0.0.0/8", "10.0.0.0/8"),
            1,
            0,
            PolicyAction::Allow,
            vec![],
        );
        let mut q = p.clone();
        q.priority = 7;
        q.index = 1;
        assert_eq!(
            XfrmDb::new(vec![], vec![p.clone(), q.clone()]).unwrap_err(),
            DbError::DuplicatePolicy(1)
        );
        q.dir = PolicyDir::In;
        assert!(XfrmDb::new(vec![], vec![p, q]).is_ok());
    }

    /// The indexed lookup finds what a scan of every SA (the definition) finds, over many
    /// SAs that share addresses, protocols, modes and reqids, some of them dying.
    #[test]
    fn indexed_state_find_agrees_with_a_full_scan() {
        let scan = |db: &XfrmDb, t: &Template, f: &FlowKey| -> Option<u32> {
            let src = match (t.src, t.mode) {
                (Some(s), _) => Some(s),
                (None, XfrmMode::Transport) => Some(f.src),
                (None, XfrmMode::Tunnel) => None,
            };
            let mut best: Option<&SaRef> = None;
            for x in db.states() {
                let c = &x.cfg;
                if c.id.daddr != t.dst
                    || c.id.proto != t.proto
                    || c.mode != t.mode
                    || c.reqid != t.reqid
                    || t.spi.is_some_and(|s| s != c.id.spi)
                    || src.is_some_and(|s| s != c.saddr)
                    || !x.is_valid()
                {
                    continue;
                }
                best = match best {
                    Some(b) if !b.is_dying() && x.is_dying() => Some(b),
                    Some(b) if b.is_dying() == x.is_dying() && b.index > x.index => Some(b),
                    _ => Some(x),
                };
            }
            best.map(|x| x.spi())
        };
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let addrs = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "10.1.0.1"];
        let modes = [XfrmMode::Tunnel, XfrmMode::Transport];
        let mut states = Vec::new();
        for spi in 0x100..0x100 + 300u32 {
            let mut c = esp_cfg(
                spi,
                addrs[next(4) as usize],
                addrs[next(4) as usize],
                modes[next(2) as usize],
            );
            c.reqid = next(3) as u32;
            states.push(c);
        }
        let db = XfrmDb::new(states, vec![]).unwrap();
        for i in 0..db.states().len() {
            if next(4) == 0 {
                db.state(i).unwrap().set_dying();
            }
        }
        let mut found = 0;
        for _ in 0..2000 {
            let mut t = tmpl(
                addrs[next(4) as usize],
                XfrmProto::Esp,
                modes[next(2) as usize],
                next(3) as u32,
            );
            if next(5) == 0 {
                t.spi = Some(0x100 + next(300) as u32);
            }
            let f = flow(addrs[next(4) as usize], addrs[next(4) as usize]);
            let want = scan(&db, &t, &f);
            assert_eq!(db.state_find(&t, &f).map(|x| x.spi()), want, "{t:?} {f:?}");
            found += usize::from(want.is_some());
        }
        assert!(found > 500, "the cases must mostly find an SA: {found}");
    }

    #[test]
    fn template_resolution() {
        let mut a = esp_cfg(0x10, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
        a.reqid = 1;
        let mut b = esp_cfg(0x11, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
        b.reqid = 1; // newer: preferred over a
        let mut c = ah_cfg(
            0x20,
            "10.1.0.1",
            "10.2.0.1",
            XfrmMode::Transport,
            AuthAlgo::HmacSha1,
        );
        c.reqid = 2;
        let db = XfrmDb::new(vec![a, b, c], vec![]).unwrap();
        let f = flow("10.1.0.1", "10.2.0.1");
        let t = tmpl("192.0.2.2", XfrmProto::Esp, XfrmMode::Tunnel, 1);
        assert_eq!(db.state_find(&t, &f).unwrap().spi(), 0x11);
        // A dying SA loses against a fresh one.
        db.state(1).unwrap().set_dying();
        assert_eq!(db.state_find(&t, &f).unwrap().spi(), 0x10);
        // spi pinned by the template.
        let mut t2 = t;
        t2.spi = Some(0x11);
        assert_eq!(db.state_find(&t2, &f).unwrap().spi(), 0x11);
        // reqid, mode, proto must match.
        assert!(db
            .state_find(&tmpl("192.0.2.2", XfrmProto::Esp, XfrmMode::Tunnel, 9), &f)
            .is_none());
        assert!(db
            .state_find(&tmpl("192.0.2.2", XfrmProto::Ah, XfrmMode::Tunnel, 1), &f)
            .is_none());
        // Transport: the SA's source must be the flow's source.
        let tt = tmpl("10.2.0.1", XfrmProto::Ah, XfrmMode::Transport, 2);
        assert_eq!(db.state_find(&tt, &f).unwrap().spi(), 0x20);
        assert!(db.state_find(&tt, &flow("10.1.0.9", "10.2.0.1")).is_none());
        // An expired SA is not found.
        db.state(2)
            .unwrap()
            .set_km_state(super::super::state::KmState::Expired);
        assert!(db.state_find(&tt, &f).is_none());

        let p = pol(
            sel("10.0.0.0/8", "10.0.0.0/8"),
            1,
            0,
            PolicyAction::Allow,
            vec![t, tt],
        );
        let mut out = [None; XFRM_MAX_DEPTH];
        assert_eq!(
            db.tmpl_resolve(&p, &f, &mut out),
            Err(XfrmStat::XfrmOutNoStates)
        );
        let mut p2 = p.clone();
        p2.templates[1].level = TmplLevel::Use;
        assert_eq!(db.tmpl_resolve(&p2, &f, &mut out), Ok(1));
        assert_eq!(out[0].unwrap().spi(), 0x10);
    }

    #[test]
    fn cross_family_tunnel_needs_af_unspec_or_a_selector() {
        let mut s = esp_cfg(0x10, "fd00::1", "fd00::2", XfrmMode::Tunnel);
        let f4 = flow("10.1.0.1", "10.2.0.1");
        let t = tmpl("fd00::2", XfrmProto::Esp, XfrmMode::Tunnel, 1);
        let db = XfrmDb::new(vec![s.clone()], vec![]).unwrap();
        assert!(db.state_find(&t, &f4).is_none());
        s.flags.af_unspec = true;
        let db = XfrmDb::new(vec![s.clone()], vec![]).unwrap();
        assert!(db.state_find(&t, &f4).is_some());
        s.flags.af_unspec = false;
        s.selector = Some(sel("10.1.0.0/16", "10.2.0.0/16"));
        let db = XfrmDb::new(vec![s], vec![]).unwrap();
        assert!(db.state_find(&t, &f4).is_some());
        assert!(db.state_find(&t, &flow("10.9.0.1", "10.2.0.1")).is_none());
    }
}
