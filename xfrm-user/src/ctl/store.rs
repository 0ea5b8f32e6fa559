//! The control plane's copy of the SAD and SPD, and what each request does to it.
//!
//! A change is prepared against the current tables without touching them ([`Store::prepare`]):
//! the SAs it removes and adds and the policies when they change (a `TablesDelta`), or an
//! error. Only when the caller has made the change live does it [`Store::commit`] it (the
//! same delta applied to the store's copy), so a rejected or failed request changes nothing.
//! Preparing, applying and committing cost what the change holds, not what the tables hold
//! (SAs are found through the database's maps). Unchanged SAs are the same `Arc`s: their
//! sequence numbers, replay windows and counters go on.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xfrm_common::{MAX_POLICIES, MAX_SAS};

use super::keep::{Keep, Reservations};
use super::render::{self, proto_name, Show};
use crate::config::normalized_selector;
use crate::config::request::{AllocSpi, PolicyId, Request, StateFilter, StateId};
use crate::policy::{Policy, PolicyDir};
use crate::sa::{SaConfig, XfrmId};
use crate::selector::{FlowKey, Selector};
use crate::xfrm::persist::key_fingerprint;
use crate::xfrm::state::SaRef;
use crate::xfrm::{Clock, InputTables, KmState, SecurityAssociation, XfrmDb};

pub use super::tables::{Tables, TablesDelta};

/// How long an `allocspi` reservation lasts (the kernel's larval state: XFRM_ACQ_EXPIRES).
pub const LARVAL_LIFETIME: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
struct Larval {
    id: XfrmId,
    expires: Instant,
}

/// What the control plane edits besides the SAs (which live in the tables' maps): the
/// store's, and a change's copy (small: no SA in it).
#[derive(Clone)]
struct Lists {
    /// Every direction, in the order they were added (`index` grows with it).
    policies: Vec<Policy>,
    next_sa: usize,
    next_policy: u32,
    /// The out-policy id tag of the database (`XfrmDb::policy_tag`).
    tag: u16,
    larval: Vec<Larval>,
}

/// SAs the lifetime timer looks at per tick (see [`Store::expiries`]).
pub const TICK_SAS: usize = 8192;

pub struct Store {
    lists: Lists,
    /// The SAD (index order) and SPD as the workers have them.
    tables: Tables,
    clock: Arc<dyn Clock>,
    rng: u64,
    /// SAs (by index) whose soft expiry was reported.
    soft_reported: HashSet<usize>,
    /// Where the next lifetime tick starts in a table larger than [`TICK_SAS`].
    tick_cursor: usize,
    /// Acquires reported, until when (per policy and flow, as the kernel's larval state
    /// holds one acquire for XFRM_ACQ_EXPIRES).
    acquired: HashMap<(u32, FlowKey), u64>,
    /// What the configuration file brought (a reload changes only these; what was added
    /// at run time stays).
    from_config: HashSet<XfrmId>,
    policies_from_config: HashSet<PolicyKey>,
    /// The state file, when there is one: every committed change is written to it.
    keep: Option<Keep>,
}

/// How long one acquire stands for its (policy, flow) (XFRM_ACQ_EXPIRES).
pub const ACQUIRE_INTERVAL_SECS: u64 = 30;

/// A packet met a policy whose template found no SA (the worker's report).
#[derive(Clone, Debug)]
pub struct Acquire {
    pub policy: Policy,
    pub flow: FlowKey,
}

/// A change ready to go live; nothing in the [`Store`] has moved yet.
pub struct Prepared {
    /// What changes in the tables (nothing for `allocspi`, which only reserves): shared
    /// with the workers once published.
    pub delta: Arc<TablesDelta>,
    /// Whether any policy changed (the XDP policy tables must be rewritten).
    pub policies_changed: bool,
    /// The reply's body.
    pub body: String,
    /// What `monitor` subscribers are told once it is live.
    pub events: Vec<String>,
    lists: Lists,
    /// A reload's new view of what came from the configuration.
    from_config: Option<(HashSet<XfrmId>, HashSet<PolicyKey>)>,
    /// The request's words, kept in the state file for an SA or policy it adds or updates.
    pub(super) text: Option<zeroize::Zeroizing<String>>,
    /// State-file records of the new SAs (given back unless committed).
    pub(super) res: Reservations,
}

impl Prepared {
    /// Raises the slots the new SAs share with live ones to their configured numbers: call
    /// when the change goes live (before the workers see it), not before, so that a change
    /// refused after it was prepared leaves the live SAs' numbers alone.
    pub fn claim_slots(&self) {
        for x in &self.delta.added {
            x.claim_slot();
        }
    }

    /// The delta, while it is being prepared (not shared yet: nothing is copied).
    fn delta(&mut self) -> &mut TablesDelta {
        Arc::make_mut(&mut self.delta)
    }

    /// A new SA (the newest of its template), filling its larval reservation if any.
    fn add_sa(&mut self, cfg: &SaConfig, now: u64, what: &str) -> Result<(), String> {
        self.lists.larval.retain(|l| l.id != cfg.id);
        let slot = self.res.slot(cfg).map_err(|e| format!("{what}: {e}"))?;
        let x = SecurityAssociation::with_slot(cfg.clone(), self.lists.next_sa, now, slot)
            .map_err(|e| format!("{what}: {e}"))?;
        self.lists.next_sa += 1;
        let x = Arc::new(x);
        self.events.push(render::state_text(&x, Show::default()));
        self.delta().added.push(x);
        Ok(())
    }
}

/// The answer to a request that reads.
pub enum Executed {
    Read(String),
    Change(Box<Prepared>),
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(1);
    h.finish() | 1
}

impl Store {
    /// The tables of the database the gateway started with.
    pub fn new(db: &XfrmDb) -> Self {
        let mut policies: Vec<Policy> = [PolicyDir::Out, PolicyDir::In, PolicyDir::Fwd]
            .iter()
            .flat_map(|&d| db.policies(d).iter().cloned())
            .collect();
        policies.sort_by_key(|p| p.index);
        Self {
            tables: Tables::new(db.clone()),
            lists: Lists {
                next_sa: db.states().iter().map(|x| x.index + 1).max().unwrap_or(0),
                next_policy: policies.last().map_or(0, |p| p.index + 1),
                policies,
                tag: db.policy_tag(),
                larval: Vec::new(),
            },
            clock: db.clock().clone(),
            rng: random_seed(),
            soft_reported: HashSet::new(),
            tick_cursor: 0,
            acquired: HashMap::new(),
            from_config: db.states().iter().map(|x| x.cfg.id).collect(),
            policies_from_config: Default::default(),
            keep: None,
        }
        .with_config_policies()
    }

