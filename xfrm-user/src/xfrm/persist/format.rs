//! The state file's bytes (docs/state-file.md). Native byte order: the file never leaves
//! the machine.
//!
//! ```text
//! header, 64 bytes: magic "XFRMSEQ\0", version u32 = 2, header size u32 = 64,
//!                   record size u32 = 1024, records in use u32 (high-water mark), zeros
//! SA record:   oseq u64 @0, inbound top u64 @8, bytes u64 @16, input packets u64 @24,
//!              add time u64 @32, use time u64 @40, kind u8 = 1 @48, flags u8 @49
//!              (bit 0 retired, bit 1 a configured SA deleted at run time), family u8 @50,
//!              proto u8 @51, spi u32 @52, daddr [16] @56, saddr [16] @72,
//!              key fingerprint [16] @88, text record + 1 u32 @104 (0: none), zeros
//! text record: zeros @0..48, kind u8 = 2 @48, what u8 @49 (1 the `state add|update` of
//!              an SA, 2 a policy's `policy add|update`, 3 a configured policy deleted),
//!              length u16 @50, order u64 @56, position u64 @64, owner record u32 @72,
//!              zeros, body @80 (length bytes, then zeros)
//! free record: kind 0 @48; nothing else in it is read.
//! ```
//!
//! Version 1 (128-byte records: oseq, top, identity; no run-time changes) is read and
//! rewritten as version 2.

use zeroize::Zeroizing;

use super::identity::SaIdentity;
use xfrm_common::{MAX_POLICIES, MAX_SAS};

pub const MAGIC: [u8; 8] = *b"XFRMSEQ\0";
pub const VERSION: u32 = 2;
pub const VERSION_1: u32 = 1;
pub const HEADER_LEN: usize = 64;
pub const RECORD_LEN: usize = 1024;
const RECORD_LEN_V1: usize = 128;
/// Records of SAs no longer there kept at most (the most recently retired first).
pub const MAX_RETIRED: usize = 4096;
/// Every SA twice (its record and its text), the retired ones, every policy twice.
pub const MAX_RECORDS: usize =
    2 * MAX_SAS as usize + MAX_RETIRED + 3 * 2 * MAX_POLICIES as usize + 64;
/// The longest request a text record holds.
pub const TEXT_MAX: usize = RECORD_LEN - OFF_TEXT;

pub(super) const OFF_HWM: usize = 20;

pub(super) const OFF_KIND: usize = 48;
pub(super) const OFF_FLAGS: usize = 49;
const OFF_FAMILY: usize = 50;
const OFF_PROTO: usize = 51;
const OFF_SPI: usize = 52;
const OFF_DADDR: usize = 56;
const OFF_SADDR: usize = 72;
const OFF_KEY_FP: usize = 88;
pub(super) const OFF_TEXT_REF: usize = 104;
const SA_END: usize = 108;

pub(super) const OFF_WHAT: usize = 49;
const OFF_LEN: usize = 50;
const OFF_ORDER: usize = 56;
const OFF_POS: usize = 64;
const OFF_OWNER: usize = 72;
pub(super) const OFF_TEXT: usize = 80;

pub(super) const KIND_FREE: u8 = 0;
pub(super) const KIND_SA: u8 = 1;
pub(super) const KIND_TEXT: u8 = 2;
pub(super) const FLAG_RETIRED: u8 = 1;
pub(super) const FLAG_DELETED: u8 = 2;

/// What a text record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TextKind {
    /// The `state add|update` that made an SA what it is (its SA record points here).
    Sa = 1,
    /// A policy added or updated at run time: its `policy add|update`.
    Policy = 2,
    /// A configured policy deleted at run time: its (dir, selector) as [`policy_key_bytes`]
    /// writes them.
    PolicyDeleted = 3,
}

impl TextKind {
    fn of(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Sa),
            2 => Some(Self::Policy),
            3 => Some(Self::PolicyDeleted),
            _ => None,
        }
    }
}

