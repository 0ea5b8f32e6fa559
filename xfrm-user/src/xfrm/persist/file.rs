//! The open, locked, mapped state file: written whole at start (a temporary file renamed
//! over the old one, whose bytes are then overwritten), changed record by record while the
//! daemon runs. The SAs' counters are words of the mapping; what the control plane changes
//! (an SA's request, a policy's, a retired or deleted mark) is written into its record in
//! place, the record's kind byte last, so a `kill -9` at any instruction leaves each record
//! whole or free.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    fs::{File, OpenOptions},
    io::Write,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
    ptr::NonNull,
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use zeroize::{Zeroize, Zeroizing};

use super::format::{
    self, Carried, Record, SaText, Saved, TextKind, TextRecord, FLAG_DELETED, FLAG_RETIRED,
    HEADER_LEN, KIND_FREE, KIND_SA, KIND_TEXT, MAX_RECORDS, MAX_RETIRED, OFF_FLAGS, OFF_HWM,
    OFF_KIND, OFF_TEXT_REF, RECORD_LEN, TEXT_MAX,
};
use super::identity::SaIdentity;
use super::slot::{Region, SeqSlot};

/// Why an existing state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error(
        "state file {path}: {reason}. It holds the last sequence numbers of the SAs and the \
         SAs and policies added at run time: starting without it would send sequence numbers \
         the peers have already seen (they drop them as replays; with AES-GCM the same key and \
         number also repeat the nonce), accept replayed packets and lose what was added at run \
         time. Nothing of it was applied. Re-key the SAs (new keys), then start again with \
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

/// What opening the state file found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// An earlier file was read.
    pub existed: bool,
    /// Its format version (0: none).
    pub version: u32,
    /// SAs whose counters came from it.
    pub carried: usize,
    /// SAs it did not know (configured values).
    pub fresh: usize,
    /// Records of SAs no longer there, kept (retired).
    pub retired: usize,
    /// Retired records forgotten (beyond [`MAX_RETIRED`]).
    pub forgotten: usize,
    /// A corrupt file set aside (with `discard_corrupt`), and why it was refused.
    pub discarded: Option<String>,
}

/// An SA of the file to write: who it is and, when it was added or updated at run time,
/// its request.
#[derive(Clone, Debug)]
pub struct Planned {
    pub id: SaIdentity,
    pub text: Option<SaText>,
}

/// A locked state file, read, not yet rewritten ([`StateFile::load`]).
pub struct Loaded {
    path: PathBuf,
    lock: File,
    pub saved: Saved,
    report: OpenReport,
}

/// The records the control plane allocates and frees (its thread only; the mutex makes the
/// file shareable with the slots' owners).
struct Alloc {
    /// Records the file has room for (its length).
    records: u32,
    /// Records ever in use (the header's high-water mark).
    hwm: u32,
    free: BTreeSet<u32>,
    retired: HashMap<SaIdentity, u32>,
    /// Oldest first (deleted configured SAs are not in it: they are never forgotten).
    retired_order: VecDeque<u32>,
    next_order: u64,
}

/// The open, locked, mapped state file.
pub struct StateFile {
    path: PathBuf,
    region: Arc<Region>,
    base: NonNull<u8>,
    file: File,
    alloc: Mutex<Alloc>,
    /// The SA records of the planned SAs, in plan order.
    planned: Vec<u32>,
    /// Where the texts given to [`Loaded::write`] start.
    texts_at: u32,
    report: OpenReport,
    /// Held (flock) as long as the daemon runs; released by the kernel when it dies.
    _lock: File,
}

// SAFETY: `base` points into `region` (kept alive); bytes no SeqSlot points at are written
// only under `alloc`'s lock.
unsafe impl Send for StateFile {}
// SAFETY: as above.
unsafe impl Sync for StateFile {}

pub(super) fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
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

/// Grown by this many records at a time.
const GROW: u32 = 256;

