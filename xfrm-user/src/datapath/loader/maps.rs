//! Filling the programs' maps (config, policy tables and their index, SAs, sockets) and
//! reading their counters.

use std::os::fd::RawFd;

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{lpm_trie::Key as LpmKey, Array, HashMap, LpmTrie, MapData, PerCpuArray, XskMap};
use xfrm_common::{
    Config, EncapPort, PolicyRule, PortKey, PrefixKey, RuleBitmap, SaKey, TableRef, CFG_ONE_ARMED,
    COUNTER_COUNT, COUNTER_NAMES, FAMILY_V4, FAMILY_V6, MAP_CONFIG, MAP_COUNTERS,
    MAP_COUNTERS_LOCAL, MAP_COUNTERS_OUT, MAP_POLICY_PORT, MAP_POLICY_PREFIX, MAP_POLICY_PROTO,
    MAP_POLICY_RULES, MAP_SAS, MAP_XSKS, MAP_XSKS_OUT, MAX_ENCAP_PORTS, MAX_SAS, TABLE_FWD,
    TABLE_IN, TABLE_OUT,
};

use crate::datapath::rules::{compile_db, compile_inbound, compile_sas, encap_ports, PolicyIndex};
use crate::policy::PolicyDir;
use crate::xfrm::{InputTables, XfrmDb};

use super::*;

/// Sum over CPUs of each verdict counter, named as in `xfrm_common::COUNTER_NAMES`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; COUNTER_COUNT]);

impl Counters {
    pub fn get(&self, c: xfrm_common::Counter) -> u64 {
        self.0[c as usize]
    }
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        COUNTER_NAMES.iter().copied().zip(self.0.iter().copied())
    }
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (name, v) in self.iter().filter(|(_, v)| *v != 0) {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{name}={v}")?;
        }
        if first {
            f.write_str("(all zero)")?;
        }
        Ok(())
    }
}

/// The programs' policy tables (see xfrm-common, "Three tables").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// `dir out`: the inside program (and the one-armed outside one) protects by it.
    Out,
    /// `dir in`: the outside program refuses clear text to local addresses by it.
    In,
    /// `dir fwd`: the outside program refuses clear text to be forwarded by it.
    Fwd,
}

impl Table {
    pub(super) fn id(self) -> u32 {
        match self {
            Self::Out => TABLE_OUT,
            Self::In => TABLE_IN,
            Self::Fwd => TABLE_FWD,
        }
    }

    /// The table of a policy direction.
    pub fn of(dir: PolicyDir) -> Self {
        match dir {
            PolicyDir::Out => Self::Out,
            PolicyDir::In => Self::In,
            PolicyDir::Fwd => Self::Fwd,
        }
    }
}

/// What one slot of the policy table left in the hash-like maps, to delete when the slot is
/// refilled (arrays are overwritten instead).
#[derive(Default)]
pub(super) struct SlotKeys {
    prefixes: Vec<LpmKey<PrefixKey>>,
    ports: Vec<PortKey>,
}

impl Datapath {
    pub(super) fn write_config(&mut self) -> Result<()> {
        let mut cfg: Array<&mut MapData, Config> = Array::try_from(
            self.ebpf
                .map_mut(MAP_CONFIG)
                .ok_or_else(|| anyhow!("no map {MAP_CONFIG}"))?,
        )?;
        cfg.set(0, self.config, 0)?;
        Ok(())
    }

    /// One-armed gateway: the outside program also applies the out policies (after the
    /// inbound SA lookup), redirecting protected packets to the outside sockets.
    pub fn set_one_armed(&mut self, on: bool) -> Result<()> {
        if on {
            self.config.flags |= CFG_ONE_ARMED;
        } else {
            self.config.flags &= !CFG_ONE_ARMED;
        }
        self.write_config()
    }

    /// The NAT-T ports of the outside program (see [`crate::datapath::rules::encap_ports`]).
    pub fn set_encap_ports(&mut self, ports: [EncapPort; MAX_ENCAP_PORTS]) -> Result<()> {
        self.config.encap = ports;
        self.write_config()
    }

    /// Everything the programs need from a database: its out, in and fwd policies, its SAs,
    /// its NAT-T ports (those `InputTables::new(db)` finds; a caller with other tables sets
    /// them with [`Self::set_encap_ports`]).
    pub fn install(&mut self, db: &XfrmDb) -> Result<()> {
        self.set_out_policies(&compile_db(db)?)?;
        for dir in [PolicyDir::In, PolicyDir::Fwd] {
            self.set_policies(Table::of(dir), &compile_inbound(db, dir)?)?;
        }
        self.set_sas(&compile_sas(db)?)?;
        self.set_encap_ports(encap_ports(&InputTables::new(db))?)
    }

    /// Replace the outbound rule table and its index (see [`Self::set_policies`]).
    pub fn set_out_policies(&mut self, rules: &[PolicyRule]) -> Result<()> {
        self.set_policies(Table::Out, rules)
    }

