//! Files that hold key material: the configuration (ESP/AH keys) and what the daemon writes
//! (the state file: SPIs, addresses and key fingerprints). As OpenSSH does with a private
//! key, a file that others may read (or write: they could swap the keys), or that belongs to
//! another ordinary user, is refused with the command that fixes it; and a file written here
//! is 0600 from its creation on, never widened for a moment.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

/// The permission bits a key file may not have: any access for group or others.
const OPEN_TO_OTHERS: u32 = 0o077;

/// Why a key file was refused. `Display` is `PATH: ` and [`KeyFileError::problem`].
#[derive(Debug)]
pub enum KeyFileError {
    Io {
        path: String,
        err: std::io::Error,
    },
    TooOpen {
        path: String,
        mode: u32,
    },
    Owner {
        path: String,
        mode: u32,
        owner: u32,
        caller: u32,
    },
}

impl std::fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (Self::Io { path, .. } | Self::TooOpen { path, .. } | Self::Owner { path, .. }) = self;
        write!(f, "{path}: {}", self.problem())
    }
}

impl std::error::Error for KeyFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { err, .. } => Some(err),
            _ => None,
        }
    }
}

impl KeyFileError {
    fn io(path: &Path, err: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            err,
        }
    }

    /// What is wrong with the file and the command that fixes it, without its name in front.
    pub fn problem(&self) -> String {
        match self {
            Self::Io { err, .. } => err.to_string(),
            Self::TooOpen { path, mode } => format!(
                "mode {mode:04o} gives group or others access to a file that holds keys; run \
                 `chmod 600 {path}` (only its owner may read it)"
            ),
            Self::Owner {
                path,
                mode,
                owner,
                caller,
            } => format!(
                "owned by uid {owner} (mode {mode:04o}), neither root nor the caller (uid \
                 {caller}), who could change or read its keys; run `chown {caller} {path}` and \
                 `chmod 600 {path}`"
            ),
        }
    }

    /// The I/O error's kind, if it is one (NotFound is not a refusal).
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            Self::Io { err, .. } => Some(err.kind()),
            _ => None,
        }
    }
}

/// Checks the mode and owner of an open key file (its fstat: what was opened is what is
/// checked, even if the name is swapped meanwhile).
pub fn check_private(path: &Path, f: &File) -> Result<(), KeyFileError> {
    let m = f.metadata().map_err(|e| KeyFileError::io(path, e))?;
    // SAFETY: geteuid has no preconditions.
    let caller = unsafe { libc::geteuid() };
    check_mode(path, m.mode() & 0o7777, m.uid(), caller)
}

fn check_mode(path: &Path, mode: u32, owner: u32, caller: u32) -> Result<(), KeyFileError> {
    let p = path.display().to_string();
    if owner != 0 && owner != caller {
        return Err(KeyFileError::Owner {
            path: p,
            mode,
            owner,
            caller,
        });
    }
    if mode & OPEN_TO_OTHERS != 0 {
        return Err(KeyFileError::TooOpen { path: p, mode });
    }
    Ok(())
}

/// Opens a key file for reading after [`check_private`].
pub fn open_private(path: &Path) -> Result<File, KeyFileError> {
    let f = File::open(path).map_err(|e| KeyFileError::io(path, e))?;
    check_private(path, &f)?;
    Ok(f)
}

/// Reads a whole key file after [`check_private`] into a buffer wiped on drop, sized from
/// the file so that no reallocation leaves a copy behind.
pub fn read_private(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyFileError> {
    use std::io::Read;
    let mut f = open_private(path)?;
    let len = f.metadata().map_err(|e| KeyFileError::io(path, e))?.len();
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(len as usize + 1));
    f.read_to_end(&mut buf)
        .map_err(|e| KeyFileError::io(path, e))?;
    Ok(buf)
}

/// Creates (or truncates) `path` for writing, mode 0600: a new file is created with it
/// (open's mode, under the umask, which only narrows), an existing one is truncated and
/// narrowed before anything is written. The last component is not followed if a symlink.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Writes `bytes` to `path` through [`create_private`]: what tests, tools and examples use
/// for configuration files.
pub fn write_private(path: &Path, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
    create_private(path)?.write_all(bytes.as_ref())
}

/// Creates the directory `dir` (and its parents) as 0700 from the start.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/etc/xfrm/site.conf")
    }

    #[test]
    fn modes_open_to_others_are_refused_with_the_fix() {
        for mode in [0o644, 0o640, 0o604, 0o660, 0o606, 0o601, 0o610, 0o777] {
            let e = check_mode(p(), mode, 0, 0).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "/etc/xfrm/site.conf: mode {mode:04o} gives group or others access to a \
                     file that holds keys; run `chmod 600 /etc/xfrm/site.conf` (only its owner \
                     may read it)"
                )
            );
        }
        for mode in [0o600, 0o400, 0o700, 0o200] {
            check_mode(p(), mode, 0, 0).unwrap();
            check_mode(p(), mode, 1000, 1000).unwrap();
            // Root's files are fine for any caller (a root-owned config read by the daemon
            // after it changed user is still root's).
            check_mode(p(), mode, 0, 1000).unwrap();
        }
    }

    #[test]
    fn another_users_file_is_refused() {
        let e = check_mode(p(), 0o600, 1000, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/xfrm/site.conf: owned by uid 1000 (mode 0600), neither root nor the caller \
             (uid 0), who could change or read its keys; run `chown 0 /etc/xfrm/site.conf` and \
             `chmod 600 /etc/xfrm/site.conf`"
        );
    }

    #[test]
    fn files_are_created_and_narrowed_to_0600() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("k.conf");
        write_private(&f, b"secret").unwrap();
        let mode = |f: &Path| std::fs::metadata(f).unwrap().mode() & 0o777;
        assert_eq!(mode(&f), 0o600);
        assert_eq!(&*read_private(&f).unwrap(), b"secret");
        // An existing file that was too open is narrowed by the next write.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_private(&f).unwrap_err();
        assert!(
            matches!(e, KeyFileError::TooOpen { mode: 0o644, .. }),
            "{e}"
        );
        write_private(&f, b"new").unwrap();
        assert_eq!(mode(&f), 0o600);
        assert_eq!(&*read_private(&f).unwrap(), b"new");
        // A symlink in the last component is not followed.
        let l = d.path().join("link");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        assert!(create_private(&l).is_err());
        let sub = d.path().join("a/b");
        create_private_dir(&sub).unwrap();
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(
            read_private(&d.path().join("none")).unwrap_err().io_kind(),
            Some(std::io::ErrorKind::NotFound)
        );
    }
}
