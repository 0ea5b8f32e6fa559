//! What must survive the daemon: per SA, the last output sequence number handed out and the
//! top of the inbound replay window (the kernel keeps both in x->replay / x->replay_esn,
//! which live as long as the state; a user-space datapath dies with its process).
//!
//! Without them a restarted daemon sends sequence numbers its peer has already seen (the
//! peer drops them as replays; with AES-GCM the same key and number also mean the same nonce,
//! see esp.rs), and its empty replay window accepts replays of old packets.
//!
//! The state file is mapped MAP_SHARED and each SA's output counter *is* a word of that
//! mapping: the per-packet cost stays one atomic fetch_add, and a store to a shared file
//! mapping is in the page cache at once, so it survives the process (`kill -9` included).
//! It does not survive the machine: /run is a tmpfs, and a file on disk is written back at
//! the kernel's pace (msync at orderly stop).
//!
//! Layout (native byte order: the file never leaves the machine):
//!
//! ```text
//! header, 64 bytes: magic "XFRMSEQ\0", version u32 = 1, header size u32 = 64,
//!                   record size u32 = 128, record count u32, zeros
//! record, 128 bytes (a multiple of the cache line: workers of different SAs do not share
//!                   one): oseq u64 @0, inbound top u64 @8, spi u32 @16, proto u8 @20,
//!                   family u8 @21 (4 or 6), flags u8 @22 (bit 0: retired), zero @23,
//!                   daddr [16] @24, saddr [16] @40, key fingerprint [16] @56, zeros @72..128
//! ```
//!
//! An SA carries over only to an SA with the same identity: family, protocol, SPI, both
//! addresses, and a fingerprint of its key (SHA-256 of the algorithm and key, 16 bytes): a
//! re-keyed SA that kept its SPI starts from its configured numbers, as it must (its peer
//! does too). Records of SAs no longer configured are kept, marked retired (the most recent
//! [`MAX_RETIRED`]): an SA taken out of the configuration and put back with the same key
//! goes on from its numbers instead of using them again. The file is rewritten whole at each
//! start (a temporary file renamed over it, so a kill during the rewrite leaves the old file
//! or the new one, never a mix), and a lock file (`FILE.lock`, flock) keeps two daemons off
//! one state. The file is the daemon's alone while it runs (mode 0600 in a 0700 directory):
//! truncating a mapped file would fault the process (SIGBUS), like any shared mapping.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::Write,
    net::IpAddr,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
    ptr::NonNull,
    sync::{atomic::AtomicU64, Arc},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

use crate::sa::{SaAlgorithm, SaConfig};

pub const MAGIC: [u8; 8] = *b"XFRMSEQ\0";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;
pub const RECORD_LEN: usize = 128;
/// More SAs than any configuration here holds (the XDP SA table has 64k entries).
pub const MAX_RECORDS: usize = 1 << 20;
/// Records of SAs no longer configured kept at most (the most recently retired first).
pub const MAX_RETIRED: usize = 4096;
const FLAG_RETIRED: u8 = 1;

const OFF_OSEQ: usize = 0;
const OFF_IN_TOP: usize = 8;
const OFF_SPI: usize = 16;
const OFF_PROTO: usize = 20;
const OFF_FAMILY: usize = 21;
const OFF_FLAGS: usize = 22;
const OFF_DADDR: usize = 24;
const OFF_SADDR: usize = 40;
const OFF_KEY_FP: usize = 56;
const OFF_RESERVED: usize = 72;

/// Who an SA is across restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SaIdentity {
    /// 4 or 6.
    pub family: u8,
    /// IPPROTO_ESP or IPPROTO_AH.
    pub proto: u8,
    pub spi: u32,
    /// IPv4: the first 4 bytes, the rest zero.
    pub daddr: [u8; 16],
    pub saddr: [u8; 16],
    pub key_fp: [u8; 16],
}

fn addr16(a: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match a {
        IpAddr::V4(v) => b[..4].copy_from_slice(&v.octets()),
        IpAddr::V6(v) => b = v.octets(),
    }
    b
}

