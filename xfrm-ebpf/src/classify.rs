//! The policy lookup (`xfrm_policy_lookup`): the first rule of the live table that matches,
//! the table being sorted by priority then config order in user space. The inside program
//! looks up the out table; the outside program the in and fwd tables (policy_check.rs).
//!
//! Design (see xfrm-common's "The policy index"): a linear scan costs ~5 ns per rule here
//! (5.5 µs for 1024 rules, measured), so the program first narrows the table to the rules
//! that can match with one bitmap per selector field — source and destination prefix from an
//! LPM trie, protocol from an array, source and destination port from a hash (only when
//! some rule names that port exactly) — ANDs them, and runs the full
//! `xfrm_selector_match` on the candidates in table order. The kernel does the same in
//! spirit (xfrm_policy_inexact_bin: candidate lists by destination and source prefix, then
//! the priority scan of __xfrm_policy_eval_candidates); bitmaps keep the one table order
//! without merging lists, so "lowest priority value wins, ties by insertion order" holds by
//! construction: the AND only removes rules that cannot match.

use aya_ebpf::{cty::c_void, helpers::bpf_loop, maps::lpm_trie::Key};
use xfrm_common::{
    PolicyRule, PortKey, PrefixKey, RuleBitmap, TableRef, BITMAP_WORDS, DIM_DPORT, DIM_DST,
    DIM_SPORT, DIM_SRC, FAMILY_V4, PREFIX_KEY_HEADER_BITS,
};

use crate::{parse::Flow, CONFIG, POLICY_PORT, POLICY_PREFIX, POLICY_PROTO, POLICY_RULES};

/// The out table's lookup (the inside program, and the one-armed outside one).
#[inline(always)]
pub fn lookup(flow: &Flow) -> Option<&'static PolicyRule> {
    lookup_table(flow, CONFIG.get(0)?.out)
}

/// The first rule of `table` that matches `flow`.
#[inline(always)]
pub fn lookup_table(flow: &Flow, table: TableRef) -> Option<&'static PolicyRule> {
    let len = table.len();
    if len == 0 {
        return None;
    }
    // A few rules: scanning them costs less than the index's lookups (~5 ns a rule against
    // ~40 ns; measured by `cargo xtask bench --classifier`). Same table, same order.
    if len <= LINEAR_MAX {
        for i in 0..LINEAR_MAX {
            if i >= len {
                break;
            }
            let rule = POLICY_RULES.get(table.index(i))?;
            if matches(rule, flow) {
                return Some(rule);
            }
        }
        return None;
    }
    let slot = table.slot();
    // An address no rule prefix covers, or a protocol no rule accepts: no candidate at all.
    let dst = prefix(slot, DIM_DST, flow, &flow.dst)?;
    let src = prefix(slot, DIM_SRC, flow, &flow.src)?;
    let proto = POLICY_PROTO.get(xfrm_common::proto_index(slot, flow.family, flow.proto))?;
    // Without exact ports in the table, the protocol bitmap stands in for a port bitmap
    // (ANDing it twice changes nothing).
    let sport = if table.has(TableRef::SPORT_INDEXED) {
        port(slot, DIM_SPORT, flow.family, flow.sport)?
    } else {
        proto
    };
    let dport = if table.has(TableRef::DPORT_INDEXED) {
        port(slot, DIM_DPORT, flow.family, flow.dport)?
    } else {
        proto
    };
    let mut scan = Scan {
        bitmaps: [dst, src, proto, sport, dport],
        flow: *flow,
        bits: 0,
        words: dst.summary & src.summary & proto.summary & sport.summary & dport.summary,
        word: 0,
        table: table.0,
        found: NOT_FOUND,
    };
    // bpf_loop steps of PER_STEP turns, lowest position first = table order; a turn tries a
    // candidate or loads a word, so len + BITMAP_WORDS turns always finish the walk. The
    // verifier checks the small step function instead of walking up to 1024 candidates
    // inline (which it refuses: over a million instructions), and the kernel inlines the
    // loop (a direct call per step).
    let steps = (len + BITMAP_WORDS as u32).div_ceil(PER_STEP);
    // SAFETY: the helper calls scan_step(i, &mut scan) for i < steps, on this stack.
    unsafe {
        bpf_loop(
            steps,
            scan_step as *const () as *mut c_void,
            &mut scan as *mut Scan as *mut c_void,
            0,
        )
    };
    if scan.found == NOT_FOUND {
        return None;
    }
    POLICY_RULES.get(table.index(scan.found))
}

const NOT_FOUND: u32 = u32::MAX;

/// Turns of one bpf_loop step: amortises the step's call over several candidates while the
/// verifier still walks only this many per check of the step function.
const PER_STEP: u32 = 8;

/// Tables up to this many rules are scanned without the index.
pub const LINEAR_MAX: u32 = 4;