    /// Replace the rules of `which` and their index. Everything goes to the table's idle
    /// slot, then one store to CONFIG makes it live: a packet sees the old table or the new
    /// one, never a mix. The old slot's index entries are deleted after an RCU grace period
    /// (no program run can still be reading them), so the slot is clean for the next update.
    pub fn set_policies(&mut self, which: Table, rules: &[PolicyRule]) -> Result<()> {
        let index = PolicyIndex::build(rules)?;
        let half = self.live_half[which.id() as usize] ^ 1;
        let slot = 2 * which.id() + half;
        let table = TableRef::new(slot, rules.len() as u32).with_flags(index.flags);
        {
            let mut arr: Array<&mut MapData, PolicyRule> = Array::try_from(
                self.ebpf
                    .map_mut(MAP_POLICY_RULES)
                    .ok_or_else(|| anyhow!("no map {MAP_POLICY_RULES}"))?,
            )?;
            for (i, r) in rules.iter().enumerate() {
                arr.set(table.index(i as u32), r, 0)?;
            }
        }
        {
            // Every protocol entry of the slot: the ones not listed are empty.
            let mut protos = vec![RuleBitmap::default(); 512];
            for (family, proto, b) in &index.protos {
                protos[(xfrm_common::proto_index(0, *family, *proto)) as usize] = *b;
            }
            let mut arr: Array<&mut MapData, RuleBitmap> = Array::try_from(
                self.ebpf
                    .map_mut(MAP_POLICY_PROTO)
                    .ok_or_else(|| anyhow!("no map {MAP_POLICY_PROTO}"))?,
            )?;
            for family in [FAMILY_V4, FAMILY_V6] {
                for proto in 0..=255u8 {
                    let b = &protos[xfrm_common::proto_index(0, family, proto) as usize];
                    arr.set(xfrm_common::proto_index(slot, family, proto), b, 0)?;
                }
            }
        }
        let mut keys = SlotKeys::default();
        {
            let mut trie: LpmTrie<&mut MapData, PrefixKey, RuleBitmap> = LpmTrie::try_from(
                self.ebpf
                    .map_mut(MAP_POLICY_PREFIX)
                    .ok_or_else(|| anyhow!("no map {MAP_POLICY_PREFIX}"))?,
            )?;
            for (len, k, b) in &index.prefixes {
                let key = LpmKey::new(
                    *len,
                    PrefixKey {
                        slot: slot as u8,
                        ..*k
                    },
                );
                trie.insert(&key, b, 0)
                    .with_context(|| format!("{MAP_POLICY_PREFIX} insert"))?;
                keys.prefixes.push(key);
            }
        }
        {
            let mut ports: HashMap<&mut MapData, PortKey, RuleBitmap> = HashMap::try_from(
                self.ebpf
                    .map_mut(MAP_POLICY_PORT)
                    .ok_or_else(|| anyhow!("no map {MAP_POLICY_PORT}"))?,
            )?;
            for (k, b) in &index.ports {
                let key = PortKey {
                    slot: slot as u8,
                    ..*k
                };
                ports
                    .insert(key, b, 0)
                    .with_context(|| format!("{MAP_POLICY_PORT} insert"))?;
                keys.ports.push(key);
            }
        }
        match which {
            Table::Out => self.config.out = table,
            Table::In => self.config.inp = table,
            Table::Fwd => self.config.fwd = table,
        }
        self.write_config()?;
        let old = (slot ^ 1) as usize;
        self.live_half[which.id() as usize] = half;
        self.slot_keys[slot as usize] = keys;
        let stale = std::mem::take(&mut self.slot_keys[old]);
        if stale.prefixes.is_empty() && stale.ports.is_empty() {
            return Ok(());
        }
        rcu_grace_period();
        {
            let mut trie: LpmTrie<&mut MapData, PrefixKey, RuleBitmap> =
                LpmTrie::try_from(self.ebpf.map_mut(MAP_POLICY_PREFIX).unwrap())?;
            for k in &stale.prefixes {
                trie.remove(k)
                    .with_context(|| format!("{MAP_POLICY_PREFIX} remove"))?;
            }
        }
        let mut ports: HashMap<&mut MapData, PortKey, RuleBitmap> =
            HashMap::try_from(self.ebpf.map_mut(MAP_POLICY_PORT).unwrap())?;
        for k in &stale.ports {
            ports
                .remove(k)
                .with_context(|| format!("{MAP_POLICY_PORT} remove"))?;
        }
        Ok(())
    }