    /// The store of a daemon with a state file (keep.rs `restore`): what the configuration
    /// brought is `from_config`, the rest came from the file.
    pub(super) fn with_keep(
        db: &XfrmDb,
        from_config: HashSet<XfrmId>,
        policies_from_config: HashSet<PolicyKey>,
        keep: Keep,
    ) -> Self {
        let mut s = Self::new(db);
        s.from_config = from_config;
        s.policies_from_config = policies_from_config;
        s.keep = Some(keep);
        s
    }

    fn with_config_policies(mut self) -> Self {
        self.policies_from_config = self.lists.policies.iter().map(policy_key).collect();
        self
    }

    /// The SAs, in index order (newest last).
    pub fn sas(&self) -> &[SaRef] {
        self.tables.db.states()
    }

    /// Answers a request that only reads, or prepares a change. `text`: the request's words
    /// as received (kept in the state file for what it adds or updates).
    pub fn execute(
        &self,
        req: &Request,
        text: Option<&str>,
        show: Show,
        now: Instant,
    ) -> Result<Executed, String> {
        match req {
            Request::StateGet(id) => {
                let x = self.find(id).ok_or_else(|| no_state(id))?;
                Ok(Executed::Read(
                    self.show_states(std::slice::from_ref(x), show),
                ))
            }
            Request::StateList(f) => {
                let v: Vec<SaRef> = self
                    .sas()
                    .iter()
                    .filter(|x| matches(x, f))
                    .cloned()
                    .collect();
                Ok(Executed::Read(self.show_states(&v, show)))
            }
            Request::StateCount => Ok(Executed::Read(render::sad_count(self.sas().len(), show))),
            Request::PolicyGet(id) => {
                let p = self.find_policy(id).ok_or_else(|| no_policy(id))?;
                Ok(Executed::Read(show_policies(
                    &[&self.lists.policies[p]],
                    show,
                )))
            }
            Request::PolicyList(dir) => {
                // Each direction in lookup order, as ip lists a table.
                let mut v: Vec<&Policy> = self
                    .lists
                    .policies
                    .iter()
                    .filter(|p| dir.is_none_or(|d| d == p.dir))
                    .collect();
                v.sort_by_key(|p| (dir_order(p.dir), p.priority, p.index));
                Ok(Executed::Read(show_policies(&v, show)))
            }
            Request::PolicyCount => {
                let n = |d| self.lists.policies.iter().filter(|p| p.dir == d).count();
                Ok(Executed::Read(render::spd_count(
                    n(PolicyDir::In),
                    n(PolicyDir::Out),
                    n(PolicyDir::Fwd),
                    show,
                )))
            }
            Request::Monitor => Ok(Executed::Read(String::new())),
            _ => self.prepare(req, now).and_then(|mut p| {
                if let Some(t) = text {
                    if matches!(
                        req,
                        Request::StateAdd(_)
                            | Request::StateUpdate(_)
                            | Request::PolicyAdd(_)
                            | Request::PolicyUpdate(_)
                    ) {
                        super::keep::check_text(self.keep.as_ref(), t)?;
                        p.text = Some(zeroize::Zeroizing::new(t.trim().to_string()));
                    }
                }
                Ok(Executed::Change(Box::new(p)))
            }),
        }
    }

    fn show_states(&self, v: &[SaRef], show: Show) -> String {
        if show.json {
            let a: Vec<_> = v.iter().map(|x| render::state_json(x, show)).collect();
            format!("{}\n", serde_json::Value::Array(a))
        } else {
            v.iter().map(|x| render::state_text(x, show)).collect()
        }
    }

    fn find(&self, id: &StateId) -> Option<&SaRef> {
        self.tables
            .db
            .state_lookup(id.dst, id.spi, id.proto)
            .filter(|x| id.src.is_none_or(|s| s == x.cfg.saddr))
    }

    fn by_id(&self, id: &XfrmId) -> Option<&SaRef> {
        self.tables.db.state_lookup(id.daddr, id.spi, id.proto)
    }

    fn find_policy(&self, id: &PolicyId) -> Option<usize> {
        let want = (id.dir, normalized_selector(&id.selector));
        self.lists
            .policies
            .iter()
            .position(|p| policy_key(p) == want)
    }

    /// A change that changes nothing yet: the current lists to edit.
    fn empty_change(&self, now: Instant) -> Prepared {
        Prepared {
            delta: Arc::default(),
            policies_changed: false,
            body: String::new(),
            events: Vec::new(),
            lists: Lists {
                larval: self
                    .lists
                    .larval
                    .iter()
                    .filter(|l| l.expires > now)
                    .copied()
                    .collect(),
                ..self.lists.clone()
            },
            from_config: None,
            text: None,
            res: Reservations::new(self.keep.as_ref()),
        }
    }