/// An SA's lifetime words as kept (slot.rs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    pub oseq: u64,
    pub in_top: u64,
    pub bytes: u64,
    pub in_packets: u64,
    pub add_time: u64,
    pub use_time: u64,
}

impl Carried {
    pub(super) fn words(&self) -> [u64; 6] {
        [
            self.oseq,
            self.in_top,
            self.bytes,
            self.in_packets,
            self.add_time,
            self.use_time,
        ]
    }
}

/// The request text of an SA added or updated at run time, where it stands among the SAs
/// (its index then), and when it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaText {
    pub text: Zeroizing<String>,
    pub pos: u64,
    pub order: u64,
}

/// One SA record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub id: SaIdentity,
    pub vals: Carried,
    /// Not an SA of the run that wrote the file (its numbers are kept).
    pub retired: bool,
    /// A configured SA deleted at run time (retired too): a restart leaves it out.
    pub deleted: bool,
    pub text: Option<SaText>,
}

/// A policy's text record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextRecord {
    pub what: TextKind,
    pub order: u64,
    pub pos: u64,
    pub body: Zeroizing<Vec<u8>>,
}

/// A whole file, as read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Saved {
    pub version: u32,
    pub sas: Vec<Record>,
    /// Policy texts and deleted-policy marks, in file order.
    pub texts: Vec<TextRecord>,
}

fn rd_u16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}
fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn rd_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(a)
}
fn arr16(b: &[u8], at: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    a
}

/// Reads a state file's SA records, in file order (see [`parse_file`]).
pub fn parse(b: &[u8]) -> Result<Vec<Record>, String> {
    parse_file(b).map(|s| s.sas)
}

fn check_header(b: &[u8]) -> Result<u32, String> {
    if b.len() < HEADER_LEN {
        return Err(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            b.len()
        ));
    }
    if b[..8] != MAGIC {
        return Err("not an xfrm-user state file (bad magic)".into());
    }
    let version = rd_u32(b, 8);
    let want = match version {
        VERSION => RECORD_LEN,
        VERSION_1 => RECORD_LEN_V1,
        v => {
            return Err(format!(
                "version {v}, this build reads {VERSION_1} and {VERSION}"
            ))
        }
    };
    let (hl, rl) = (rd_u32(b, 12) as usize, rd_u32(b, 16) as usize);
    if hl != HEADER_LEN || rl != want {
        return Err(format!(
            "header/record sizes {hl}/{rl}, expected {HEADER_LEN}/{want} for version {version}"
        ));
    }
    Ok(version)
}

/// Reads a whole state file. Every check that can fail is a reason, never a panic (the file
/// may be anything); nothing of a file with an error is used.
pub fn parse_file(b: &[u8]) -> Result<Saved, String> {
    match check_header(b)? {
        VERSION_1 => parse_v1(b),
        _ => parse_v2(b),
    }
}

fn identity(
    r: &[u8],
    family: usize,
    proto: usize,
    spi: usize,
    d: usize,
    s: usize,
    fp: usize,
) -> SaIdentity {
    SaIdentity {
        family: r[family],
        proto: r[proto],
        spi: rd_u32(r, spi),
        daddr: arr16(r, d),
        saddr: arr16(r, s),
        key_fp: arr16(r, fp),
    }
}

fn check_identity(i: usize, id: &SaIdentity) -> Result<(), String> {
    if !matches!(id.family, 4 | 6) || !matches!(id.proto, 50 | 51) {
        return Err(format!(
            "record {i}: family {} proto {} (not an SA)",
            id.family, id.proto
        ));
    }
    Ok(())
}

