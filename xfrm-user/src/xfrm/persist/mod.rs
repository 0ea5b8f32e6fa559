//! What must survive the daemon (docs/state-file.md): per SA, the last output sequence
//! number handed out, the top of the inbound replay window and the lifetime's current
//! counters (the kernel keeps them in x->replay and x->curlft, which live as long as the
//! state; a user-space datapath dies with its process); and what the control plane changed
//! at run time: the SAs and policies added or updated (their requests, keys included) and
//! the configured ones deleted.
//!
//! Without the numbers a restarted daemon sends sequence numbers its peer has already seen
//! (the peer drops them as replays; with AES-GCM the same key and number also mean the same
//! nonce, see esp.rs), and its empty replay window accepts replays of old packets; without
//! the run-time changes it comes back without the SAs its key manager installed.
//!
//! The state file is mapped MAP_SHARED and each SA's counters *are* words of that mapping:
//! the per-packet cost stays one atomic add, and a store to a shared file mapping is in the
//! page cache at once, so it survives the process (`kill -9` included). It does not survive
//! the machine: /run is a tmpfs, and a file on disk is written back at the kernel's pace
//! (msync at orderly stop).
//!
//! - `identity`: who an SA is across restarts;
//! - `slot`: where one SA's counters live;
//! - `format`: the bytes (version 2; version 1 is read and rewritten);
//! - `file`: opening, locking, rewriting at start, and the changes of a running daemon.

mod file;
mod format;
mod identity;
mod slot;

pub use file::{
    default_path, text_too_long, Loaded, OpenReport, Planned, Reserved, StateFile, StateFileError,
};
pub use format::{
    parse, parse_file, serialize, serialize_v1, Carried, Record, SaText, Saved, TextKind,
    TextRecord, HEADER_LEN, MAGIC, MAX_RECORDS, MAX_RETIRED, RECORD_LEN, TEXT_MAX, VERSION,
};
pub use identity::{key_fingerprint, SaIdentity};
pub use slot::SeqSlot;

#[cfg(test)]
mod tests;