    fn prepare(&self, req: &Request, now: Instant) -> Result<Prepared, String> {
        let mut p = self.empty_change(now);
        let clock_now = self.clock.now();
        let no_keys = Show::default();
        match req {
            Request::StateAdd(cfg) => {
                if self.by_id(&cfg.id).is_some() {
                    return Err(format!(
                        "state add: an SA with dst {} spi 0x{:08x} proto {} exists already (File exists)",
                        cfg.id.daddr, cfg.id.spi, proto_name(cfg.id.proto)
                    ));
                }
                p.add_sa(cfg, clock_now, "state add")?;
            }
            Request::StateUpdate(cfg) => {
                let Some(old) = self.by_id(&cfg.id) else {
                    // A larval SA from allocspi is filled by update, as IKE daemons do.
                    if p.lists.larval.iter().any(|l| l.id == cfg.id) {
                        p.add_sa(cfg, clock_now, "state update")?;
                        return self.finish(p);
                    }
                    return Err(format!(
                        "state update: no SA with dst {} spi 0x{:08x} proto {} (No such process)",
                        cfg.id.daddr,
                        cfg.id.spi,
                        proto_name(cfg.id.proto)
                    ));
                };
                check_update(&old.cfg, cfg)?;
                // The live SA's slot: nothing written to it unless the change goes live.
                let x = SecurityAssociation::on_slot(
                    (**cfg).clone(),
                    old.index,
                    clock_now,
                    old.share_slot(),
                )
                .map_err(|e| format!("state update: {e}"))?;
                let x = Arc::new(x);
                p.events
                    .push(format!("Updated {}", render::state_text(&x, no_keys)));
                p.delta().removed.push(old.clone());
                p.delta().added.push(x);
            }
            Request::StateDelete(id) => {
                let x = self.find(id).ok_or_else(|| no_state(id))?.clone();
                p.events
                    .push(format!("Deleted {}", render::state_text(&x, no_keys)));
                p.delta().removed.push(x);
            }
            Request::StateFlush(proto) => {
                p.delta().removed = self
                    .sas()
                    .iter()
                    .filter(|x| proto.is_none_or(|q| q == x.cfg.id.proto))
                    .cloned()
                    .collect();
                p.events.push(match proto {
                    Some(q) => format!("Flushed state proto {}\n", proto_name(*q)),
                    None => "Flushed state proto any\n".to_string(),
                });
            }
            Request::StateAllocSpi(a) => {
                let spi = self.free_spi(a, &p.lists.larval)?;
                let id = XfrmId {
                    daddr: a.dst,
                    spi,
                    proto: a.proto,
                };
                p.lists.larval.push(Larval {
                    id,
                    expires: now + LARVAL_LIFETIME,
                });
                p.body = format!(
                    "src {} dst {}\n\tproto {} spi 0x{spi:08x} reqid {} mode {}\n",
                    a.src,
                    a.dst,
                    proto_name(a.proto),
                    a.reqid,
                    match a.mode {
                        crate::sa::XfrmMode::Transport => "transport",
                        crate::sa::XfrmMode::Tunnel => "tunnel",
                    }
                );
                return Ok(p);
            }
            Request::PolicyAdd(pol) | Request::PolicyUpdate(pol) => {
                let mut pol = (**pol).clone();
                let id = PolicyId {
                    dir: pol.dir,
                    selector: pol.selector,
                };
                match (self.find_policy(&id), matches!(req, Request::PolicyAdd(_))) {
                    (Some(_), true) => {
                        return Err(format!(
                            "policy add: a dir {} policy with this selector exists already (File exists)",
                            render::dir_name(pol.dir)
                        ))
                    }
                    (Some(i), false) => {
                        pol.index = self.lists.policies[i].index;
                        p.events.push(format!("Updated {}", render::policy_text(&pol)));
                        p.lists.policies[i] = pol;
                    }
                    (None, _) => {
                        pol.index = p.lists.next_policy;
                        p.lists.next_policy += 1;
                        p.events.push(render::policy_text(&pol));
                        p.lists.policies.push(pol);
                    }
                }
                p.policies_changed = true;
            }
            Request::PolicyDelete(id) => {
                let i = self.find_policy(id).ok_or_else(|| no_policy(id))?;
                let gone = p.lists.policies.remove(i);
                p.events
                    .push(format!("Deleted {}", render::policy_text(&gone)));
                p.policies_changed = true;
            }
            Request::PolicyFlush => {
                p.lists.policies.clear();
                p.policies_changed = true;
                p.events.push("Flushed policy\n".to_string());
            }
            _ => return Err("internal: not a change".to_string()),
        }
        self.finish(p)
    }

    /// A reload: the configuration `cfg` (read again) against what the last one brought.
    /// An SA or policy unchanged stays as it is (same object: counters, sequence numbers,
    /// replay window); one changed is replaced (an SA keeping its key goes on from its
    /// sequence numbers); one no longer there goes; one new is added. What was added at
    /// run time is left alone. One atomic change, like any request.
    pub fn prepare_reload(
        &self,
        cfg: crate::config::Config,
        now: Instant,
    ) -> Result<Prepared, String> {
        let mut p = self.empty_change(now);
        let clock_now = self.clock.now();
        let (mut added, mut changed, mut deleted, mut kept) = (0, 0, 0, 0);
        let new_ids: HashSet<XfrmId> = cfg.states.iter().map(|c| c.id).collect();
        // SAs of the old configuration that the new one drops.
        let gone: Vec<SaRef> = self
            .sas()
            .iter()
            .filter(|x| self.from_config.contains(&x.cfg.id) && !new_ids.contains(&x.cfg.id))
            .cloned()
            .collect();
        for x in gone {
            p.events.push(format!(
                "Deleted {}",
                render::state_text(&x, Show::default())
            ));
            p.delta().removed.push(x);
            deleted += 1;
        }
        for c in &cfg.states {
            match self.by_id(&c.id) {
                Some(x) if x.cfg == *c => kept += 1,
                Some(old) => {
                    let old = old.clone();
                    // The same key goes on from its numbers; a new key starts afresh.
                    let x = if check_update(&old.cfg, c).is_ok() {
                        SecurityAssociation::on_slot(
                            c.clone(),
                            old.index,
                            clock_now,
                            old.share_slot(),
                        )
                    } else {
                        p.lists.next_sa += 1;
                        let slot = p.res.slot(c).map_err(|e| format!("reload: {e}"))?;
                        SecurityAssociation::with_slot(
                            c.clone(),
                            p.lists.next_sa - 1,
                            clock_now,
                            slot,
                        )
                    }
                    .map_err(|e| format!("reload: {e}"))?;
                    let x = Arc::new(x);
                    p.events.push(format!(
                        "Updated {}",
                        render::state_text(&x, Show::default())
                    ));
                    p.delta().removed.push(old);
                    p.delta().added.push(x);
                    changed += 1;
                }
                None => {
                    p.add_sa(c, clock_now, "reload")?;
                    added += 1;
                }
            }
        }
        let new_keys: HashSet<PolicyKey> = cfg.policies.iter().map(policy_key).collect();
        let before = p.lists.policies.len();
        p.lists.policies.retain(|q| {
            let k = policy_key(q);
            !self.policies_from_config.contains(&k) || new_keys.contains(&k)
        });
        let pol_deleted = before - p.lists.policies.len();
        let (mut pol_added, mut pol_changed) = (0, 0);
        for q in cfg.policies {
            let k = policy_key(&q);
            match p.lists.policies.iter().position(|o| policy_key(o) == k) {
                Some(i) => {
                    let mut q = q;
                    q.index = p.lists.policies[i].index;
                    if p.lists.policies[i] != q {
                        p.events
                            .push(format!("Updated {}", render::policy_text(&q)));
                        p.lists.policies[i] = q;
                        pol_changed += 1;
                    }
                }
                None => {
                    let mut q = q;
                    q.index = p.lists.next_policy;
                    p.lists.next_policy += 1;
                    p.events.push(render::policy_text(&q));
                    p.lists.policies.push(q);
                    pol_added += 1;
                }
            }
        }
        p.policies_changed = pol_added + pol_changed + pol_deleted > 0;
        p.from_config = Some((new_ids, new_keys));
        p.body = format!(
            "reload: SAs {added} added, {changed} changed, {deleted} deleted, {kept} unchanged; \
             policies {pol_added} added, {pol_changed} changed, {pol_deleted} deleted\n"
        );
        self.finish(p)
    }