fn parse_v1(b: &[u8]) -> Result<Saved, String> {
    let count = rd_u32(b, 20) as usize;
    if count > MAX_RECORDS {
        return Err(format!("{count} records (at most {MAX_RECORDS})"));
    }
    let want = HEADER_LEN + count * RECORD_LEN_V1;
    if b.len() != want {
        return Err(format!(
            "{} bytes, but the header announces {count} records ({want} bytes): truncated or \
             grown",
            b.len()
        ));
    }
    let mut out = Vec::with_capacity(count);
    let mut seen = std::collections::HashSet::with_capacity(count);
    for i in 0..count {
        let r = &b[HEADER_LEN + i * RECORD_LEN_V1..HEADER_LEN + (i + 1) * RECORD_LEN_V1];
        let id = identity(r, 21, 20, 16, 24, 40, 56);
        check_identity(i, &id)?;
        if r[22] & !FLAG_RETIRED != 0 || r[23] != 0 || r[72..].iter().any(|&x| x != 0) {
            return Err(format!(
                "record {i}: unknown flags or reserved bytes not zero"
            ));
        }
        if !seen.insert(id) {
            return Err(format!("record {i}: the same SA twice"));
        }
        out.push(Record {
            id,
            vals: Carried {
                oseq: rd_u64(r, 0),
                in_top: rd_u64(r, 8),
                ..Default::default()
            },
            retired: r[22] & FLAG_RETIRED != 0,
            deleted: false,
            text: None,
        });
    }
    Ok(Saved {
        version: VERSION_1,
        sas: out,
        texts: Vec::new(),
    })
}

fn parse_v2(b: &[u8]) -> Result<Saved, String> {
    let hwm = rd_u32(b, OFF_HWM) as usize;
    if hwm > MAX_RECORDS {
        return Err(format!("{hwm} records (at most {MAX_RECORDS})"));
    }
    let body = b.len() - HEADER_LEN;
    if !body.is_multiple_of(RECORD_LEN) || body / RECORD_LEN < hwm {
        return Err(format!(
            "{} bytes, but the header announces {hwm} records ({} bytes at least, in \
             {RECORD_LEN}-byte records): truncated",
            b.len(),
            HEADER_LEN + hwm * RECORD_LEN
        ));
    }
    if b[24..HEADER_LEN].iter().any(|&x| x != 0) {
        return Err("header: reserved bytes not zero".into());
    }
    let rec = |i: usize| &b[HEADER_LEN + i * RECORD_LEN..HEADER_LEN + (i + 1) * RECORD_LEN];
    let mut saved = Saved {
        version: VERSION,
        ..Default::default()
    };
    // Past the high-water mark nothing was ever in use.
    if (hwm..body / RECORD_LEN).any(|i| rec(i)[OFF_KIND] != KIND_FREE) {
        return Err("a record in use past the high-water mark".into());
    }
    let mut seen = std::collections::HashSet::new();
    for i in 0..hwm {
        let r = rec(i);
        match r[OFF_KIND] {
            KIND_FREE => {}
            KIND_SA => {
                let id = identity(
                    r, OFF_FAMILY, OFF_PROTO, OFF_SPI, OFF_DADDR, OFF_SADDR, OFF_KEY_FP,
                );
                check_identity(i, &id)?;
                let flags = r[OFF_FLAGS];
                if flags & !(FLAG_RETIRED | FLAG_DELETED) != 0
                    || (flags & FLAG_DELETED != 0 && flags & FLAG_RETIRED == 0)
                    || r[SA_END..].iter().any(|&x| x != 0)
                {
                    return Err(format!(
                        "record {i}: unknown flags or reserved bytes not zero"
                    ));
                }
                if !seen.insert(id) {
                    return Err(format!("record {i}: the same SA twice"));
                }
                let text = match rd_u32(r, OFF_TEXT_REF) {
                    0 => None,
                    t => {
                        let t = t as usize - 1;
                        let tr = (t < hwm).then(|| rec(t));
                        let tr = tr
                            .filter(|tr| tr[OFF_KIND] == KIND_TEXT)
                            .ok_or_else(|| format!("record {i}: its text record {t} is missing"))?;
                        let (what, order, pos, body) = text_record(t, tr)?;
                        if what != TextKind::Sa || rd_u32(tr, OFF_OWNER) as usize != i {
                            return Err(format!("record {i}: text record {t} is not its own"));
                        }
                        let text = String::from_utf8(body.to_vec())
                            .map_err(|_| format!("record {t}: the SA's request is not UTF-8"))?;
                        Some(SaText {
                            text: Zeroizing::new(text),
                            pos,
                            order,
                        })
                    }
                };
                if text.is_some() && flags & FLAG_RETIRED != 0 {
                    return Err(format!("record {i}: retired, yet with a request"));
                }
                let w = |k: usize| rd_u64(r, 8 * k);
                saved.sas.push(Record {
                    id,
                    vals: Carried {
                        oseq: w(0),
                        in_top: w(1),
                        bytes: w(2),
                        in_packets: w(3),
                        add_time: w(4),
                        use_time: w(5),
                    },
                    retired: flags & FLAG_RETIRED != 0,
                    deleted: flags & FLAG_DELETED != 0,
                    text,
                });
            }
            KIND_TEXT => {
                let (what, order, pos, body) = text_record(i, r)?;
                // An SA's text is read through its SA record; one no SA record names is
                // left over from a change a kill interrupted (it goes at the rewrite).
                if what != TextKind::Sa {
                    saved.texts.push(TextRecord {
                        what,
                        order,
                        pos,
                        body: Zeroizing::new(body.to_vec()),
                    });
                }
            }
            k => return Err(format!("record {i}: unknown kind {k}")),
        }
    }
    Ok(saved)
}