/// What `scan_step` works on: the five candidate bitmaps (destination, source,
/// protocol, source port, destination port), the packet, where the walk is, the answer.
#[repr(C)]
struct Scan {
    bitmaps: [&'static RuleBitmap; 5],
    flow: Flow,
    /// Candidates of word `word` not tried yet.
    bits: u64,
    /// Words not loaded yet that may hold candidates (AND of the summaries).
    words: u64,
    word: u32,
    table: u32,
    /// Position of the first matching rule, or NOT_FOUND.
    found: u32,
}

/// Up to [`PER_STEP`] candidates (the AND of the five bitmaps, word by word, lowest bit
/// first), each fully matched: 1 (stop) on a hit or when no candidate is left, 0 to go on.
/// Loading the next word with candidates takes one of the PER_STEP turns.
#[inline(never)]
extern "C" fn scan_step(_step: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `lookup` gave it: its Scan, alive meanwhile.
    let s = unsafe { &mut *(ctx as *mut Scan) };
    let table = TableRef(s.table);
    for _ in 0..PER_STEP {
        if s.bits == 0 {
            if s.words == 0 {
                return 1;
            }
            let low = s.words & s.words.wrapping_neg();
            s.words ^= low;
            // Masked rather than compared: a compare may land on another copy of the
            // register, and the verifier must see the bound on the one that indexes.
            // Summaries only have bits below BITMAP_WORDS (a power of two): no change.
            s.word = bit_index(low) & (BITMAP_WORDS as u32 - 1);
            let w = s.word as usize;
            let b = &s.bitmaps;
            // May be empty (a summary bit promises more than the AND keeps): next turn.
            s.bits = b[0].words[w] & b[1].words[w] & b[2].words[w] & b[3].words[w] & b[4].words[w];
            continue;
        }
        let low = s.bits & s.bits.wrapping_neg();
        s.bits ^= low;
        let i = s.word * 64 + bit_index(low);
        if let Some(rule) = POLICY_RULES.get(table.index(i)) {
            if matches(rule, &s.flow) {
                s.found = i;
                return 1;
            }
        }
    }
    0
}

/// The rules whose `dim` prefix covers `addr`: the bitmap of the longest indexed prefix.
#[inline(always)]
fn prefix(slot: u32, dim: u8, flow: &Flow, addr: &[u32; 4]) -> Option<&'static RuleBitmap> {
    let bits = if flow.family == FAMILY_V4 { 32 } else { 128 };
    let key = Key::new(
        PREFIX_KEY_HEADER_BITS + bits,
        PrefixKey {
            slot: slot as u8,
            dim,
            family: flow.family,
            _pad: 0,
            addr: *addr,
        },
    );
    POLICY_PREFIX.get(&key)
}

/// The rules whose `dim` port selector accepts `p`: its own entry, or "any other port".
#[inline(always)]
fn port(slot: u32, dim: u8, family: u8, p: u16) -> Option<&'static RuleBitmap> {
    let mut key = PortKey {
        slot: slot as u8,
        dim,
        family,
        any_other: 0,
        port: p,
        _pad: 0,
    };
    if let Some(b) = POLICY_PORT.get_ptr(key) {
        // SAFETY: a map value of RuleBitmap, alive for the program run (RCU); only read.
        return Some(unsafe { &*b });
    }
    key.any_other = 1;
    key.port = 0;
    // SAFETY: as above.
    POLICY_PORT.get_ptr(key).map(|b| unsafe { &*b })
}

/// Position of the single set bit of `low`: the population count of the bits below it.
/// Branch-free (SWAR), as BPF has no count-trailing-zeros instruction.
#[inline(always)]
fn bit_index(low: u64) -> u32 {
    let mut x = low.wrapping_sub(1);
    x -= (x >> 1) & 0x5555_5555_5555_5555;
    x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
    x = (x + (x >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    (x.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32
}

/// xfrm_selector_match: family, masked addresses, protocol (0 = any), masked ports.
///
/// Branch-free on purpose: one conditional jump, so one verifier state per candidate step
/// rather than one per field.
#[inline(always)]
fn matches(r: &PolicyRule, f: &Flow) -> bool {
    let mut d = 0u32;
    for w in 0..4 {
        d |= (f.src[w] & r.src_mask[w]) ^ r.src[w];
        d |= (f.dst[w] & r.dst_mask[w]) ^ r.dst[w];
    }
    d |= u32::from((f.sport & r.sport_mask) ^ r.sport);
    d |= u32::from((f.dport & r.dport_mask) ^ r.dport);
    d |= u32::from(r.family ^ f.family);
    // Zero when the rule's protocol is 0 (any) or equal to the packet's.
    d |= u32::from(r.proto) * u32::from(r.proto ^ f.proto);
    d == 0
}