    /// Limits of the XDP tables, then the database built (its own checks: duplicates).
    fn finish(&self, mut p: Prepared) -> Result<Prepared, String> {
        let d = &p.delta;
        let count = self.sas().len() + d.added.len() - d.removed.len();
        if count > MAX_SAS as usize {
            return Err(format!(
                "state add: {count} SAs: the XDP SA table holds {MAX_SAS}"
            ));
        }
        // The same (dst, spi, proto) twice (a reload's file, say): refused as a whole.
        let mut ids = HashSet::with_capacity(d.added.len());
        for x in &d.added {
            let taken = self
                .by_id(&x.cfg.id)
                .is_some_and(|y| !d.removed.iter().any(|r| Arc::ptr_eq(r, y)));
            if taken || !ids.insert(x.cfg.id) {
                return Err(format!(
                    "an SA with dst {} spi 0x{:08x} proto {} twice (File exists)",
                    x.cfg.id.daddr,
                    x.cfg.id.spi,
                    proto_name(x.cfg.id.proto)
                ));
            }
        }
        if p.policies_changed {
            for d in [PolicyDir::Out, PolicyDir::In, PolicyDir::Fwd] {
                let n = p.lists.policies.iter().filter(|q| q.dir == d).count();
                if n > MAX_POLICIES as usize {
                    return Err(format!(
                        "policy add: {n} dir {} policies: the XDP table holds {MAX_POLICIES}",
                        render::dir_name(d)
                    ));
                }
            }
            XfrmDb::check_policies(&p.lists.policies).map_err(|e| format!("internal: {e}"))?;
            // Never the tag of NO_POLICY's upper half.
            p.lists.tag = match p.lists.tag.wrapping_add(1) {
                0xffff => 0,
                t => t,
            };
            let v = (p.lists.policies.clone(), p.lists.tag);
            p.delta().policies = Some(v);
        }
        // The input tables follow the policies (local addresses) and the SAs with encap
        // (NAT-T ports): computed again only when one of those moves.
        let encap = |v: &[SaRef]| v.iter().any(|x| x.cfg.encap.is_some());
        if p.policies_changed || encap(&p.delta.removed) || encap(&p.delta.added) {
            let gone: HashSet<*const SecurityAssociation> =
                p.delta.removed.iter().map(Arc::as_ptr).collect();
            let mut states: Vec<&SaRef> = self
                .sas()
                .iter()
                .filter(|x| !gone.contains(&Arc::as_ptr(x)))
                .chain(p.delta.added.iter())
                .collect();
            states.sort_by_key(|x| x.index);
            let input =
                InputTables::compute(p.lists.policies.iter(), states.into_iter().map(|x| &**x));
            p.delta().input = Some(input);
        }
        Ok(p)
    }

    /// Makes a prepared change the store's own (call once it is live). The SAs it removed
    /// are marked dead: a worker still holding one would not use it any more.
    /// Returns what the state file could not take (the change is live all the same).
    pub fn commit(&mut self, mut p: Prepared) -> Result<(), String> {
        p.claim_slots();
        for x in &p.delta.removed {
            x.set_km_state(KmState::Dead);
        }
        let kept = match self.keep.as_mut() {
            Some(k) => k.write(&super::keep::Change {
                old_policies: &self.lists.policies,
                // The same list when no policy changed (nothing to compare).
                policies: if p.policies_changed {
                    &p.lists.policies
                } else {
                    &self.lists.policies
                },
                removed: &p.delta.removed,
                added: &p.delta.added,
                text: p.text.as_deref().map(|t| t.as_str()),
                reload: p.from_config.is_some(),
                from_config: &self.from_config,
                policies_from_config: &self.policies_from_config,
            }),
            None => Ok(()),
        };
        p.res.commit();
        super::handover::Apply::apply(&mut self.tables, &p.delta);
        self.lists = p.lists;
        if let Some((sas, pols)) = p.from_config {
            self.from_config = sas;
            self.policies_from_config = pols;
        }
        // The next allocspi draws other numbers.
        self.next_random();
        kept
    }

    /// The lifetime timer (xfrm_timer_handler): an `Expired … hard 0` event for each SA
    /// that reached a soft limit (once), an `Expired … hard 1` event for each past a hard
    /// one, and those SAs' ids: the caller deletes them, as the kernel does.
    pub fn expiries(&mut self) -> (Vec<String>, Vec<StateId>) {
        let now = self.clock.now();
        let (mut events, mut hard) = (Vec::new(), Vec::new());
        // Every SA per tick up to TICK_SAS of them; a larger table in turns, so that a tick
        // costs the same with 65 536 SAs as with 8 192 (each SA is then seen every
        // n / TICK_SAS ticks; the packet path checks the limits of an SA in use itself).
        let all = self.tables.db.states();
        let n = all.len();
        let (from, count) = if n <= TICK_SAS {
            (0, n)
        } else {
            (self.tick_cursor % n, TICK_SAS)
        };
        self.tick_cursor = (from + count) % n.max(1);
        for x in all.iter().cycle().skip(from).take(count) {
            let (soft_now, hard_now) = x.lifetime_tick(now);
            let text = || render::state_text(x, Show::default());
            // A soft limit passed on the way to a hard one between two ticks is still
            // told first, as the packet that crossed it would have.
            if soft_now && x.is_dying() && self.soft_reported.insert(x.index) {
                events.push(format!("Expired {}\thard 0\n", text()));
            }
            if hard_now {
                events.push(format!("Expired {}\thard 1\n", text()));
                hard.push(StateId {
                    src: Some(x.cfg.saddr),
                    dst: x.cfg.id.daddr,
                    proto: x.cfg.id.proto,
                    spi: x.cfg.id.spi,
                });
            } else if soft_now && self.soft_reported.insert(x.index) {
                events.push(format!("Expired {}\thard 0\n", text()));
            }
        }
        // The few reported SAs, each looked up (the states are in index order), rather
        // than a set of every live index per tick.
        let states = self.tables.db.states();
        self.soft_reported
            .retain(|&i| states.binary_search_by_key(&i, |x| x.index).is_ok());
        (events, hard)
    }