fn text_record(i: usize, r: &[u8]) -> Result<(TextKind, u64, u64, &[u8]), String> {
    let what = TextKind::of(r[OFF_WHAT])
        .ok_or_else(|| format!("record {i}: unknown text kind {}", r[OFF_WHAT]))?;
    let len = rd_u16(r, OFF_LEN) as usize;
    if len > TEXT_MAX {
        return Err(format!(
            "record {i}: text of {len} bytes (at most {TEXT_MAX})"
        ));
    }
    if r[..OFF_KIND].iter().any(|&x| x != 0)
        || r[76..OFF_TEXT].iter().any(|&x| x != 0)
        || r[OFF_TEXT + len..].iter().any(|&x| x != 0)
        || (what != TextKind::Sa && rd_u32(r, OFF_OWNER) != 0)
    {
        return Err(format!("record {i}: reserved bytes not zero"));
    }
    Ok((
        what,
        rd_u64(r, OFF_ORDER),
        rd_u64(r, OFF_POS),
        &r[OFF_TEXT..OFF_TEXT + len],
    ))
}

/// The header of a version-2 file with `hwm` records in use.
pub(super) fn header(hwm: usize) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_ne_bytes());
    b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_ne_bytes());
    b[16..20].copy_from_slice(&(RECORD_LEN as u32).to_ne_bytes());
    b[OFF_HWM..OFF_HWM + 4].copy_from_slice(&(hwm as u32).to_ne_bytes());
    b
}

/// An SA record's bytes (kind set: in use).
pub(super) fn sa_record(
    id: &SaIdentity,
    vals: &Carried,
    flags: u8,
    text_rec: Option<u32>,
) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    for (k, w) in vals.words().iter().enumerate() {
        r[8 * k..8 * k + 8].copy_from_slice(&w.to_ne_bytes());
    }
    sa_identity_into(&mut r, id);
    r[OFF_FLAGS] = flags;
    r[OFF_TEXT_REF..OFF_TEXT_REF + 4].copy_from_slice(&text_rec.map_or(0, |t| t + 1).to_ne_bytes());
    r[OFF_KIND] = KIND_SA;
    r
}

/// The identity fields of an SA record.
pub(super) fn sa_identity_into(r: &mut [u8], id: &SaIdentity) {
    r[OFF_FAMILY] = id.family;
    r[OFF_PROTO] = id.proto;
    r[OFF_SPI..OFF_SPI + 4].copy_from_slice(&id.spi.to_ne_bytes());
    r[OFF_DADDR..OFF_DADDR + 16].copy_from_slice(&id.daddr);
    r[OFF_SADDR..OFF_SADDR + 16].copy_from_slice(&id.saddr);
    r[OFF_KEY_FP..OFF_KEY_FP + 16].copy_from_slice(&id.key_fp);
}