/// SHA-256 over the algorithm and its key material, truncated: tells a re-keyed SA from the
/// old one without putting the key in the file.
pub fn key_fingerprint(alg: &SaAlgorithm) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"xfrm-user state file: SA key v1\0");
    match alg {
        SaAlgorithm::Aead {
            algo,
            key,
            salt,
            icv_bits,
        } => {
            h.update(format!("aead {algo:?} {icv_bits}\0").as_bytes());
            h.update(&key[..]);
            h.update(salt);
        }
        SaAlgorithm::Auth {
            algo,
            key,
            trunc_bits,
        } => {
            h.update(format!("auth {algo:?} {trunc_bits}\0").as_bytes());
            h.update(&key[..]);
        }
        SaAlgorithm::EncAuth {
            enc,
            enc_key,
            auth,
            auth_key,
            trunc_bits,
        } => {
            // Lengths first: the two keys are not told apart by their concatenation.
            h.update(
                format!(
                    "enc {enc:?} {} auth {auth:?} {} {trunc_bits}\0",
                    enc_key.len(),
                    auth_key.len()
                )
                .as_bytes(),
            );
            h.update(&enc_key[..]);
            h.update(&auth_key[..]);
        }
    }
    let d = h.finalize();
    let mut fp = [0u8; 16];
    fp.copy_from_slice(&d[..16]);
    fp
}

impl SaIdentity {
    pub fn of(cfg: &SaConfig) -> Self {
        Self {
            family: if cfg.id.daddr.is_ipv4() { 4 } else { 6 },
            proto: cfg.id.proto.ip_proto(),
            spi: cfg.id.spi,
            daddr: addr16(cfg.id.daddr),
            saddr: addr16(cfg.saddr),
            key_fp: key_fingerprint(&cfg.algorithm),
        }
    }
}

/// The two counters of one SA, wherever they live.
#[repr(C, align(64))]
struct HeapCells([AtomicU64; 2]);

/// Memory the counters are in: a mapping of the state file, or the heap (no state file:
/// offline mode, tests, library users that do not persist).
enum Region {
    Heap(#[allow(dead_code)] Box<HeapCells>),
    Map { ptr: NonNull<u8>, len: usize },
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Region::Map { ptr, len } = *self {
            // SAFETY: the mapping we made with this address and length; no reference into
            // it outlives the Region (every SeqSlot holds the Arc).
            unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
        }
    }
}

// SAFETY: the region is only accessed through AtomicU64s (SeqSlot) or not at all.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

/// Where one SA keeps its output sequence number and its inbound window top.
pub struct SeqSlot {
    oseq: NonNull<AtomicU64>,
    in_top: NonNull<AtomicU64>,
    _region: Arc<Region>,
}

// SAFETY: the pointers are to AtomicU64s kept alive by `_region`.
unsafe impl Send for SeqSlot {}
// SAFETY: as above; AtomicU64 is Sync.
unsafe impl Sync for SeqSlot {}

impl SeqSlot {
    /// Counters on the heap, both 0: nothing survives the process.
    pub fn in_memory() -> Self {
        let b = Box::new(HeapCells([AtomicU64::new(0), AtomicU64::new(0)]));
        let oseq = NonNull::from(&b.0[0]);
        let in_top = NonNull::from(&b.0[1]);
        Self {
            oseq,
            in_top,
            _region: Arc::new(Region::Heap(b)),
        }
    }

    /// The same counters, for the SA that replaces this one's (`state update`): it goes on
    /// from the numbers this one handed out.
    pub fn share(&self) -> Self {
        Self {
            oseq: self.oseq,
            in_top: self.in_top,
            _region: self._region.clone(),
        }
    }

    /// The last output sequence number handed out (the SA's x->replay.oseq).
    #[inline]
    pub fn oseq(&self) -> &AtomicU64 {
        // SAFETY: points into `_region` (heap box or live mapping), 8-aligned.
        unsafe { self.oseq.as_ref() }
    }

    /// The highest inbound sequence number recorded by the replay window.
    #[inline]
    pub fn in_top(&self) -> &AtomicU64 {
        // SAFETY: as in `oseq`.
        unsafe { self.in_top.as_ref() }
    }
}

impl std::fmt::Debug for SeqSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        f.debug_struct("SeqSlot")
            .field("oseq", &self.oseq().load(Relaxed))
            .field("in_top", &self.in_top().load(Relaxed))
            .finish()
    }
}

