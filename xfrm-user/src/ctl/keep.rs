//! What the control plane keeps in the state file (docs/state-file.md): each committed
//! change written as the records it touches (an SA's request and key, a policy's request, a
//! deleted configured SA or policy), and at start the configuration plus what the file
//! kept, put back as it was before the restart.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Result};

use super::store::{policy_key, PolicyKey, Store};
use crate::config::request::{parse_request, Request};
use crate::config::Config;
use crate::policy::{Policy, PolicyDir};
use crate::sa::{SaConfig, XfrmId};
use crate::selector::{PortMatch, Prefix, Selector};
use crate::xfrm::persist::{
    self, Planned, Reserved, SaIdentity, SaText, StateFile, TextKind, TextRecord,
};
use crate::xfrm::state::SaRef;
use crate::xfrm::{Clock, SeqSlot, XfrmDb};

/// The state file and which of its records hold which policy.
pub struct Keep {
    file: Arc<StateFile>,
    /// The text record of each policy added or updated at run time.
    policies: HashMap<PolicyKey, u32>,
    /// The mark of each configured policy deleted at run time.
    deleted_policies: HashMap<PolicyKey, u32>,
}

/// A request's text must fit its record (checked before anything changes).
pub fn check_text(keep: Option<&Keep>, text: &str) -> Result<(), String> {
    let n = text.trim().len();
    if keep.is_some() && n > persist::TEXT_MAX {
        return Err(persist::text_too_long(n));
    }
    Ok(())
}

/// The state-file records new SAs of a prepared change took: given back if it is dropped
/// without [`Self::commit`] (a refused change leaves the file as it was).
pub struct Reservations {
    file: Option<Arc<StateFile>>,
    list: Vec<Reserved>,
}

impl Reservations {
    pub fn new(keep: Option<&Keep>) -> Self {
        Self {
            file: keep.map(|k| k.file.clone()),
            list: Vec::new(),
        }
    }

    /// Counters for a new SA: its retired record when its key was seen before, else a new
    /// one; on the heap without a state file.
    pub fn slot(&mut self, cfg: &SaConfig) -> Result<SeqSlot, String> {
        match &self.file {
            None => Ok(SeqSlot::in_memory()),
            Some(f) => {
                let (s, r) = f.reserve_sa(&SaIdentity::of(cfg))?;
                self.list.push(r);
                Ok(s)
            }
        }
    }

    pub fn commit(&mut self) {
        self.list.clear();
    }
}

impl Drop for Reservations {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            for r in self.list.drain(..) {
                f.unreserve(r);
            }
        }
    }
}

/// A change going live: the SAs it removes and adds, the policies before and after, and
/// what made it.
pub struct Change<'a> {
    pub old_policies: &'a [Policy],
    pub policies: &'a [Policy],
    pub removed: &'a [SaRef],
    pub added: &'a [SaRef],
    /// The request's words (`state add|update`, `policy add|update`).
    pub text: Option<&'a str>,
    /// A reload: what it puts in place is the configuration's, not run time's.
    pub reload: bool,
    pub from_config: &'a HashSet<XfrmId>,
    pub policies_from_config: &'a HashSet<PolicyKey>,
}

fn record(x: &SaRef) -> Option<u32> {
    x.share_slot().record()
}