fn err_io<'a>(
    p: &'a str,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> StateFileError + 'a {
    move |err| StateFileError::Io {
        path: p.to_string(),
        what,
        err,
    }
}

impl StateFile {
    /// Takes the lock and reads what an earlier run left (version 1 or 2), without writing.
    ///
    /// A file that exists but is not a valid state file is an error, unless
    /// `discard_corrupt`: then it is renamed to `FILE.corrupt` and nothing of it is used.
    pub fn load(path: &Path, discard_corrupt: bool) -> Result<Loaded, StateFileError> {
        let p = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                crate::keyfile::create_private_dir(dir)
                    .map_err(err_io(&p, "create its directory"))?;
            }
        }
        let lock = lock(&with_suffix(path, ".lock")).map_err(|e| match e {
            LockError::Io(err) => err_io(&p, "lock")(err),
            LockError::Held(lock) => StateFileError::Locked {
                path: p.clone(),
                lock,
            },
        })?;
        let mut report = OpenReport::default();
        // Refused when others may read it, as a config file would be.
        let saved = match crate::keyfile::read_private(path) {
            Ok(b) => {
                let b = Zeroizing::new(b);
                report.existed = true;
                match format::parse_file(&b) {
                    Ok(s) => s,
                    Err(reason) if discard_corrupt => {
                        let aside = with_suffix(path, ".corrupt");
                        std::fs::rename(path, &aside)
                            .map_err(err_io(&p, "set the corrupt file aside"))?;
                        log::warn!(
                            "state file {p}: {reason}; set aside as {} (--discard-corrupt-state): \
                             every SA starts from its configured sequence numbers, nothing added \
                             at run time comes back",
                            aside.display()
                        );
                        report.discarded = Some(reason);
                        Saved::default()
                    }
                    Err(reason) => return Err(StateFileError::Corrupt { path: p, reason }),
                }
            }
            Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => Saved::default(),
            Err(crate::keyfile::KeyFileError::Io { err, .. }) => {
                return Err(err_io(&p, "read")(err))
            }
            Err(refused) => return Err(StateFileError::Exposed(refused)),
        };
        report.version = saved.version;
        Ok(Loaded {
            path: path.to_path_buf(),
            lock,
            saved,
            report,
        })
    }

    /// [`Self::load`], then a file holding just the SAs `ids` (in database order), nothing
    /// from run time: each SA's counters carried over by identity, 0 for the others, the
    /// others retired.
    pub fn open(
        path: &Path,
        ids: &[SaIdentity],
        discard_corrupt: bool,
    ) -> Result<Self, StateFileError> {
        let plan: Vec<Planned> = ids.iter().map(|&id| Planned { id, text: None }).collect();
        Self::load(path, discard_corrupt)?.write(&plan, &[], &[])
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn report(&self) -> &OpenReport {
        &self.report
    }

    /// The planned SAs' count.
    pub fn len(&self) -> usize {
        self.planned.len()
    }

    pub fn is_empty(&self) -> bool {
        self.planned.is_empty()
    }

    /// The counters of planned SA `i`, in the mapping.
    pub fn slot(&self, i: usize) -> Option<SeqSlot> {
        self.planned.get(i).map(|&r| self.slot_of(r))
    }

    /// The record of text `i` given to [`Loaded::write`].
    pub fn text_record(&self, i: usize) -> u32 {
        self.texts_at + i as u32
    }

    fn slot_of(&self, rec: u32) -> SeqSlot {
        // SAFETY: `rec` is below the mapping's capacity; the record is 8-aligned (page-aligned
        // mapping, 64-byte header, 1024-byte records) and its first words are accessed only as
        // AtomicU64 from here on.
        unsafe {
            let w = NonNull::new_unchecked(self.rec_ptr(rec).cast::<AtomicU64>());
            SeqSlot::in_region(w, rec, self.region.clone())
        }
    }

    fn rec_ptr(&self, rec: u32) -> *mut u8 {
        debug_assert!((rec as usize) < MAX_RECORDS);
        // SAFETY: inside the mapping of MAX_RECORDS records.
        unsafe {
            self.base
                .as_ptr()
                .add(HEADER_LEN + rec as usize * RECORD_LEN)
        }
    }

    fn kind(&self, rec: u32) -> &AtomicU8 {
        // SAFETY: a byte inside a record below the file's length (callers allocate first).
        unsafe { &*self.rec_ptr(rec).add(OFF_KIND).cast::<AtomicU8>() }
    }

    /// Writes `b` at `off` of record `rec`, past the words slots use (never the kind byte).
    fn put(&self, rec: u32, off: usize, b: &[u8]) {
        debug_assert!(off >= 48 && off + b.len() <= RECORD_LEN);
        // SAFETY: inside the record, in bytes no reference points at (slots hold only the
        // first 48), written under the alloc lock by the only writer.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), self.rec_ptr(rec).add(off), b.len()) };
    }

    /// Every byte of a record to zero (volatile: the key is gone from the page), kind first,
    /// so a kill part-way leaves it free.
    fn wipe(&self, rec: u32) {
        self.kind(rec).store(KIND_FREE, Ordering::Release);
        // SAFETY: the whole record; no slot points at a record that is being wiped (the SA
        // holding it is gone: the handover waited for every worker).
        let r = unsafe { std::slice::from_raw_parts_mut(self.rec_ptr(rec), RECORD_LEN) };
        r.zeroize();
    }

    fn set_hwm(&self, hwm: u32) {
        // SAFETY: the header's aligned u32, written only here (under the alloc lock).
        let h = unsafe { &*self.base.as_ptr().add(OFF_HWM).cast::<AtomicU32>() };
        h.store(hwm, Ordering::Release);
    }

    /// A free record (the lowest), the file grown when none is left. Still free (kind 0)
    /// when returned, but counted below the high-water mark.
    fn take(&self, a: &mut Alloc) -> Result<u32, String> {
        if let Some(r) = a.free.pop_first() {
            return Ok(r);
        }
        if a.hwm as usize >= MAX_RECORDS {
            return Err(format!(
                "the state file {} is full ({MAX_RECORDS} records)",
                self.path.display()
            ));
        }
        if a.hwm == a.records {
            let n = (a.records + GROW).min(MAX_RECORDS as u32);
            self.file
                .set_len((HEADER_LEN + n as usize * RECORD_LEN) as u64)
                .map_err(|e| format!("the state file {}: grow: {e}", self.path.display()))?;
            a.records = n;
        }
        let r = a.hwm;
        a.hwm += 1;
        // Before anything is written to it: a file cut below the mark is truncated.
        self.set_hwm(a.hwm);
        Ok(r)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Alloc> {
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counters for a new SA `id`: its retired record when it had one (so its numbers go
    /// on: the same key never reuses one), else a free record. Nothing is in the file's view
    /// until [`Self::set_sa`]; [`Self::unreserve`] gives it back.
    pub fn reserve_sa(&self, id: &SaIdentity) -> Result<(SeqSlot, Reserved), String> {
        let mut a = self.lock();
        if let Some(r) = a.retired.remove(id) {
            a.retired_order.retain(|&x| x != r);
            let s = self.slot_of(r);
            // What lasts across a new add is the numbers; the lifetime starts anew.
            for w in [s.bytes(), s.in_packets(), s.add_time(), s.use_time()] {
                w.store(0, Ordering::Relaxed);
            }
            return Ok((
                s,
                Reserved {
                    rec: r,
                    retired: true,
                    id: *id,
                },
            ));
        }
        let r = self.take(&mut a)?;
        let s = self.slot_of(r);
        for w in [
            s.oseq(),
            s.in_top(),
            s.bytes(),
            s.in_packets(),
            s.add_time(),
            s.use_time(),
        ] {
            w.store(0, Ordering::Relaxed);
        }
        let mut b = [0u8; RECORD_LEN];
        format::sa_identity_into(&mut b, id);
        self.put(r, OFF_KIND + 1, &b[OFF_KIND + 1..]);
        Ok((
            s,
            Reserved {
                rec: r,
                retired: false,
                id: *id,
            },
        ))
    }

    /// A reservation of a change that did not go live.
    pub fn unreserve(&self, r: Reserved) {
        let mut a = self.lock();
        if r.retired {
            a.retired_order.push_back(r.rec);
            a.retired.insert(r.id, r.rec);
        } else {
            self.wipe(r.rec);
            a.free.insert(r.rec);
        }
    }

    /// SA record `rec` is live: with `text` (its request, where it stands, when written) or
    /// without (a configured SA as the file has it); its previous text record, if any, goes.
    pub fn set_sa(&self, rec: u32, text: Option<(&str, u64)>) -> Result<(), String> {
        let mut a = self.lock();
        let old = self.text_ref(rec);
        let new = match text {
            Some((t, pos)) => {
                if t.len() > TEXT_MAX {
                    return Err(text_too_long(t.len()));
                }
                let tr = self.take(&mut a)?;
                let order = a.next_order;
                a.next_order += 1;
                let mut b = format::text_record_bytes(TextKind::Sa, order, pos, rec, t.as_bytes());
                self.put(tr, OFF_KIND + 1, &b[OFF_KIND + 1..]);
                b.zeroize();
                self.kind(tr).store(KIND_TEXT, Ordering::Release);
                Some(tr)
            }
            None => None,
        };
        self.put(rec, OFF_FLAGS, &[0]);
        self.text_ref_cell(rec)
            .store(new.map_or(0, |t| t + 1), Ordering::Release);
        self.kind(rec).store(KIND_SA, Ordering::Release);
        if let Some(o) = old {
            self.wipe(o);
            a.free.insert(o);
        }
        Ok(())
    }

    /// SA record `rec` is gone from the SAD: its request (and key) wiped, its numbers kept
    /// (retired) in case the same key comes back; `deleted`: a configured SA deleted at run
    /// time, which a restart leaves out.
    pub fn retire_sa(&self, rec: u32, id: &SaIdentity, deleted: bool) {
        let mut a = self.lock();
        let old = self.text_ref(rec);
        let flags = FLAG_RETIRED | if deleted { FLAG_DELETED } else { 0 };
        self.put(rec, OFF_FLAGS, &[flags]);
        self.text_ref_cell(rec).store(0, Ordering::Release);
        self.kind(rec).store(KIND_SA, Ordering::Release);
        if let Some(o) = old {
            self.wipe(o);
            a.free.insert(o);
        }
        a.retired.insert(*id, rec);
        if !deleted {
            a.retired_order.push_back(rec);
        }
        while a.retired_order.len() > MAX_RETIRED {
            let Some(r) = a.retired_order.pop_front() else {
                break;
            };
            a.retired.retain(|_, &mut v| v != r);
            self.wipe(r);
            a.free.insert(r);
        }
    }

    /// A configured SA deleted at run time stays deleted after a restart; once the same SA
    /// is back (a reload), the mark goes.
    pub fn undelete_sa(&self, rec: u32) {
        let _a = self.lock();
        self.put(rec, OFF_FLAGS, &[FLAG_RETIRED]);
    }

    fn text_ref_cell(&self, rec: u32) -> &AtomicU32 {
        // SAFETY: an aligned u32 inside the record (offset 104), written only under the lock.
        unsafe { &*self.rec_ptr(rec).add(OFF_TEXT_REF).cast::<AtomicU32>() }
    }

    fn text_ref(&self, rec: u32) -> Option<u32> {
        match self.text_ref_cell(rec).load(Ordering::Acquire) {
            0 => None,
            t => Some(t - 1),
        }
    }

    /// A policy's text record (its request, or a deleted configured policy's key); returns
    /// the record, for [`Self::free`].
    pub fn put_text(&self, what: TextKind, pos: u64, body: &[u8]) -> Result<u32, String> {
        if body.len() > TEXT_MAX {
            return Err(text_too_long(body.len()));
        }
        let mut a = self.lock();
        let r = self.take(&mut a)?;
        let order = a.next_order;
        a.next_order += 1;
        let b = format::text_record_bytes(what, order, pos, 0, body);
        self.put(r, OFF_KIND + 1, &b[OFF_KIND + 1..]);
        self.kind(r).store(KIND_TEXT, Ordering::Release);
        Ok(r)
    }

    /// A text record no longer wanted: wiped.
    pub fn free(&self, rec: u32) {
        let mut a = self.lock();
        self.wipe(rec);
        a.free.insert(rec);
    }

    /// Writes the mapping back to the file (msync): at orderly stop, for a file on disk.
    /// Not needed for `kill -9` (the page cache holds every store).
    pub fn sync(&self) -> std::io::Result<()> {
        let len = HEADER_LEN + self.lock().records as usize * RECORD_LEN;
        // SAFETY: our own live mapping, at least `len` long.
        if unsafe { libc::msync(self.base.as_ptr().cast(), len, libc::MS_SYNC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A record [`StateFile::reserve_sa`] handed out for a change not yet live.
#[derive(Debug)]
pub struct Reserved {
    pub rec: u32,
    retired: bool,
    id: SaIdentity,
}

pub fn text_too_long(n: usize) -> String {
    format!(
        "the request is {n} bytes; the state file keeps requests of at most {TEXT_MAX} bytes \
         (say it in fewer words)"
    )
}

impl Loaded {
    pub fn report(&self) -> &OpenReport {
        &self.report
    }

    /// Writes the new file: the planned SAs (counters carried over by identity), the marks
    /// of configured SAs deleted at run time (`deleted`), the retired ones, the policy
    /// texts; renames it over the old one, overwrites the old one's bytes, and maps the new.
    pub fn write(
        self,
        plan: &[Planned],
        deleted: &[SaIdentity],
        texts: &[TextRecord],
    ) -> Result<StateFile, StateFileError> {
        let Loaded {
            path,
            lock,
            saved,
            mut report,
        } = self;
        let p = path.display().to_string();
        let invalid =
            |what| err_io(&p, what)(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        // A retired SA's numbers go on; its lifetime starts afresh when it comes back.
        let by_id: HashMap<SaIdentity, Carried> = saved
            .sas
            .iter()
            .map(|r| {
                let v = if r.retired {
                    Carried {
                        oseq: r.vals.oseq,
                        in_top: r.vals.in_top,
                        ..Default::default()
                    }
                } else {
                    r.vals
                };
                (r.id, v)
            })
            .collect();
        let mut used = std::collections::HashSet::with_capacity(plan.len());
        let mut out = Saved {
            version: format::VERSION,
            ..Default::default()
        };
        for s in plan {
            if !used.insert(s.id) {
                return Err(invalid("two SAs with one identity"));
            }
            let vals = match by_id.get(&s.id) {
                Some(c) => {
                    report.carried += 1;
                    *c
                }
                None => {
                    report.fresh += 1;
                    Carried::default()
                }
            };
            out.sas.push(Record {
                id: s.id,
                vals,
                retired: false,
                deleted: false,
                text: s.text.clone(),
            });
        }
        for id in deleted {
            if used.insert(*id) {
                out.sas.push(Record {
                    id: *id,
                    vals: by_id.get(id).copied().unwrap_or_default(),
                    retired: true,
                    deleted: true,
                    text: None,
                });
            }
        }
        // Retired: those the last run had live first (the most recent), then the older
        // ones in their order.
        let gone = |r: &&Record| !used.contains(&r.id) && !r.deleted;
        let retired: Vec<Record> = saved
            .sas
            .iter()
            .filter(|r| !r.retired)
            .filter(gone)
            .chain(saved.sas.iter().filter(|r| r.retired).filter(gone))
            .map(|r| Record {
                retired: true,
                deleted: false,
                text: None,
                ..r.clone()
            })
            .collect();
        report.retired = retired.len().min(MAX_RETIRED);
        report.forgotten = retired.len() - report.retired;
        out.sas.extend(retired.into_iter().take(MAX_RETIRED));
        out.texts = texts.to_vec();
        let bytes = format::serialize(&out);
        let count = (bytes.len() - HEADER_LEN) / RECORD_LEN;
        if count > MAX_RECORDS {
            return Err(invalid("too many records"));
        }
        // The SA records of the plan: each SA's record comes first, then its text.
        let mut planned = Vec::with_capacity(plan.len());
        let mut at = 0u32;
        for s in plan {
            planned.push(at);
            at += if s.text.is_some() { 2 } else { 1 };
        }
        let next_order = out
            .sas
            .iter()
            .filter_map(|r| r.text.as_ref().map(|t| t.order))
            .chain(texts.iter().map(|t| t.order))
            .max()
            .map_or(0, |o| o + 1);

        // The old file, to overwrite once it is no longer the state file.
        let old = OpenOptions::new().write(true).open(&path).ok();
        // Written beside, then renamed over: never a half-written file under `path`.
        let tmp = with_suffix(&path, ".tmp");
        let mut f =
            crate::keyfile::create_private(&tmp).map_err(err_io(&p, "create the new file"))?;
        f.write_all(&bytes).map_err(err_io(&p, "write"))?;
        f.sync_all().map_err(err_io(&p, "sync"))?;
        std::fs::rename(&tmp, &path).map_err(err_io(&p, "rename the new file into place"))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        if let Some(o) = old {
            scrub(&o);
        }
        let cap = HEADER_LEN + MAX_RECORDS * RECORD_LEN;
        // SAFETY: a fresh shared mapping; pages past the file's end are never touched before
        // the file is grown to cover them (StateFile::take).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(err_io(&p, "mmap")(std::io::Error::last_os_error()));
        }
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| err_io(&p, "mmap")(std::io::Error::other("null mapping")))?;
        let region = Arc::new(Region::Map {
            ptr: base,
            len: cap,
        });
        let mut alloc = Alloc {
            records: count as u32,
            hwm: count as u32,
            free: BTreeSet::new(),
            retired: HashMap::new(),
            retired_order: VecDeque::new(),
            next_order,
        };
        let mut i = 0u32;
        for r in &out.sas {
            if r.retired {
                alloc.retired.insert(r.id, i);
                // Most recent first in the file: the oldest ends at the queue's front.
                if !r.deleted {
                    alloc.retired_order.push_front(i);
                }
            }
            i += if r.text.is_some() { 2 } else { 1 };
        }
        let texts_at = i;
        Ok(StateFile {
            path,
            region,
            base,
            file: f,
            alloc: Mutex::new(alloc),
            planned,
            texts_at,
            report,
            _lock: lock,
        })
    }
}

/// Overwrites a file no longer named (the old state file after the rename) with zeros and
/// cuts it: on tmpfs its pages would otherwise go back to the allocator with the keys in
/// them. (On a disk file system this does not reach copies the file system or the device
/// keeps elsewhere: docs/state-file.md.)
fn scrub(f: &File) {
    use std::os::unix::fs::FileExt;
    let Ok(m) = f.metadata() else { return };
    let zeros = vec![0u8; 1 << 16];
    let mut at = 0u64;
    while at < m.len() {
        let n = zeros.len().min((m.len() - at) as usize);
        if f.write_all_at(&zeros[..n], at).is_err() {
            break;
        }
        at += n as u64;
    }
    let _ = f.sync_all();
    let _ = f.set_len(0);
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