/// Why an existing state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error(
        "state file {path}: {reason}. It holds the last sequence numbers of the SAs: \
         starting without it would send sequence numbers the peers have already seen (they \
         drop them as replays; with AES-GCM the same key and number also repeat the nonce) \
         and accept replayed packets. Re-key the SAs (new keys), then start again with \
         --discard-corrupt-state (the file is then kept as {path}.corrupt)"
    )]
    Corrupt { path: String, reason: String },
    #[error(
        "state file {path}: locked by another process (another `xfrm-user run` on the same \
         namespace and outside interface?): {lock}"
    )]
    Locked { path: String, lock: String },
    #[error("state file {0}")]
    Exposed(crate::keyfile::KeyFileError),
    #[error("state file {path}: {what}: {err}")]
    Io {
        path: String,
        what: &'static str,
        #[source]
        err: std::io::Error,
    },
}

/// What [`StateFile::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// An earlier file was read.
    pub existed: bool,
    /// SAs whose counters came from it.
    pub carried: usize,
    /// SAs it did not know (configured values).
    pub fresh: usize,
    /// Records of SAs not in this configuration, kept (retired).
    pub retired: usize,
    /// Retired records forgotten (beyond [`MAX_RETIRED`]).
    pub forgotten: usize,
    /// A corrupt file set aside (with `discard_corrupt`), and why it was refused.
    pub discarded: Option<String>,
}

/// One record's values, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Carried {
    pub oseq: u64,
    pub in_top: u64,
}

/// One record of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub id: SaIdentity,
    pub vals: Carried,
    /// Not in the configuration of the run that wrote the file.
    pub retired: bool,
}

/// The open, locked, mapped state file.
pub struct StateFile {
    path: PathBuf,
    region: Arc<Region>,
    count: usize,
    report: OpenReport,
    /// Held (flock) as long as the daemon runs; released by the kernel when it dies.
    _lock: File,
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

/// Reads a state file's records, in file order. Every check that can fail is a reason, never
/// a panic (the file may be anything).
pub fn parse(b: &[u8]) -> Result<Vec<Record>, String> {
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
    if version != VERSION {
        return Err(format!("version {version}, this build reads {VERSION}"));
    }
    let (hl, rl, count) = (
        rd_u32(b, 12) as usize,
        rd_u32(b, 16) as usize,
        rd_u32(b, 20) as usize,
    );
    if hl != HEADER_LEN || rl != RECORD_LEN {
        return Err(format!(
            "header/record sizes {hl}/{rl}, expected {HEADER_LEN}/{RECORD_LEN}"
        ));
    }
    if count > MAX_RECORDS {
        return Err(format!("{count} records (at most {MAX_RECORDS})"));
    }
    let want = HEADER_LEN + count * RECORD_LEN;
    if b.len() != want {
        return Err(format!(
            "{} bytes, but the header announces {count} records ({want} bytes)",
            b.len()
        ));
    }
    let mut out = Vec::with_capacity(count);
    let mut seen = std::collections::HashSet::with_capacity(count);
    for i in 0..count {
        let r = &b[HEADER_LEN + i * RECORD_LEN..HEADER_LEN + (i + 1) * RECORD_LEN];
        let id = SaIdentity {
            family: r[OFF_FAMILY],
            proto: r[OFF_PROTO],
            spi: rd_u32(r, OFF_SPI),
            daddr: arr16(r, OFF_DADDR),
            saddr: arr16(r, OFF_SADDR),
            key_fp: arr16(r, OFF_KEY_FP),
        };
        if !matches!(id.family, 4 | 6) || !matches!(id.proto, 50 | 51) {
            return Err(format!(
                "record {i}: family {} proto {} (not an SA)",
                id.family, id.proto
            ));
        }
        if r[OFF_FLAGS] & !FLAG_RETIRED != 0
            || r[OFF_FLAGS + 1] != 0
            || r[OFF_RESERVED..].iter().any(|&x| x != 0)
        {
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
                oseq: rd_u64(r, OFF_OSEQ),
                in_top: rd_u64(r, OFF_IN_TOP),
            },
            retired: r[OFF_FLAGS] & FLAG_RETIRED != 0,
        });
    }
    Ok(out)
}