    /// An `acquire` event for a worker's report, unless one was made for the same policy
    /// and flow within [`ACQUIRE_INTERVAL_SECS`].
    pub fn acquire(&mut self, a: &Acquire) -> Option<String> {
        let now = self.clock.now();
        self.acquired.retain(|_, until| *until > now);
        let key = (a.policy.index, a.flow);
        if self.acquired.contains_key(&key) {
            return None;
        }
        self.acquired.insert(key, now + ACQUIRE_INTERVAL_SECS);
        let t = a.policy.templates.first()?;
        let f = &a.flow;
        Some(format!(
            "acquire proto {}\n\tsel src {} dst {} proto {} sport {} dport {}\n\tpolicy {}",
            proto_name(t.proto),
            f.src,
            f.dst,
            f.proto,
            f.sport,
            f.dport,
            render::policy_text(&a.policy)
        ))
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// xfrm_alloc_spi: a random SPI in [min, max] that no SA or reservation of (dst, proto)
    /// holds; tries random ones, then walks the range from a random start.
    fn free_spi(&self, a: &AllocSpi, larval: &[Larval]) -> Result<u32, String> {
        let taken = |spi: u32| {
            self.tables.db.state_lookup(a.dst, spi, a.proto).is_some()
                || larval
                    .iter()
                    .any(|l| l.id.spi == spi && l.id.daddr == a.dst && l.id.proto == a.proto)
        };
        let span = u64::from(a.max - a.min) + 1;
        let mut r = self.rng;
        let mut next = || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r
        };
        for _ in 0..64 {
            let spi = a.min + (next() % span) as u32;
            if !taken(spi) {
                return Ok(spi);
            }
        }
        let start = next() % span;
        for k in 0..span.min(1 << 20) {
            let spi = a.min + ((start + k) % span) as u32;
            if !taken(spi) {
                return Ok(spi);
            }
        }
        Err(format!(
            "state allocspi: no free SPI in 0x{:x}..0x{:x} for dst {} proto {} (No such file or directory)",
            a.min,
            a.max,
            a.dst,
            proto_name(a.proto)
        ))
    }
}

/// What names a policy: its direction and selector (addresses masked to their prefix).
pub(super) type PolicyKey = (PolicyDir, Selector);

pub(super) fn policy_key(p: &Policy) -> PolicyKey {
    (p.dir, normalized_selector(&p.selector))
}

fn dir_order(d: PolicyDir) -> u8 {
    match d {
        PolicyDir::Out => 0,
        PolicyDir::In => 1,
        PolicyDir::Fwd => 2,
    }
}

fn show_policies(v: &[&Policy], show: Show) -> String {
    if show.json {
        let a: Vec<_> = v.iter().map(|p| render::policy_json(p)).collect();
        format!("{}\n", serde_json::Value::Array(a))
    } else {
        v.iter().map(|p| render::policy_text(p)).collect()
    }
}

fn matches(x: &SecurityAssociation, f: &StateFilter) -> bool {
    f.src.is_none_or(|a| a == x.cfg.saddr)
        && f.dst.is_none_or(|a| a == x.cfg.id.daddr)
        && f.proto.is_none_or(|p| p == x.cfg.id.proto)
        && f.spi.is_none_or(|s| s == x.cfg.id.spi)
}

fn no_state(id: &StateId) -> String {
    format!(
        "no SA with dst {} spi 0x{:08x} proto {}{} (No such process)",
        id.dst,
        id.spi,
        proto_name(id.proto),
        id.src
            .map_or(String::new(), |s: IpAddr| format!(" src {s}"))
    )
}

fn no_policy(id: &PolicyId) -> String {
    format!(
        "no dir {} policy with selector {} (No such file or directory)",
        render::dir_name(id.dir),
        render::policy_text(&Policy {
            selector: id.selector,
            dir: id.dir,
            priority: 0,
            action: crate::policy::PolicyAction::Allow,
            templates: Vec::new(),
            index: 0,
        })
        .lines()
        .next()
        .unwrap_or_default()
    )
}