    /// Replace the inbound SA table: (daddr, SPI, protocol) → SA id. Entries are added or
    /// changed one by one (each atomically), then the ones no longer wanted are removed.
    pub fn set_sas(&mut self, sas: &[(SaKey, u32)]) -> Result<()> {
        if sas.len() > MAX_SAS as usize {
            bail!("{} SAs: the XDP table holds {MAX_SAS}", sas.len());
        }
        let want: std::collections::HashMap<SaKey, u32> = sas.iter().copied().collect();
        let mut map: HashMap<&mut MapData, SaKey, u32> = HashMap::try_from(
            self.ebpf
                .map_mut(MAP_SAS)
                .ok_or_else(|| anyhow!("no map {MAP_SAS}"))?,
        )?;
        for (k, id) in &want {
            if self.sas.get(k) != Some(id) {
                map.insert(k, id, 0)
                    .with_context(|| format!("{MAP_SAS} insert (spi {:#x})", k.spi))?;
            }
        }
        for k in self.sas.keys() {
            if !want.contains_key(k) {
                map.remove(k)
                    .with_context(|| format!("{MAP_SAS} remove (spi {:#x})", k.spi))?;
            }
        }
        self.sas = want;
        Ok(())
    }

    /// Changes only the given SA map entries (a running gateway's change): what
    /// [`Self::set_sas`] does for the whole table, at the cost of the change.
    pub fn change_sas(&mut self, remove: &[SaKey], insert: &[(SaKey, u32)]) -> Result<()> {
        let mut map: HashMap<&mut MapData, SaKey, u32> = HashMap::try_from(
            self.ebpf
                .map_mut(MAP_SAS)
                .ok_or_else(|| anyhow!("no map {MAP_SAS}"))?,
        )?;
        for k in remove {
            // An entry an insert below rewrites stays (no moment without it).
            if self.sas.contains_key(k) && !insert.iter().any(|(i, _)| i == k) {
                map.remove(k)
                    .with_context(|| format!("{MAP_SAS} remove (spi {:#x})", k.spi))?;
                self.sas.remove(k);
            }
        }
        for (k, id) in insert {
            if self.sas.get(k) != Some(id) {
                if self.sas.len() >= MAX_SAS as usize && !self.sas.contains_key(k) {
                    bail!("{MAP_SAS}: full ({MAX_SAS} SAs)");
                }
                map.insert(k, id, 0)
                    .with_context(|| format!("{MAP_SAS} insert (spi {:#x})", k.spi))?;
                self.sas.insert(*k, *id);
            }
        }
        Ok(())
    }

    pub(super) fn xsk_map(&mut self, name: &str) -> Result<XskMap<&mut MapData>> {
        Ok(XskMap::try_from(
            self.ebpf
                .map_mut(name)
                .ok_or_else(|| anyhow!("no map {name}"))?,
        )?)
    }

    /// Put the AF_XDP socket `fd` (bound to the inside interface) in charge of receive queue
    /// `queue`.
    pub fn set_socket(&mut self, queue: u32, fd: RawFd) -> Result<()> {
        self.xsk_map(MAP_XSKS)?
            .set(queue, fd, 0)
            .with_context(|| format!("{MAP_XSKS}[{queue}] = fd {fd}"))
    }

    /// The same for the outside interface's queue `queue`.
    pub fn set_outside_socket(&mut self, queue: u32, fd: RawFd) -> Result<()> {
        self.xsk_map(MAP_XSKS_OUT)?
            .set(queue, fd, 0)
            .with_context(|| format!("{MAP_XSKS_OUT}[{queue}] = fd {fd}"))
    }

    /// Remove the socket of `queue` (what a dead worker amounts to: the program then drops).
    pub fn clear_socket(&mut self, queue: u32) -> Result<()> {
        clear_xsk(self.xsk_map(MAP_XSKS)?, queue)
    }

    /// The same for the outside interface.
    pub fn clear_outside_socket(&mut self, queue: u32) -> Result<()> {
        clear_xsk(self.xsk_map(MAP_XSKS_OUT)?, queue)
    }

    /// The inside program's verdict counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        self.counters_of(MAP_COUNTERS)
    }

    /// The outside program's verdict counters, summed over CPUs.
    pub fn outside_counters(&self) -> Result<Counters> {
        self.counters_of(MAP_COUNTERS_OUT)
    }

    /// `xfrm_local_out`'s verdict counters (the gateway's own traffic), summed over CPUs.
    pub fn local_counters(&self) -> Result<Counters> {
        self.counters_of(MAP_COUNTERS_LOCAL)
    }

    pub(super) fn counters_of(&self, name: &str) -> Result<Counters> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(name)
                .ok_or_else(|| anyhow!("no map {name}"))?,
        )?;
        let mut out = [0u64; COUNTER_COUNT];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = map.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(Counters(out))
    }
}

pub(super) fn clear_xsk(mut map: XskMap<&mut MapData>, queue: u32) -> Result<()> {
    match map.unset(queue) {
        Ok(()) => Ok(()),
        // Already empty.
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Wait until every BPF program run that started before now has finished: membarrier's
/// global command is a synchronize_rcu(), and XDP runs inside an RCU read-side section.
/// Kernels that refuse it (nohz_full) get a pause far longer than any program run.
pub(super) fn rcu_grace_period() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r != 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