/// A text record's bytes, without its kind (the writer sets that last). The caller wipes
/// the returned buffer (it may hold a key): it is a `Zeroizing`.
pub(super) fn text_record_bytes(
    what: TextKind,
    order: u64,
    pos: u64,
    owner: u32,
    body: &[u8],
) -> Zeroizing<Vec<u8>> {
    debug_assert!(body.len() <= TEXT_MAX);
    let mut r = Zeroizing::new(vec![0u8; RECORD_LEN]);
    r[OFF_WHAT] = what as u8;
    r[OFF_LEN..OFF_LEN + 2].copy_from_slice(&(body.len() as u16).to_ne_bytes());
    r[OFF_ORDER..OFF_ORDER + 8].copy_from_slice(&order.to_ne_bytes());
    r[OFF_POS..OFF_POS + 8].copy_from_slice(&pos.to_ne_bytes());
    r[OFF_OWNER..OFF_OWNER + 4].copy_from_slice(&owner.to_ne_bytes());
    r[OFF_TEXT..OFF_TEXT + body.len()].copy_from_slice(body);
    r
}

/// The bytes of a version-2 file: each SA record followed by its text record, then the
/// policy texts. (The daemon writes the same through `StateFile`; tests build files here.)
pub fn serialize(saved: &Saved) -> Zeroizing<Vec<u8>> {
    let mut b = Zeroizing::new(Vec::new());
    let mut recs: Vec<Zeroizing<Vec<u8>>> = Vec::new();
    for r in &saved.sas {
        let i = recs.len() as u32;
        let flags =
            (if r.retired { FLAG_RETIRED } else { 0 }) | (if r.deleted { FLAG_DELETED } else { 0 });
        recs.push(Zeroizing::new(
            sa_record(&r.id, &r.vals, flags, r.text.as_ref().map(|_| i + 1)).to_vec(),
        ));
        if let Some(t) = &r.text {
            let mut tr = text_record_bytes(TextKind::Sa, t.order, t.pos, i, t.text.as_bytes());
            tr[OFF_KIND] = KIND_TEXT;
            recs.push(tr);
        }
    }
    for t in &saved.texts {
        let mut tr = text_record_bytes(t.what, t.order, t.pos, 0, &t.body);
        tr[OFF_KIND] = KIND_TEXT;
        recs.push(tr);
    }
    b.extend_from_slice(&header(recs.len()));
    for r in &recs {
        b.extend_from_slice(r);
    }
    b
}

/// Version 1's bytes (tests: a file the previous build wrote).
pub fn serialize_v1(records: &[Record]) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_LEN + records.len() * RECORD_LEN_V1];
    b[..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&VERSION_1.to_ne_bytes());
    b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_ne_bytes());
    b[16..20].copy_from_slice(&(RECORD_LEN_V1 as u32).to_ne_bytes());
    b[20..24].copy_from_slice(&(records.len() as u32).to_ne_bytes());
    for (i, rec) in records.iter().enumerate() {
        let (id, v) = (&rec.id, &rec.vals);
        let r = &mut b[HEADER_LEN + i * RECORD_LEN_V1..HEADER_LEN + (i + 1) * RECORD_LEN_V1];
        r[22] = if rec.retired { FLAG_RETIRED } else { 0 };
        r[0..8].copy_from_slice(&v.oseq.to_ne_bytes());
        r[8..16].copy_from_slice(&v.in_top.to_ne_bytes());
        r[16..20].copy_from_slice(&id.spi.to_ne_bytes());
        r[20] = id.proto;
        r[21] = id.family;
        r[24..40].copy_from_slice(&id.daddr);
        r[40..56].copy_from_slice(&id.saddr);
        r[56..72].copy_from_slice(&id.key_fp);
    }
    b
}