/// xfrm_state_update changes what may change on a live SA (lifetimes, encap, selector,
/// flags); a new key, algorithm, mode or source is a new SA: delete and add.
fn check_update(old: &SaConfig, new: &SaConfig) -> Result<(), String> {
    let what = if key_fingerprint(&old.algorithm) != key_fingerprint(&new.algorithm) {
        Some("algorithm or key")
    } else if old.mode != new.mode {
        Some("mode")
    } else if old.saddr != new.saddr {
        Some("src")
    } else if old.reqid != new.reqid {
        Some("reqid")
    } else {
        None
    };
    match what {
        Some(w) => Err(format!(
            "state update: the {w} of SA spi 0x{:08x} cannot change (a new key is a new SA: add it, then delete the old one)",
            new.id.spi
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::request::parse_request;
    use crate::sa::XfrmProto;
    use crate::xfrm::ManualClock;

    const KEY: &str = "0x0102030405060708090a0b0c0d0e0f1011121314";

    fn sa(spi: u32, reqid: u32) -> String {
        format!(
            "state add src 192.0.2.1 dst 192.0.2.2 proto esp spi {spi:#x} reqid {reqid} mode tunnel aead 'rfc4106(gcm(aes))' {KEY} 128"
        )
    }

    fn run(s: &mut Store, req: &str) -> Result<String, String> {
        let r = parse_request(req, "request").map_err(|e| e.to_string())?;
        match s.execute(&r, None, Show::default(), Instant::now())? {
            Executed::Read(b) => Ok(b),
            Executed::Change(p) => {
                let body = p.body.clone();
                s.commit(*p)?;
                Ok(body)
            }
        }
    }

    /// A tunnel template to 192.0.2.2 (ESP, `reqid`).
    fn tmpl(reqid: u32) -> crate::policy::Template {
        crate::policy::Template {
            src: None,
            dst: "192.0.2.2".parse().unwrap(),
            proto: XfrmProto::Esp,
            spi: None,
            reqid,
            mode: crate::sa::XfrmMode::Tunnel,
            level: crate::policy::TmplLevel::Required,
        }
    }

    fn udp_flow(src: &str, dst: &str) -> crate::selector::FlowKey {
        crate::selector::FlowKey {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: 17,
            sport: 1,
            dport: 2,
        }
    }

    fn store() -> Store {
        let db = XfrmDb::with_clock(vec![], vec![], Arc::new(ManualClock::new(1000))).unwrap();
        Store::new(&db)
    }

    /// `-j` asks for JSON of every read, the counts too (ip prints them as text only).
    #[test]
    fn counts_in_json() {
        let mut s = store();
        run(&mut s, &sa(0x10, 1)).unwrap();
        let json = Show {
            json: true,
            ..Show::default()
        };
        let read = |r: &str| match s.execute(
            &parse_request(r, "t").unwrap(),
            None,
            json,
            Instant::now(),
        ) {
            Ok(Executed::Read(b)) => serde_json::from_str::<serde_json::Value>(&b).unwrap(),
            _ => panic!("{r}"),
        };
        assert_eq!(read("state count"), serde_json::json!({ "count": 1 }));
        assert_eq!(
            read("policy count"),
            serde_json::json!({ "in": 0, "out": 0, "fwd": 0 })
        );
    }

    #[test]
    fn add_delete_get_list_flush() {
        let mut s = store();
        run(&mut s, &sa(0x10, 1)).unwrap();
        run(&mut s, &sa(0x11, 1)).unwrap();
        let e = run(&mut s, &sa(0x10, 1)).unwrap_err();
        assert!(e.contains("exists already (File exists)"), "{e}");
        assert_eq!(run(&mut s, "state count").unwrap(), "SAD count 2\n");
        let g = run(&mut s, "state get dst 192.0.2.2 proto esp spi 0x11").unwrap();
        assert!(g.contains("spi 0x00000011"), "{g}");
        let e = run(&mut s, "state delete dst 192.0.2.2 proto esp spi 0x12").unwrap_err();
        assert!(e.contains("No such process"), "{e}");
        let old = s.sas()[0].clone();
        run(&mut s, "state delete dst 192.0.2.2 proto esp spi 0x10").unwrap();
        assert_eq!(old.km_state(), KmState::Dead);
        let l = run(&mut s, "state list").unwrap();
        assert_eq!(l.matches("\nsrc ").count() + 1, 1, "{l}");
        run(&mut s, "state flush proto ah").unwrap();
        assert_eq!(s.sas().len(), 1);
        run(&mut s, "state flush").unwrap();
        assert!(s.sas().is_empty());
    }

    /// A `state update` shares the live SA's sequence-number slot: preparing it writes
    /// nothing there (the change may still be refused, e.g. by the XDP maps); committing it
    /// raises the numbers to the request's `replay-oseq`.
    #[test]
    fn a_prepared_update_leaves_the_live_numbers_until_committed() {
        let mut s = store();
        run(&mut s, &sa(0x10, 1)).unwrap();
        let live = s.sas()[0].clone();
        assert_eq!(live.oseq(), 0);
        let upd = sa(0x10, 1).replace("state add", "state update") + " replay-oseq 500";
        let r = parse_request(&upd, "request").unwrap();
        let Executed::Change(p) = s
            .execute(&r, None, Show::default(), Instant::now())
            .unwrap()
        else {
            panic!("an update is a change");
        };
        assert_eq!(live.oseq(), 0, "prepared, not committed");
        assert_eq!(live.curlft_packets(), 0);
        drop(p);
        assert_eq!(live.oseq(), 0, "dropped: nothing changed");
        run(&mut s, &upd).unwrap();
        assert_eq!(s.sas()[0].oseq(), 500);
    }

    /// A rejected change leaves everything as it was; unchanged SAs are the same objects
    /// (counters, sequence numbers) in the new database.
    #[test]
    fn prepare_changes_nothing_and_unchanged_sas_carry_over() {
        let mut s = store();
        run(&mut s, &sa(0x10, 1)).unwrap();
        let x = s.sas()[0].clone();
        x.xfrm_replay_overflow().unwrap();
        x.xfrm_replay_overflow().unwrap();
        let r = parse_request(&sa(0x11, 1), "request").unwrap();
        let Executed::Change(p) = s
            .execute(&r, None, Show::default(), Instant::now())
            .unwrap()
        else {
            panic!()
        };
        // Prepared but not committed: the store still has one SA.
        assert_eq!(s.sas().len(), 1);
        // The change holds only the new SA; applied to a copy of the tables (as a worker
        // does), the old one is the same object, its numbers going on.
        assert!(p.delta.removed.is_empty() && p.delta.added.len() == 1);
        let mut t = s.tables.clone();
        crate::ctl::handover::Apply::apply(&mut t, &p.delta);
        assert!(Arc::ptr_eq(&t.db.states()[0], &x));
        assert_eq!(t.db.states()[0].oseq(), 2);
        // Newest valid SA of the template wins (make-before-break on output).
        let (tm, flow) = (tmpl(1), udp_flow("192.0.2.1", "192.0.2.2"));
        assert_eq!(t.db.state_find(&tm, &flow).unwrap().spi(), 0x11);
        drop(p);
        // An update may not change the key.
        let other = sa(0x10, 1)
            .replace("0x0102", "0x0902")
            .replace("add", "update");
        let e = run(&mut s, &other).unwrap_err();
        assert!(e.contains("algorithm or key"), "{e}");
        // An update that may goes on from the old sequence numbers.
        run(
            &mut s,
            &(sa(0x10, 1).replace("add", "update") + " limit packet-hard 1000"),
        )
        .unwrap();
        assert_eq!(s.sas()[0].oseq(), 2);
        assert_eq!(s.sas()[0].cfg.lifetime.hard_packet_limit, 1000);
    }

    #[test]
    fn policies_are_tagged_and_named_by_dir_and_selector() {
        let mut s = store();
        let pol = "policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir out tmpl src 192.0.2.1 dst 192.0.2.2 proto esp mode tunnel reqid 1";
        let r = parse_request(pol, "request").unwrap();
        let Executed::Change(p) = s
            .execute(&r, None, Show::default(), Instant::now())
            .unwrap()
        else {
            panic!()
        };
        assert!(p.policies_changed);
        let tag = p.delta.policies.as_ref().unwrap().1;
        assert_ne!(tag, 0);
        s.commit(*p).unwrap();
        assert!(run(&mut s, pol).unwrap_err().contains("File exists"));
        // Another spelling of the same selector names the same policy.
        let g = run(&mut s, "policy get dir out src 10.1.7.0/16 dst 10.2.0.0/16").unwrap();
        assert!(g.contains("dir out"), "{g}");
        assert_eq!(
            run(&mut s, "policy count").unwrap(),
            "SPD IN  0 OUT 1 FWD 0\n"
        );
        let e = run(
            &mut s,
            "policy delete dir in src 10.1.0.0/16 dst 10.2.0.0/16",
        )
        .unwrap_err();
        assert!(e.contains("No such file or directory"), "{e}");
        run(
            &mut s,
            "policy delete dir out src 10.1.0.0/16 dst 10.2.0.0/16",
        )
        .unwrap();
        assert_eq!(
            run(&mut s, "policy count").unwrap(),
            "SPD IN  0 OUT 0 FWD 0\n"
        );
    }

    /// More SAs than one tick looks at: each soft expiry is still reported, once, within
    /// the ticks it takes to go round the table.
    #[test]
    fn a_large_table_is_ticked_in_turns() {
        let clock = Arc::new(ManualClock::new(1000));
        let n = TICK_SAS + 100;
        let states = (0..n)
            .map(|i| {
                let mut c = crate::xfrm::state::tests::esp_cfg(
                    0x1000 + i as u32,
                    "192.0.2.1",
                    "192.0.2.2",
                    crate::sa::XfrmMode::Tunnel,
                );
                c.lifetime.soft_add_expires_seconds = 10;
                c
            })
            .collect();
        let db = XfrmDb::with_clock(states, vec![], clock.clone()).unwrap();
        let mut s = Store::new(&db);
        assert_eq!(s.expiries(), (vec![], vec![]));
        clock.set(1010);
        let (first, hard) = s.expiries();
        assert_eq!(first.len(), TICK_SAS, "one turn");
        assert!(hard.is_empty());
        let (second, _) = s.expiries();
        assert_eq!(
            first.len() + second.len(),
            n,
            "every SA once after one round"
        );
        assert_eq!(s.expiries().0.len(), 0, "soft once");
        assert_eq!(s.expiries().0.len(), 0);
    }

    #[test]
    fn expiries_are_reported_once_and_hard_ones_named_for_deletion() {
        let clock = Arc::new(ManualClock::new(1000));
        let db = XfrmDb::with_clock(vec![], vec![], clock.clone()).unwrap();
        let mut s = Store::new(&db);
        run(
            &mut s,
            &(sa(0x10, 1) + " limit time-soft 10 limit time-hard 20"),
        )
        .unwrap();
        run(&mut s, &sa(0x11, 1)).unwrap();
        assert_eq!(s.expiries(), (vec![], vec![]));
        clock.set(1010);
        let (ev, hard) = s.expiries();
        assert_eq!(ev.len(), 1);
        assert!(
            ev[0].starts_with("Expired src 192.0.2.1") && ev[0].ends_with("\thard 0\n"),
            "{ev:?}"
        );
        assert!(hard.is_empty());
        assert_eq!(s.expiries(), (vec![], vec![]), "soft once");
        clock.set(1020);
        let (ev, hard) = s.expiries();
        assert!(ev.len() == 1 && ev[0].ends_with("\thard 1\n"), "{ev:?}");
        assert_eq!(hard.len(), 1);
        assert_eq!(hard[0].spi, 0x10);
        // Both limits passed by packets between two ticks: the soft event still comes,
        // first.
        run(&mut s, "state delete dst 192.0.2.2 proto esp spi 0x10").unwrap();
        run(
            &mut s,
            &(sa(0x12, 1) + " limit packet-soft 2 limit packet-hard 4"),
        )
        .unwrap();
        let x = s.sas().iter().find(|x| x.spi() == 0x12).unwrap().clone();
        for _ in 0..5 {
            let _ = x.xfrm_state_check_expire(1020);
            let _ = x.xfrm_replay_overflow();
        }
        let (ev, hard) = s.expiries();
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(
            ev[0].contains("spi 0x00000012") && ev[0].ends_with("\thard 0\n"),
            "{ev:?}"
        );
        assert!(
            ev[1].contains("spi 0x00000012") && ev[1].ends_with("\thard 1\n"),
            "{ev:?}"
        );
        assert_eq!(hard.len(), 1);
        // Acquires: one per policy and flow per interval.
        let pol = parse_request("policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir out tmpl src 192.0.2.1 dst 192.0.2.2 proto esp mode tunnel reqid 1", "request").unwrap();
        let Request::PolicyAdd(pol) = pol else {
            panic!()
        };
        let flow = crate::selector::FlowKey {
            src: "10.1.0.1".parse().unwrap(),
            dst: "10.2.0.1".parse().unwrap(),
            proto: 17,
            sport: 1,
            dport: 2,
        };
        let a = Acquire { policy: *pol, flow };
        let ev = s.acquire(&a).unwrap();
        assert!(
            ev.starts_with("acquire proto esp\n\tsel src 10.1.0.1 dst 10.2.0.1"),
            "{ev}"
        );
        assert!(s.acquire(&a).is_none());
        let other = Acquire {
            flow: crate::selector::FlowKey { sport: 3, ..flow },
            ..a.clone()
        };
        assert!(s.acquire(&other).is_some());
        clock.advance(ACQUIRE_INTERVAL_SECS);
        assert!(s.acquire(&a).is_some());
    }

    #[test]
    fn reload_applies_only_the_difference() {
        let conf = |extra: &str| {
            let text = format!(
                "{}\n{}\npolicy add src 10.1.0.0/16 dst 10.2.0.0/16 dir out tmpl src 192.0.2.1 dst 192.0.2.2 proto esp mode tunnel reqid 1\n{extra}",
                sa(0x10, 1),
                sa(0x11, 1)
            );
            crate::config::parse_config(&text, "site.conf").unwrap()
        };
        let c0 = conf("");
        let db =
            XfrmDb::with_clock(c0.states, c0.policies, Arc::new(ManualClock::new(1000))).unwrap();
        let mut s = Store::new(&db);
        // Added at run time: a reload leaves it alone.
        run(&mut s, &sa(0x20, 1)).unwrap();
        let x10 = s.sas()[0].clone();
        x10.xfrm_replay_overflow().unwrap();
        let reload = |s: &mut Store, c| {
            let p = s.prepare_reload(c, Instant::now()).unwrap();
            let body = p.body.clone();
            s.commit(p).unwrap();
            body
        };
        // The same file: nothing changes, the SAs are the same objects.
        let b = reload(&mut s, conf(""));
        assert!(b.contains("SAs 0 added, 0 changed, 0 deleted, 2 unchanged; policies 0 added, 0 changed, 0 deleted"), "{b}");
        assert!(Arc::ptr_eq(&s.sas()[0], &x10));
        // 0x11 gets a lifetime (changed, same key: goes on), a new SA and a policy appear.
        let mut c = conf(&format!(
            "{}\npolicy add src 10.3.0.0/16 dst 10.4.0.0/16 dir out action block",
            sa(0x12, 1)
        ));
        c.states[1].lifetime.hard_packet_limit = 99;
        let x11 = s.sas()[1].clone();
        x11.xfrm_replay_overflow().unwrap();
        x11.xfrm_replay_overflow().unwrap();
        let b = reload(&mut s, c);
        assert!(
            b.contains("SAs 1 added, 1 changed, 0 deleted, 1 unchanged; policies 1 added"),
            "{b}"
        );
        let n11 = s.sas().iter().find(|x| x.spi() == 0x11).unwrap();
        assert_eq!(
            n11.oseq(),
            2,
            "a changed SA with its key goes on from its numbers"
        );
        assert_eq!(x11.km_state(), KmState::Dead);
        // Dropped from the file: 0x10, 0x12 and the block policy go; 0x20 (run time) stays.
        let mut c = conf("");
        c.states.remove(0);
        c.states[0].lifetime.hard_packet_limit = 99;
        let b = reload(&mut s, c);
        assert!(b.contains("SAs 0 added, 0 changed, 2 deleted, 1 unchanged; policies 0 added, 0 changed, 1 deleted"), "{b}");
        let spis: Vec<u32> = s.sas().iter().map(|x| x.spi()).collect();
        assert!(
            spis.contains(&0x11) && spis.contains(&0x20) && !spis.contains(&0x10),
            "{spis:?}"
        );
        // 0x12 came from the file and is no longer in it.
        assert!(!spis.contains(&0x12), "{spis:?}");
    }

    #[test]
    fn allocspi_reserves_then_update_fills() {
        let mut s = store();
        run(&mut s, &sa(0x150, 1)).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let b = run(
                &mut s,
                "state allocspi src 192.0.2.1 dst 192.0.2.2 proto esp min 0x140 max 0x163",
            )
            .unwrap();
            let spi =
                u32::from_str_radix(b.split("spi 0x").nth(1).unwrap()[..8].trim(), 16).unwrap();
            assert!((0x140..=0x163).contains(&spi) && spi != 0x150, "{b}");
            assert!(seen.insert(spi), "SPI {spi:#x} handed out twice");
        }
        // 36 in the range, one used by an SA, 20 reserved: 15 left, then none.
        for _ in 0..15 {
            run(
                &mut s,
                "state allocspi src 192.0.2.1 dst 192.0.2.2 proto esp min 0x140 max 0x163",
            )
            .unwrap();
        }
        let e = run(
            &mut s,
            "state allocspi src 192.0.2.1 dst 192.0.2.2 proto esp min 0x140 max 0x163",
        )
        .unwrap_err();
        assert!(e.contains("no free SPI"), "{e}");
        // update fills a reserved SPI (as IKE daemons do); a plain update of nothing fails.
        let spi = *seen.iter().next().unwrap();
        run(&mut s, &sa(spi, 1).replace("add", "update")).unwrap();
        assert!(run(&mut s, &sa(0x1000, 1).replace("add", "update"))
            .unwrap_err()
            .contains("No such process"));
    }

    /// The store's tables, changed in place request by request, and a worker's copy that
    /// applies the same published deltas, always equal what a database built from scratch
    /// out of the same SAs and policies says: every SA found by its id, every template
    /// resolving to the same SA, the policies in the same order, the same NAT-T ports.
    #[test]
    fn incremental_tables_equal_tables_built_from_scratch() {
        use crate::ctl::handover::Handover;
        let mut s = store();
        let h = Handover::new(s.tables.clone());
        let mut worker = h.reader().unwrap();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Out policies make 192.0.2.1 local, in policies 192.0.2.2 (the SAs' destination:
        // their NAT-T ports count then).
        let pol = |n: u64, reqid: u64, dir: &str| {
            format!("policy update src 10.{n}.0.0/16 dst 10.9.0.0/16 dir {dir} tmpl src 192.0.2.1 dst 192.0.2.2 proto esp mode tunnel reqid {reqid}")
        };
        let dir = |n: u64| if n.is_multiple_of(2) { "out" } else { "in" };
        let (mut saw_encap, mut saw_policy) = (false, false);
        for step in 0..400 {
            let spi = 0x100 + next() % 40;
            let reqid = 1 + next() % 3;
            let req = match next() % 10 {
                0..=3 => sa(spi as u32, reqid as u32),
                4 => sa(spi as u32, reqid as u32) + " encap espinudp 4500 4500 0.0.0.0",
                5 => {
                    sa(spi as u32, reqid as u32).replace("add", "update")
                        + " limit packet-hard 9999"
                }
                6 | 7 => format!("state delete dst 192.0.2.2 proto esp spi {spi:#x}"),
                8 => pol(next() % 5, reqid, dir(next())),
                _ if step % 50 == 0 => "state flush".to_string(),
                _ => format!(
                    "policy delete dir {} src 10.{}.0.0/16 dst 10.9.0.0/16",
                    dir(next()),
                    next() % 5
                ),
            };
            let r = parse_request(&req, "request").unwrap();
            let Ok(Executed::Change(p)) = s.execute(&r, None, Show::default(), Instant::now())
            else {
                continue;
            };
            let g = h.publish(p.delta.clone());
            worker.refresh();
            h.wait(g, Duration::from_secs(5)).unwrap();
            s.commit(*p).unwrap();
            let policies = s.lists.policies.clone();
            let scratch = XfrmDb::from_sas(
                s.sas().to_vec(),
                policies.clone(),
                s.clock.clone(),
                s.lists.tag,
            )
            .unwrap();
            let input = InputTables::new(&scratch);
            saw_encap |= !input.encap_ports().is_empty();
            saw_policy |= !policies.is_empty();
            for t in [&s.tables, worker.get()] {
                let ids = |db: &XfrmDb| {
                    db.states()
                        .iter()
                        .map(|x| (x.index, x.spi()))
                        .collect::<Vec<_>>()
                };
                assert_eq!(ids(&t.db), ids(&scratch), "step {step}: {req}");
                for x in scratch.states() {
                    let y =
                        t.db.state_lookup(x.daddr(), x.spi(), x.cfg.id.proto)
                            .unwrap();
                    assert!(Arc::ptr_eq(x, y), "step {step}");
                }
                for reqid in 1..=3 {
                    let (tm, flow) = (tmpl(reqid), udp_flow("10.1.0.1", "10.9.0.1"));
                    let a = t.db.state_find(&tm, &flow).map(Arc::as_ptr);
                    let b = scratch.state_find(&tm, &flow).map(Arc::as_ptr);
                    assert_eq!(a, b, "step {step}: template reqid {reqid}");
                }
                for d in [PolicyDir::Out, PolicyDir::In, PolicyDir::Fwd] {
                    assert_eq!(t.db.policies(d), scratch.policies(d), "step {step}");
                }
                assert_eq!(t.db.policy_tag(), scratch.policy_tag());
                assert_eq!(t.input.encap_ports(), input.encap_ports(), "step {step}");
            }
        }
        assert!(
            saw_encap && saw_policy,
            "NAT-T ports and policies were exercised"
        );
    }
}