/// The bytes of a state file holding these records.
pub fn serialize(records: &[Record]) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_LEN + records.len() * RECORD_LEN];
    b[..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_ne_bytes());
    b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_ne_bytes());
    b[16..20].copy_from_slice(&(RECORD_LEN as u32).to_ne_bytes());
    b[20..24].copy_from_slice(&(records.len() as u32).to_ne_bytes());
    for (i, rec) in records.iter().enumerate() {
        let (id, v) = (&rec.id, &rec.vals);
        let r = &mut b[HEADER_LEN + i * RECORD_LEN..HEADER_LEN + (i + 1) * RECORD_LEN];
        r[OFF_FLAGS] = if rec.retired { FLAG_RETIRED } else { 0 };
        r[OFF_OSEQ..OFF_OSEQ + 8].copy_from_slice(&v.oseq.to_ne_bytes());
        r[OFF_IN_TOP..OFF_IN_TOP + 8].copy_from_slice(&v.in_top.to_ne_bytes());
        r[OFF_SPI..OFF_SPI + 4].copy_from_slice(&id.spi.to_ne_bytes());
        r[OFF_PROTO] = id.proto;
        r[OFF_FAMILY] = id.family;
        r[OFF_DADDR..OFF_DADDR + 16].copy_from_slice(&id.daddr);
        r[OFF_SADDR..OFF_SADDR + 16].copy_from_slice(&id.saddr);
        r[OFF_KEY_FP..OFF_KEY_FP + 16].copy_from_slice(&id.key_fp);
    }
    b
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// `/run/xfrm-user/netns-<inode>-<outside>.state`: one per network namespace (of the calling
/// thread) and outside interface, so daemons in different namespaces on one host, which
/// share /run, never meet.
pub fn default_path(outside: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    Ok(PathBuf::from(format!(
        "/run/xfrm-user/netns-{ns}-{outside}.state"
    )))
}