impl Keep {
    /// Writes what `c` changed: the records of new and changed SAs (with the request when it
    /// came at run time), of SAs gone (retired, request and key wiped), of policies.
    pub fn write(&mut self, c: &Change<'_>) -> Result<(), String> {
        let f = &self.file;
        let mut live = HashSet::new();
        let mut errors = Vec::new();
        for x in c.added {
            let Some(rec) = record(x) else { continue };
            live.insert(rec);
            let text = if c.reload { None } else { c.text };
            if let Err(e) = f.set_sa(rec, text.map(|t| (t, x.index as u64))) {
                errors.push(e);
            }
        }
        for x in c.removed {
            let Some(rec) = record(x) else { continue };
            if live.contains(&rec) {
                continue;
            }
            let deleted = !c.reload && c.from_config.contains(&x.cfg.id);
            f.retire_sa(rec, &SaIdentity::of(&x.cfg), deleted);
        }
        if std::ptr::eq(c.old_policies, c.policies) {
            return done(errors);
        }
        let before: HashMap<PolicyKey, &Policy> =
            c.old_policies.iter().map(|p| (policy_key(p), p)).collect();
        let after: HashMap<PolicyKey, &Policy> =
            c.policies.iter().map(|p| (policy_key(p), p)).collect();
        for (k, _) in before.iter().filter(|(k, _)| !after.contains_key(*k)) {
            if let Some(r) = self.policies.remove(k) {
                f.free(r);
            }
            if !c.reload
                && c.policies_from_config.contains(k)
                && !self.deleted_policies.contains_key(k)
            {
                match f.put_text(TextKind::PolicyDeleted, 0, &key_bytes(k)) {
                    Ok(r) => {
                        self.deleted_policies.insert(*k, r);
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        for (k, p) in after.iter() {
            if before.get(k).is_some_and(|o| *o == *p) {
                continue;
            }
            if let Some(r) = self.deleted_policies.remove(k) {
                f.free(r);
            }
            let new = match (c.reload, c.text) {
                (false, Some(t)) => {
                    match f.put_text(TextKind::Policy, u64::from(p.index), t.as_bytes()) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            errors.push(e);
                            None
                        }
                    }
                }
                _ => None,
            };
            if let Some(r) = self.policies.remove(k) {
                f.free(r);
            }
            if let Some(r) = new {
                self.policies.insert(*k, r);
            }
        }
        done(errors)
    }
}

fn done(errors: Vec<String>) -> Result<(), String> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the change is live but the state file did not take it: {}",
            errors.join("; ")
        ))
    }
}

/// A policy's (dir, selector) as a deleted-policy mark holds it.
fn key_bytes(k: &PolicyKey) -> Vec<u8> {
    let (dir, s) = k;
    let mut b = vec![match dir {
        PolicyDir::Out => 0u8,
        PolicyDir::In => 1,
        PolicyDir::Fwd => 2,
    }];
    for p in [&s.src, &s.dst] {
        match p.addr {
            IpAddr::V4(a) => {
                b.push(4);
                b.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                b.push(6);
                b.extend_from_slice(&a.octets());
            }
        }
        b.push(p.len);
    }
    b.push(s.proto);
    for m in [&s.sport, &s.dport] {
        b.extend_from_slice(&m.port.to_be_bytes());
        b.extend_from_slice(&m.mask.to_be_bytes());
    }
    b
}