impl StateFile {
    /// Opens (or creates) the state file for the SAs `ids` (in database order): takes the
    /// lock, reads what an earlier run left, writes a file holding these SAs (the counters
    /// of those it knew carried over, 0 for the others) followed by the retired records,
    /// and maps it.
    ///
    /// A file that exists but is not a valid state file is an error, unless
    /// `discard_corrupt`: then it is renamed to `FILE.corrupt` and every SA starts fresh.
    pub fn open(
        path: &Path,
        ids: &[SaIdentity],
        discard_corrupt: bool,
    ) -> Result<Self, StateFileError> {
        let p = path.display().to_string();
        let io = |what: &'static str| {
            let p = p.clone();
            move |err| StateFileError::Io { path: p, what, err }
        };
        if ids.len() > MAX_RECORDS {
            return Err(io("too many SAs")(std::io::Error::from(
                std::io::ErrorKind::InvalidInput,
            )));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                crate::keyfile::create_private_dir(dir).map_err(io("create its directory"))?;
            }
        }
        let lock = lock(&with_suffix(path, ".lock")).map_err(|e| match e {
            LockError::Io(err) => io("lock")(err),
            LockError::Held(lock) => StateFileError::Locked {
                path: p.clone(),
                lock,
            },
        })?;

        let mut report = OpenReport::default();
        // Refused when others may read it, as a config file would be.
        let old = match crate::keyfile::read_private(path) {
            Ok(b) => {
                report.existed = true;
                match parse(&b) {
                    Ok(r) => r,
                    Err(reason) if discard_corrupt => {
                        let aside = with_suffix(path, ".corrupt");
                        std::fs::rename(path, &aside).map_err(io("set the corrupt file aside"))?;
                        log::warn!(
                            "state file {p}: {reason}; set aside as {} (--discard-corrupt-state): \
                             every SA starts from its configured sequence numbers",
                            aside.display()
                        );
                        report.discarded = Some(reason);
                        Vec::new()
                    }
                    Err(reason) => return Err(StateFileError::Corrupt { path: p, reason }),
                }
            }
            Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => Vec::new(),
            Err(crate::keyfile::KeyFileError::Io { err, .. }) => return Err(io("read")(err)),
            Err(refused) => return Err(StateFileError::Exposed(refused)),
        };
        let by_id: HashMap<SaIdentity, Carried> = old.iter().map(|r| (r.id, r.vals)).collect();
        let mut records = Vec::with_capacity(ids.len());
        let mut configured = std::collections::HashSet::with_capacity(ids.len());
        for id in ids {
            if !configured.insert(*id) {
                return Err(io("two SAs with one identity")(std::io::Error::from(
                    std::io::ErrorKind::InvalidInput,
                )));
            }
            let vals = match by_id.get(id) {
                Some(c) => {
                    report.carried += 1;
                    *c
                }
                None => {
                    report.fresh += 1;
                    Carried { oseq: 0, in_top: 0 }
                }
            };
            records.push(Record {
                id: *id,
                vals,
                retired: false,
            });
        }
        // Retired: those the last run had configured first (the most recent), then the
        // older ones in their order.
        let gone = |r: &&Record| !configured.contains(&r.id);
        let retired: Vec<Record> = old
            .iter()
            .filter(|r| !r.retired)
            .filter(gone)
            .chain(old.iter().filter(|r| r.retired).filter(gone))
            .map(|r| Record {
                retired: true,
                ..*r
            })
            .collect();
        report.retired = retired.len().min(MAX_RETIRED);
        report.forgotten = retired.len() - report.retired;
        records.extend(retired.into_iter().take(MAX_RETIRED));
        if records.len() > MAX_RECORDS {
            return Err(io("too many SAs")(std::io::Error::from(
                std::io::ErrorKind::InvalidInput,
            )));
        }
        let bytes = serialize(&records);

        // Written beside, then renamed over: never a half-written file under `path`.
        let tmp = with_suffix(path, ".tmp");
        let mut f = crate::keyfile::create_private(&tmp).map_err(io("create the new file"))?;
        f.write_all(&bytes).map_err(io("write"))?;
        f.sync_all().map_err(io("sync"))?;
        std::fs::rename(&tmp, path).map_err(io("rename the new file into place"))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let len = bytes.len();
        // SAFETY: a fresh shared mapping of `len` bytes of a file that has them; checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io("mmap")(std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io("mmap")(std::io::Error::other("null mapping")))?;
        Ok(Self {
            path: path.to_path_buf(),
            region: Arc::new(Region::Map { ptr, len }),
            count: ids.len(),
            report,
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn report(&self) -> &OpenReport {
        &self.report
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The counters of SA `i` (the order of `ids` at open), in the mapping.
    pub fn slot(&self, i: usize) -> Option<SeqSlot> {
        if i >= self.count {
            return None;
        }
        let Region::Map { ptr, .. } = *self.region else {
            return None;
        };
        let at = HEADER_LEN + i * RECORD_LEN;
        // SAFETY: inside the mapping (at + 16 <= len); the mapping is page-aligned and
        // HEADER_LEN, RECORD_LEN and the offsets are multiples of 8, so each pointer is an
        // aligned u64, accessed only as AtomicU64 from here on.
        let (oseq, in_top) = unsafe {
            (
                NonNull::new_unchecked(ptr.as_ptr().add(at + OFF_OSEQ).cast::<AtomicU64>()),
                NonNull::new_unchecked(ptr.as_ptr().add(at + OFF_IN_TOP).cast::<AtomicU64>()),
            )
        };
        Some(SeqSlot {
            oseq,
            in_top,
            _region: self.region.clone(),
        })
    }

    /// Writes the mapping back to the file (msync): at orderly stop, for a file on disk.
    /// Not needed for `kill -9` (the page cache holds every store).
    pub fn sync(&self) -> std::io::Result<()> {
        let Region::Map { ptr, len } = *self.region else {
            return Ok(());
        };
        // SAFETY: our own live mapping.
        if unsafe { libc::msync(ptr.as_ptr().cast(), len, libc::MS_SYNC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

enum LockError {
    Io(std::io::Error),
    Held(String),
}

/// flock(LOCK_EX) on `path`, waiting up to 3 s for a daemon that is exiting.
fn lock(path: &Path) -> Result<File, LockError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(LockError::Io)?;
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(LockError::Io(e));
        }
        if Instant::now() >= end {
            return Err(LockError::Held(format!("{} is held", path.display())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sa::{AuthAlgo, XfrmMode};
    use crate::xfrm::state::tests::{ah_cfg, esp_cfg};
    use std::sync::atomic::Ordering::Relaxed;

    fn ids() -> Vec<SaIdentity> {
        vec![
            SaIdentity::of(&esp_cfg(0x100, "10.0.0.1", "10.0.0.2", XfrmMode::Tunnel)),
            SaIdentity::of(&esp_cfg(0x200, "fd00::2", "fd00::1", XfrmMode::Tunnel)),
            SaIdentity::of(&ah_cfg(
                0x300,
                "10.0.0.1",
                "10.0.0.2",
                XfrmMode::Transport,
                AuthAlgo::HmacSha256,
            )),
        ]
    }

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn recs(ids: &[SaIdentity], vals: &[(u64, u64)]) -> Vec<Record> {
        ids.iter()
            .zip(vals)
            .map(|(id, &(oseq, in_top))| Record {
                id: *id,
                vals: Carried { oseq, in_top },
                retired: false,
            })
            .collect()
    }

    fn read(path: &Path) -> Vec<Record> {
        parse(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn identity_tells_apart_what_must_not_share_counters() {
        let base = esp_cfg(0x100, "10.0.0.1", "10.0.0.2", XfrmMode::Tunnel);
        let id = SaIdentity::of(&base);
        assert_eq!(id, SaIdentity::of(&base.clone()));
        let mut other_key = base.clone();
        if let SaAlgorithm::Aead { key, .. } = &mut other_key.algorithm {
            key[0] ^= 1;
        }
        let mut other_salt = base.clone();
        if let SaAlgorithm::Aead { salt, .. } = &mut other_salt.algorithm {
            salt[3] ^= 1;
        }
        let mut other_spi = base.clone();
        other_spi.id.spi = 0x101;
        let mut other_src = base.clone();
        other_src.saddr = "10.0.0.3".parse().unwrap();
        let mut other_dst = base.clone();
        other_dst.id.daddr = "10.0.0.4".parse().unwrap();
        let ah = ah_cfg(
            0x100,
            "10.0.0.1",
            "10.0.0.2",
            XfrmMode::Tunnel,
            AuthAlgo::HmacSha256,
        );
        for (what, c) in [
            ("key", other_key),
            ("salt", other_salt),
            ("spi", other_spi),
            ("saddr", other_src),
            ("daddr", other_dst),
            ("proto", ah),
        ] {
            assert_ne!(SaIdentity::of(&c), id, "{what}");
        }
        // The mode is not part of it (the key and numbers are what matter).
        let mut transport = base.clone();
        transport.mode = XfrmMode::Transport;
        assert_eq!(SaIdentity::of(&transport), id);
    }

    #[test]
    fn serialize_parse_round_trip() {
        let mut r = recs(&ids(), &[(1, 2), (u64::MAX, (7 << 32) | 9), (0, 0)]);
        r[1].retired = true;
        let b = serialize(&r);
        assert_eq!(b.len(), HEADER_LEN + 3 * RECORD_LEN);
        assert_eq!(parse(&b).unwrap(), r);
        assert_eq!(parse(&serialize(&[])).unwrap(), vec![]);
    }

    #[test]
    fn carry_over_by_identity() {
        let d = dir();
        let path = d.path().join("gw.state");
        let all = ids();
        {
            let f = StateFile::open(&path, &all, false).unwrap();
            assert_eq!(
                *f.report(),
                OpenReport {
                    existed: false,
                    fresh: 3,
                    ..Default::default()
                }
            );
            for i in 0..3 {
                let s = f.slot(i).unwrap();
                assert_eq!((s.oseq().load(Relaxed), s.in_top().load(Relaxed)), (0, 0));
                s.oseq().store(1000 + i as u64, Relaxed);
                s.in_top().store(2000 + i as u64, Relaxed);
            }
            assert!(f.slot(3).is_none());
            // Dropped without msync: munmap alone leaves the stores in the page cache, as
            // the death of the process does.
        }

        // Same SAs, another order, one new, one gone.
        let mut rekeyed = esp_cfg(0x200, "fd00::2", "fd00::1", XfrmMode::Tunnel);
        if let SaAlgorithm::Aead { key, .. } = &mut rekeyed.algorithm {
            key[5] ^= 0x80;
        }
        let next = vec![all[2], SaIdentity::of(&rekeyed), all[0]];
        let f = StateFile::open(&path, &next, false).unwrap();
        assert_eq!(
            *f.report(),
            OpenReport {
                existed: true,
                carried: 2,
                fresh: 1,
                retired: 1,
                forgotten: 0,
                discarded: None
            }
        );
        let v = |f: &StateFile, i: usize| {
            let s = f.slot(i).unwrap();
            (s.oseq().load(Relaxed), s.in_top().load(Relaxed))
        };
        assert_eq!(v(&f, 0), (1002, 2002));
        assert_eq!(
            v(&f, 1),
            (0, 0),
            "re-keyed: same SPI and addresses, new key"
        );
        assert_eq!(v(&f, 2), (1000, 2000));
        assert!(f.slot(3).is_none(), "a retired record is no SA's slot");
        drop(f);
        // The file holds the three, then the one no longer configured, retired.
        let r = read(&path);
        assert_eq!(r.len(), 4);
        assert_eq!(
            r[3],
            Record {
                id: all[1],
                vals: Carried {
                    oseq: 1001,
                    in_top: 2001
                },
                retired: true
            }
        );
        // Put back with the same key: it goes on from its numbers, not from 0.
        let f = StateFile::open(&path, &all, false).unwrap();
        assert_eq!((f.report().carried, f.report().retired), (3, 1));
        assert_eq!(v(&f, 1), (1001, 2001));
        drop(f);
        assert_eq!(read(&path).iter().filter(|r| r.retired).count(), 1);
    }

    #[test]
    fn retired_records_are_kept_up_to_a_bound_most_recent_first() {
        let d = dir();
        let path = d.path().join("many.state");
        let mk = |spi: u32| SaIdentity::of(&esp_cfg(spi, "10.0.0.1", "10.0.0.2", XfrmMode::Tunnel));
        // A file with MAX_RETIRED + 10 retired records and one configured one.
        let mut r: Vec<Record> = (0..MAX_RETIRED as u32 + 10)
            .map(|i| Record {
                id: mk(0x10_000 + i),
                vals: Carried {
                    oseq: u64::from(i),
                    in_top: 0,
                },
                retired: true,
            })
            .collect();
        r.insert(
            0,
            Record {
                id: mk(1),
                vals: Carried { oseq: 7, in_top: 0 },
                retired: false,
            },
        );
        crate::keyfile::write_private(&path, serialize(&r)).unwrap();
        let f = StateFile::open(&path, &[mk(2)], false).unwrap();
        assert_eq!(
            (f.report().retired, f.report().forgotten),
            (MAX_RETIRED, 11)
        );
        drop(f);
        let w = read(&path);
        assert_eq!(w.len(), 1 + MAX_RETIRED);
        // The one retired just now comes first; the oldest went.
        assert_eq!((w[1].id, w[1].vals.oseq, w[1].retired), (mk(1), 7, true));
        assert_eq!(w[2].id, mk(0x10_000));
        assert_eq!(w.last().unwrap().id, mk(0x10_000 + MAX_RETIRED as u32 - 2));
    }

    #[test]
    fn esn_values_keep_all_64_bits() {
        let d = dir();
        let path = d.path().join("esn.state");
        let ids = &ids()[..1];
        let hi = (0xfffe_fffd_u64 << 32) | 0xffff_fff0;
        {
            let f = StateFile::open(&path, ids, false).unwrap();
            let s = f.slot(0).unwrap();
            s.oseq().store(hi, Relaxed);
            s.in_top().store(hi - 5, Relaxed);
        }
        let f = StateFile::open(&path, ids, false).unwrap();
        let s = f.slot(0).unwrap();
        assert_eq!(s.oseq().load(Relaxed), hi);
        assert_eq!(s.in_top().load(Relaxed), hi - 5);
        // The counter goes on from there in the mapping.
        assert_eq!(s.oseq().fetch_add(1, Relaxed) + 1, hi + 1);
        drop(s);
        drop(f);
        assert_eq!(read(&path)[0].vals.oseq, hi + 1);
    }

    #[test]
    fn corrupt_files_are_refused_or_set_aside_never_a_panic() {
        let d = dir();
        let ids = ids();
        let good = serialize(&recs(&ids, &[(5, 6), (7, 8), (9, 10)]));
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("short header", good[..HEADER_LEN - 1].to_vec()),
            ("truncated record", good[..good.len() - 1].to_vec()),
            ("trailing bytes", [&good[..], &[0u8][..]].concat()),
        ];
        let mut bad_magic = good.clone();
        bad_magic[0] ^= 0xff;
        cases.push(("magic", bad_magic));
        let mut bad_version = good.clone();
        bad_version[8] = 2;
        cases.push(("version", bad_version));
        let mut bad_rec = good.clone();
        bad_rec[16] = 64;
        cases.push(("record size", bad_rec));
        let mut huge = good.clone();
        huge[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
        cases.push(("count", huge));
        let mut fam = good.clone();
        fam[HEADER_LEN + OFF_FAMILY] = 5;
        cases.push(("family", fam));
        let mut reserved = good.clone();
        reserved[HEADER_LEN + RECORD_LEN - 1] = 1;
        cases.push(("reserved", reserved));
        let mut flags = good.clone();
        flags[HEADER_LEN + OFF_FLAGS] = 2;
        cases.push(("unknown flag", flags));
        let dup = serialize(&recs(&[ids[0], ids[0]], &[(1, 1), (2, 2)]));
        cases.push(("duplicate", dup));
        // Random garbage of many lengths.
        let mut x = 0x1234_5678_9abc_def1u64;
        for len in [1usize, 63, 64, 65, 191, 192, 193, 4096] {
            let g: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            cases.push(("garbage", g));
        }
        for (i, (what, bytes)) in cases.iter().enumerate() {
            assert!(parse(bytes).is_err(), "{what}: parsed");
            let path = d.path().join(format!("c{i}.state"));
            crate::keyfile::write_private(&path, bytes).unwrap();
            match StateFile::open(&path, &ids, false) {
                Err(StateFileError::Corrupt { reason, .. }) => {
                    assert!(!reason.is_empty(), "{what}")
                }
                Err(e) => panic!("{what}: {e}"),
                Ok(_) => panic!("{what}: opened"),
            }
            // Refused: the file is untouched.
            assert_eq!(&std::fs::read(&path).unwrap(), bytes, "{what}");
            let f = StateFile::open(&path, &ids, true).unwrap();
            assert!(f.report().discarded.is_some(), "{what}");
            assert_eq!(f.report().fresh, 3, "{what}");
            assert_eq!(
                &std::fs::read(with_suffix(&path, ".corrupt")).unwrap(),
                bytes,
                "{what}: kept aside"
            );
            drop(f);
            assert_eq!(parse(&std::fs::read(&path).unwrap()).unwrap().len(), 3);
        }
        // The message tells the operator what to do.
        let path = d.path().join("c0.state");
        crate::keyfile::write_private(&path, b"xx").unwrap();
        let e = StateFile::open(&path, &ids, false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("--discard-corrupt-state") && e.contains("Re-key"),
            "{e}"
        );
    }

    #[test]
    fn a_second_daemon_on_the_same_file_is_refused() {
        let d = dir();
        let path = d.path().join("x.state");
        let a = StateFile::open(&path, &ids(), false).unwrap();
        let t = Instant::now();
        match StateFile::open(&path, &ids(), false) {
            Err(StateFileError::Locked { .. }) => {}
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened twice"),
        }
        assert!(
            t.elapsed() >= Duration::from_secs(2),
            "waits for an exiting daemon"
        );
        drop(a);
        StateFile::open(&path, &ids(), false).unwrap();
    }

    #[test]
    fn files_are_private_and_an_open_state_file_is_refused() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = dir();
        let sub = d.path().join("run/xfrm-user");
        let path = sub.join("x.state");
        let f = StateFile::open(&path, &ids(), false).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&with_suffix(&path, ".lock")), 0o600);
        drop(f);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = StateFile::open(&path, &ids(), false)
            .err()
            .unwrap()
            .to_string();
        let p = path.display();
        assert_eq!(
            e,
            format!(
                "state file {p}: mode 0640 gives group or others access to a file that holds \
                 keys; run `chmod 600 {p}` (only its owner may read it)"
            )
        );
        // A stale temporary file that others could read is narrowed before it is written.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let tmp = with_suffix(&path, ".tmp");
        std::fs::write(&tmp, b"").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
        drop(StateFile::open(&path, &ids(), false).unwrap());
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn in_memory_slots_are_independent() {
        let a = SeqSlot::in_memory();
        let b = SeqSlot::in_memory();
        a.oseq().store(5, Relaxed);
        assert_eq!(b.oseq().load(Relaxed), 0);
        assert_eq!(a.in_top().load(Relaxed), 0);
    }

    #[test]
    fn default_path_names_the_namespace_and_the_interface() {
        let p = default_path("wan0").unwrap();
        let s = p.display().to_string();
        assert!(
            s.starts_with("/run/xfrm-user/netns-") && s.ends_with("-wan0.state"),
            "{s}"
        );
        // Another thread in the same namespace: the same name.
        let q = std::thread::spawn(|| default_path("wan0").unwrap())
            .join()
            .unwrap();
        assert_eq!(p, q);
        assert_ne!(p, default_path("wan1").unwrap());
    }
}