fn key_of_bytes(b: &[u8]) -> Option<PolicyKey> {
    let mut at = 0;
    let mut take = |n: usize| {
        let s = b.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let dir = match take(1)?[0] {
        0 => PolicyDir::Out,
        1 => PolicyDir::In,
        2 => PolicyDir::Fwd,
        _ => return None,
    };
    let mut prefix = || -> Option<Prefix> {
        let addr: IpAddr = match take(1)?[0] {
            4 => <[u8; 4]>::try_from(take(4)?).ok()?.into(),
            6 => <[u8; 16]>::try_from(take(16)?).ok()?.into(),
            _ => return None,
        };
        let len = take(1)?[0];
        Some(Prefix { addr, len })
    };
    let (src, dst) = (prefix()?, prefix()?);
    let proto = take(1)?[0];
    let mut port = || -> Option<PortMatch> {
        let p = take(4)?;
        Some(PortMatch {
            port: u16::from_be_bytes([p[0], p[1]]),
            mask: u16::from_be_bytes([p[2], p[3]]),
        })
    };
    let (sport, dport) = (port()?, port()?);
    if at != b.len() {
        return None;
    }
    Some((
        dir,
        Selector {
            src,
            dst,
            proto,
            sport,
            dport,
        },
    ))
}

/// What [`restore`] put back.
pub struct Restored {
    pub file: Arc<StateFile>,
    pub db: XfrmDb,
    pub store: Store,
    /// SAs and policies of run time put back, configured ones left out (deleted then).
    pub summary: String,
}

fn corrupt(path: &Path, reason: String) -> anyhow::Error {
    anyhow!(persist::StateFileError::Corrupt {
        path: path.display().to_string(),
        reason,
    })
}

fn sa_of(path: &Path, text: &str) -> Result<SaConfig> {
    match parse_request(text, "state file") {
        Ok(Request::StateAdd(c)) | Ok(Request::StateUpdate(c)) => Ok(*c),
        Ok(_) => Err(corrupt(path, "an SA's record holds another request".into())),
        Err(e) => Err(corrupt(path, format!("an SA's request: {e}"))),
    }
}

/// The SAD and SPD at start: the configuration `cfg` first, then what the state file kept
/// from run time (SAs and policies added or updated, configured ones deleted), as before
/// the restart; every SA's counters from the file. Nothing is applied unless all of it
/// reads (a file with an error is refused whole).
pub fn restore(
    path: &Path,
    discard_corrupt: bool,
    cfg: Config,
    clock: Arc<dyn Clock>,
) -> Result<Restored> {
    let loaded = StateFile::load(path, discard_corrupt)?;
    let saved = &loaded.saved;
    let from_config: HashSet<XfrmId> = cfg.states.iter().map(|c| c.id).collect();
    let config_ids: HashSet<SaIdentity> = cfg.states.iter().map(SaIdentity::of).collect();
    let by_id: HashMap<SaIdentity, &persist::Record> =
        saved.sas.iter().map(|r| (r.id, r)).collect();
    let mut states = Vec::new();
    let mut plan = Vec::new();
    let mut deleted = Vec::new();
    let (mut updated, mut left_out, mut added) = (0, 0, 0);
    for c in cfg.states {
        let id = SaIdentity::of(&c);
        match by_id.get(&id) {
            Some(r) if r.deleted => {
                deleted.push(id);
                left_out += 1;
            }
            Some(r) if !r.retired && r.text.is_some() => {
                let t = r.text.clone();
                let u = sa_of(path, t.as_ref().map_or("", |t| t.text.as_str()))?;
                if SaIdentity::of(&u) != id {
                    return Err(corrupt(
                        path,
                        "an update of a configured SA names another".into(),
                    ));
                }
                states.push(u);
                plan.push(Planned { id, text: t });
                updated += 1;
            }
            _ => {
                states.push(c);
                plan.push(Planned { id, text: None });
            }
        }
    }
    let mut runtime: Vec<(&SaText, SaIdentity)> = saved
        .sas
        .iter()
        .filter(|r| !r.retired && !config_ids.contains(&r.id))
        .filter_map(|r| r.text.as_ref().map(|t| (t, r.id)))
        .collect();
    runtime.sort_by_key(|(t, _)| t.pos);
    for (t, id) in runtime {
        let c = sa_of(path, &t.text)?;
        if SaIdentity::of(&c) != id {
            return Err(corrupt(
                path,
                "an SA's request does not match its record".into(),
            ));
        }
        if from_config.contains(&c.id) {
            log::warn!(
                "state file {}: the SA spi 0x{:08x} dst {} added at run time has the id of a \
                 configured one now: the configuration's is used",
                path.display(),
                c.id.spi,
                c.id.daddr
            );
            continue;
        }
        states.push(c);
        plan.push(Planned {
            id,
            text: Some(t.clone()),
        });
        added += 1;
    }

    // Policies: the configuration's, then the texts in the order they were written.
    let mut policies = cfg.policies;
    let policies_from_config: HashSet<PolicyKey> = policies.iter().map(policy_key).collect();
    let mut texts: Vec<&TextRecord> = saved.texts.iter().collect();
    texts.sort_by_key(|t| t.order);
    let mut last: HashMap<PolicyKey, (&TextRecord, Option<Policy>)> = HashMap::new();
    for t in texts {
        match t.what {
            TextKind::Policy => {
                let body = std::str::from_utf8(&t.body)
                    .map_err(|_| corrupt(path, "a policy's request is not UTF-8".into()))?;
                let p = match parse_request(body, "state file") {
                    Ok(Request::PolicyAdd(p)) | Ok(Request::PolicyUpdate(p)) => *p,
                    Ok(_) => {
                        return Err(corrupt(
                            path,
                            "a policy's record holds another request".into(),
                        ))
                    }
                    Err(e) => return Err(corrupt(path, format!("a policy's request: {e}"))),
                };
                last.insert(policy_key(&p), (t, Some(p)));
            }
            TextKind::PolicyDeleted => {
                let k = key_of_bytes(&t.body)
                    .ok_or_else(|| corrupt(path, "a deleted policy's mark does not read".into()))?;
                last.insert(k, (t, None));
            }
            TextKind::Sa => {}
        }
    }
    let mut keep_texts = Vec::new();
    let mut kinds = Vec::new();
    let mut new_policies: Vec<(u64, Policy, &TextRecord)> = Vec::new();
    let (mut pol_updated, mut pol_deleted) = (0, 0);
    for (k, (t, p)) in last {
        let at = policies.iter().position(|q| policy_key(q) == k);
        match (p, at) {
            (None, Some(i)) if policies_from_config.contains(&k) => {
                policies.remove(i);
                keep_texts.push((*t).clone());
                kinds.push(k);
                pol_deleted += 1;
            }
            (None, _) => {}
            (Some(mut p), Some(i)) => {
                p.index = policies[i].index;
                policies[i] = p;
                keep_texts.push((*t).clone());
                kinds.push(k);
                pol_updated += 1;
            }
            (Some(p), None) => new_policies.push((t.pos, p, t)),
        }
    }
    new_policies.sort_by_key(|(pos, _, _)| *pos);
    let first = policies.iter().map(|p| p.index + 1).max().unwrap_or(0);
    let pol_added = new_policies.len();
    for (index, (_, mut p, t)) in (first..).zip(new_policies) {
        p.index = index;
        kinds.push(policy_key(&p));
        policies.push(p);
        keep_texts.push(t.clone());
    }

    let file = Arc::new(loaded.write(&plan, &deleted, &keep_texts)?);
    let slots = (0..plan.len())
        .map(|i| file.slot(i).ok_or_else(|| anyhow!("state file slot {i}")))
        .collect::<Result<Vec<_>>>()?;
    let db = XfrmDb::with_slots(states, policies, clock, slots).map_err(|e| anyhow!("{e}"))?;
    let mut keep = Keep {
        file: file.clone(),
        policies: HashMap::new(),
        deleted_policies: HashMap::new(),
    };
    for (i, k) in kinds.into_iter().enumerate() {
        let rec = file.text_record(i);
        if keep_texts[i].what == TextKind::PolicyDeleted {
            keep.deleted_policies.insert(k, rec);
        } else {
            keep.policies.insert(k, rec);
        }
    }
    let store = Store::with_keep(&db, from_config, policies_from_config, keep);
    let summary = format!(
        "from run time: {added} SA(s) added, {updated} configured SA(s) updated, {left_out} \
         left out (deleted); {pol_added} polic(y/ies) added, {pol_updated} updated, \
         {pol_deleted} left out (deleted)"
    );
    Ok(Restored {
        file,
        db,
        store,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_keys_read_back() {
        for text in [
            "policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir out tmpl src 192.0.2.1 dst 192.0.2.2 proto esp mode tunnel reqid 1",
            "policy add src fd00:1::/64 dst fd00:2::/64 proto udp sport 53 dport 1000 dir fwd tmpl src fd00::1 dst fd00::2 proto esp mode tunnel reqid 1",
            "policy add src 10.0.0.0/8 dst 10.0.0.0/8 proto icmp type 8 code 0 dir in action block",
        ] {
            let Request::PolicyAdd(p) = parse_request(text, "t").unwrap() else {
                panic!()
            };
            let k = policy_key(&p);
            assert_eq!(key_of_bytes(&key_bytes(&k)), Some(k), "{text}");
        }
        assert_eq!(key_of_bytes(&[0, 4, 1]), None);
        assert_eq!(key_of_bytes(&[]), None);
    }

    use crate::config::parse_config;
    use crate::ctl::render::Show;
    use crate::ctl::store::Executed;
    use crate::xfrm::ManualClock;
    use std::time::Instant;

    const KEY: &str = "0x0102030405060708090a0b0c0d0e0f10aabbccdd";
    const KEY2: &str = "0x77777777777777777777777777777777eeeeeeee";

    fn sa(spi: u32, key: &str) -> String {
        format!(
            "state add src 192.0.2.1 dst 192.0.2.2 proto esp spi {spi:#x} reqid 1 mode tunnel aead 'rfc4106(gcm(aes))' {key} 128"
        )
    }

    const CONF: &str = "policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir out tmpl src 192.0.2.1 dst 192.0.2.2 proto esp mode tunnel reqid 1\n\
        policy add src 10.2.0.0/16 dst 10.1.0.0/16 dir in tmpl src 192.0.2.2 dst 192.0.2.1 proto esp mode tunnel reqid 1\n";

    fn conf(extra: &str) -> Config {
        parse_config(&format!("{CONF}{extra}"), "gw.conf").unwrap()
    }

    fn start(path: &Path, c: Config) -> Result<Restored> {
        restore(path, false, c, Arc::new(ManualClock::new(1000)))
    }

    fn run(s: &mut Store, req: &str) -> Result<String, String> {
        let r = parse_request(req, "request").map_err(|e| e.to_string())?;
        match s.execute(&r, Some(req), Show::default(), Instant::now())? {
            Executed::Read(b) => Ok(b),
            Executed::Change(p) => {
                let body = p.body.clone();
                s.commit(*p)?;
                Ok(body)
            }
        }
    }

    fn listing(s: &mut Store) -> (String, String) {
        let st = run(s, "state list").unwrap();
        let po = run(s, "policy list").unwrap();
        (st, po)
    }

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    /// What the control plane changed comes back after a restart, in the same order, with
    /// the counters; what it deleted does not, and its key is gone from the file.
    #[test]
    fn run_time_changes_survive_a_restart_and_deleted_keys_leave_the_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("gw.state");
        let c0 = sa(0x10, KEY2);
        let mut k = start(&path, conf(&c0)).unwrap();
        assert!(k.summary.contains("0 SA(s) added"), "{}", k.summary);
        let s = &mut k.store;
        run(s, &sa(0x20, KEY)).unwrap();
        run(s, &sa(0x21, KEY)).unwrap();
        run(s, &sa(0x22, "0x99999999999999999999999999999999deadbeef")).unwrap();
        run(
            s,
            &(sa(0x21, KEY).replace("add", "update") + " limit packet-hard 5000"),
        )
        .unwrap();
        run(s, "state delete dst 192.0.2.2 proto esp spi 0x22").unwrap();
        // A configured SA deleted at run time stays deleted.
        run(s, "state delete dst 192.0.2.2 proto esp spi 0x10").unwrap();
        run(s, "policy add src 10.3.0.0/16 dst 10.4.0.0/16 dir out tmpl src 192.0.2.1 dst 192.0.2.2 proto esp mode tunnel reqid 1").unwrap();
        run(s, "policy update src 10.1.0.0/16 dst 10.2.0.0/16 dir out priority 7 tmpl src 192.0.2.1 dst 192.0.2.2 proto esp mode tunnel reqid 1").unwrap();
        run(s, "policy delete dir in src 10.2.0.0/16 dst 10.1.0.0/16").unwrap();
        let x21 = s.sas().iter().find(|x| x.spi() == 0x21).unwrap().clone();
        for _ in 0..3 {
            x21.xfrm_replay_overflow().unwrap();
        }
        x21.add_curlft(1500);
        let before = listing(s);
        let stats = run(s, "state get dst 192.0.2.2 proto esp spi 0x21").unwrap();
        // Gone without a word (no sync, no orderly stop): as kill -9.
        drop(x21);
        drop(k);
        let b = std::fs::read(&path).unwrap();
        assert!(
            !contains(&b, "99999999999999999999999999999999deadbeef"),
            "a deleted SA's key is in the file"
        );
        assert!(contains(&b, &KEY[2..]), "a live SA's key is kept");

        let mut k = start(&path, conf(&c0)).unwrap();
        assert!(
            k.summary
                .contains("2 SA(s) added, 0 configured SA(s) updated, 1 left out")
                && k.summary
                    .contains("1 polic(y/ies) added, 1 updated, 1 left out"),
            "{}",
            k.summary
        );
        let s = &mut k.store;
        assert_eq!(listing(s), before);
        assert_eq!(
            run(s, "state get dst 192.0.2.2 proto esp spi 0x21").unwrap(),
            stats
        );
        let x21 = s.sas().iter().find(|x| x.spi() == 0x21).unwrap().clone();
        assert_eq!(
            (x21.oseq(), x21.curlft_bytes(), x21.curlft_packets()),
            (3, 1500, 3)
        );
        assert_eq!(x21.cfg.lifetime.hard_packet_limit, 5000);
        // The newest SA stays the newest (output prefers it).
        let spis: Vec<u32> = s.sas().iter().map(|x| x.spi()).collect();
        assert_eq!(spis, vec![0x20, 0x21]);
        // Re-added with the same key, an SA goes on from its numbers (never the same nonce).
        run(s, "state delete dst 192.0.2.2 proto esp spi 0x21").unwrap();
        run(s, &sa(0x21, KEY)).unwrap();
        assert_eq!(s.sas().iter().find(|x| x.spi() == 0x21).unwrap().oseq(), 3);
        // Flushes reach the file too.
        run(s, "state flush").unwrap();
        run(s, "policy flush").unwrap();
        drop(x21);
        drop(k);
        let b = std::fs::read(&path).unwrap();
        assert!(!contains(&b, &KEY[2..]), "flushed keys are in the file");
        let mut k = start(&path, conf(&c0)).unwrap();
        assert_eq!(listing(&mut k.store), (String::new(), String::new()));
    }

    /// A reload puts the configuration's SAs and policies back (those deleted at run time
    /// too) and keeps what run time added; the next restart agrees.
    #[test]
    fn a_reload_keeps_run_time_additions_and_restores_configured_entries() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("gw.state");
        let c0 = sa(0x10, KEY2);
        let mut k = start(&path, conf(&c0)).unwrap();
        let s = &mut k.store;
        run(s, &sa(0x20, KEY)).unwrap();
        run(s, "state delete dst 192.0.2.2 proto esp spi 0x10").unwrap();
        run(s, "policy delete dir in src 10.2.0.0/16 dst 10.1.0.0/16").unwrap();
        let p = s.prepare_reload(conf(&c0), Instant::now()).unwrap();
        assert!(
            p.body.contains("SAs 1 added") && p.body.contains("policies 1 added"),
            "{}",
            p.body
        );
        s.commit(p).unwrap();
        let before = listing(s);
        assert!(before.0.contains("spi 0x00000010") && before.0.contains("spi 0x00000020"));
        drop(k);
        // The same SAs and policies; the configured ones come first after a restart (the
        // reload had put 0x10 after 0x20).
        let mut k = start(&path, conf(&c0)).unwrap();
        let after = listing(&mut k.store);
        assert_eq!(after.1, before.1);
        let blocks = |t: &str| {
            let mut v: Vec<String> = t.split("src 192.0.2.1 dst").map(str::to_string).collect();
            v.sort();
            v
        };
        assert_eq!(blocks(&after.0), blocks(&before.0));
    }

    /// A configured SA updated at run time comes back updated; a reload puts the file's
    /// version back, and the next restart agrees.
    #[test]
    fn a_configured_sa_updated_at_run_time_stays_updated_until_a_reload() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("gw.state");
        let c0 = sa(0x10, KEY2);
        let limit = |s: &mut Store| {
            s.sas()
                .iter()
                .find(|x| x.spi() == 0x10)
                .unwrap()
                .cfg
                .lifetime
                .hard_packet_limit
        };
        let mut k = start(&path, conf(&c0)).unwrap();
        run(
            &mut k.store,
            &(c0.replace("add", "update") + " limit packet-hard 777"),
        )
        .unwrap();
        drop(k);
        let mut k = start(&path, conf(&c0)).unwrap();
        assert!(
            k.summary.contains("1 configured SA(s) updated"),
            "{}",
            k.summary
        );
        assert_eq!(limit(&mut k.store), 777);
        let p = k.store.prepare_reload(conf(&c0), Instant::now()).unwrap();
        k.store.commit(p).unwrap();
        assert_eq!(limit(&mut k.store), u64::MAX);
        drop(k);
        let mut k = start(&path, conf(&c0)).unwrap();
        assert_eq!(limit(&mut k.store), u64::MAX);
    }

    /// A config with nothing in it (the key manager adds everything) starts, and what was
    /// added comes back.
    #[test]
    fn an_empty_configuration_starts_and_gets_its_sas_back() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("gw.state");
        let empty = || parse_config("", "gw.conf").unwrap();
        let mut k = start(&path, empty()).unwrap();
        run(&mut k.store, &sa(0x30, KEY)).unwrap();
        run(&mut k.store, CONF.lines().next().unwrap()).unwrap();
        let before = listing(&mut k.store);
        drop(k);
        let mut k = start(&path, empty()).unwrap();
        assert_eq!(listing(&mut k.store), before);
    }

    /// A refused request leaves the file as it was; a file damaged where run time's records
    /// are is refused whole, with the reason.
    #[test]
    fn refused_changes_and_damaged_records_change_nothing() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("gw.state");
        let mut k = start(&path, conf("")).unwrap();
        run(&mut k.store, &sa(0x20, KEY)).unwrap();
        let b0 = std::fs::read(&path).unwrap();
        assert!(run(&mut k.store, &sa(0x20, KEY))
            .unwrap_err()
            .contains("File exists"));
        // Too long for its record: refused before anything moves.
        let long = sa(0x21, KEY).replace("reqid", &format!("{}reqid", " ".repeat(1000)));
        assert!(run(&mut k.store, &long).unwrap_err().contains("at most"));
        // A prepared change dropped (the maps refused it, say): its records go back.
        let r = parse_request(&sa(0x22, KEY), "request").unwrap();
        drop(
            k.store
                .execute(&r, None, Show::default(), Instant::now())
                .unwrap(),
        );
        let read = |b: &[u8]| persist::parse_file(b).unwrap();
        assert!(
            read(&std::fs::read(&path).unwrap()) == read(&b0),
            "the file changed"
        );
        drop(k);
        // The SA's request damaged (its text record, after its SA record).
        let mut b = b0.clone();
        let at = persist::HEADER_LEN + persist::RECORD_LEN + 80 + 6;
        b[at..at + 3].copy_from_slice(b"xyz");
        crate::keyfile::write_private(&path, &b).unwrap();
        let e = start(&path, conf("")).err().unwrap().to_string();
        assert!(
            e.contains("an SA's request") && e.contains("Nothing of it was applied"),
            "{e}"
        );
        assert!(
            std::fs::read(&path).unwrap() == b,
            "a refused file stays as it is"
        );
        // Truncated in the middle of the text record.
        crate::keyfile::write_private(&path, &b0[..b0.len() - 100]).unwrap();
        let e = start(&path, conf("")).err().unwrap().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    /// A file the previous version wrote (sequence numbers only) loads: its SAs go on.
    #[test]
    fn a_version_1_file_loads() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("gw.state");
        let c = conf(&sa(0x10, KEY2));
        let id = SaIdentity::of(&c.states[0]);
        let v1 = persist::serialize_v1(&[persist::Record {
            id,
            vals: persist::Carried {
                oseq: 77,
                in_top: 5,
                ..Default::default()
            },
            retired: false,
            deleted: false,
            text: None,
        }]);
        crate::keyfile::write_private(&path, v1).unwrap();
        let k = start(&path, c).unwrap();
        assert_eq!(k.file.report().version, 1);
        assert_eq!(k.store.sas()[0].oseq(), 77);
        drop(k);
        assert_eq!(
            persist::parse_file(&std::fs::read(&path).unwrap())
                .unwrap()
                .version,
            persist::VERSION
        );
    }
}
