//! The `strongswan` setup step: Debian's charon and swanctl, and our `kernel-xfrmuser`
//! plugin (`strongswan/kernel-xfrmuser/`) built against the headers of the very strongSwan
//! release that charon is, then installed where charon loads plugins.
//!
//! The headers come from Debian's source package through apt, with a sources list and lists
//! directory of our own under `.tools/strongswan/apt` (the system's apt configuration is
//! left alone). The source is configured once for its `config.h`; nothing of it is built.

use std::{
    collections::hash_map::DefaultHasher,
    fs,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{
    setup::{apt_install, Done},
    util::{find_program, is_root, output, repo_root, run as run_cmd, tools_dir},
};

const CHARON: &str = "/usr/lib/ipsec/charon";
/// Where Debian's charon loads `libstrongswan-<name>.so` from.
pub const PLUGIN_DIR: &str = "/usr/lib/ipsec/plugins";
const PLUGIN: &str = "libstrongswan-kernel-xfrmuser.so";
/// charon, swanctl, the plugins the tests load (standard: gcm, kdf, …; extra:
/// kernel-libipsec for the interop peer), `pki` for the tests' CA and certificates, and
/// `nft` for the NAT between the gateways of the NAT-T test.
const PACKAGES: &[&str] = &[
    "strongswan-charon",
    "strongswan-swanctl",
    "charon-systemd",
    "libstrongswan-standard-plugins",
    "libcharon-extra-plugins",
    "strongswan-pki",
    "nftables",
];

fn dir() -> PathBuf {
    tools_dir().join("strongswan")
}

/// The upstream part of a Debian version: `1:5.9.8-5+deb12u6` → `5.9.8`.
fn upstream_of(debian: &str) -> &str {
    let v = debian.split_once(':').map_or(debian, |(_, v)| v);
    v.rsplit_once('-').map_or(v, |(u, _)| u)
}

/// The installed charon: its Debian version and the upstream version charon itself reports.
fn installed() -> Result<(String, String)> {
    let deb = output(Command::new("dpkg-query").args(["-W", "-f", "${Version}", PACKAGES[0]]))?;
    let says = output(Command::new(CHARON).arg("--version"))?;
    // "Linux strongSwan 5.9.8"
    let version = says
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string();
    if version != upstream_of(&deb) {
        bail!(
            "{CHARON} says `{}` but package {} is {deb}: a charon not from Debian's package is \
             first; the plugin must be built for the charon that loads it",
            says.trim(),
            PACKAGES[0]
        );
    }
    Ok((deb, version))
}

/// Debian's `strongswan_<version>.orig.tar.*` through `apt-get source`, with a sources list
/// of our own holding the `deb-src` lines of this release's suites.
fn fetch_source(debian: &str, upstream: &str) -> Result<PathBuf> {
    let src = dir().join("src");
    let find = || -> Option<PathBuf> {
        fs::read_dir(&src)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                let n = p.file_name().unwrap_or_default().to_string_lossy();
                n.starts_with(&format!("strongswan_{upstream}.orig.tar.")) && !n.ends_with(".asc")
            })
    };
    if let Some(t) = find() {
        return Ok(t);
    }
    let apt = dir().join("apt");
    for d in ["lists/partial", "parts", "archives/partial"] {
        fs::create_dir_all(apt.join(d))?;
    }
    fs::create_dir_all(&src)?;
    let release = fs::read_to_string("/etc/os-release").context("/etc/os-release")?;
    let codename = release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .context("/etc/os-release has no VERSION_CODENAME (not Debian?)")?;
    let key = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]";
    let list = format!(
        "deb-src {key} http://deb.debian.org/debian {codename} main\n\
         deb-src {key} http://deb.debian.org/debian {codename}-updates main\n\
         deb-src {key} http://deb.debian.org/debian-security {codename}-security main\n"
    );
    let sources = apt.join("sources.list");
    fs::write(&sources, list)?;
    let opts = [
        format!("-o=Dir::Etc::SourceList={}", sources.display()),
        format!("-o=Dir::Etc::SourceParts={}", apt.join("parts").display()),
        format!("-o=Dir::State::Lists={}", apt.join("lists").display()),
        format!("-o=Dir::Cache::Archives={}", apt.join("archives").display()),
    ];
    let apt_get = || {
        let mut c = Command::new("apt-get");
        c.args(&opts).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run_cmd(apt_get().args(["update", "-q"]))
        .context("missing piece: `apt-get update` of the deb-src lists")?;
    // Only the upstream tarball: the headers are what we need, and the Debian patches do
    // not touch the plugin interface.
    run_cmd(
        apt_get()
            .args(["source", "--download-only", "--tar-only", "-q"])
            .arg(format!("strongswan={debian}"))
            .current_dir(&src),
    )
    .with_context(|| format!("missing piece: the source of strongswan {debian}"))?;
    find().with_context(|| {
        format!(
            "apt-get source left no strongswan_{upstream}.orig.tar.* in {}",
            src.display()
        )
    })
}

/// The unpacked source, configured once for `config.h`; refuses a release other than
/// charon's.
fn configured_tree(tarball: &Path, upstream: &str) -> Result<PathBuf> {
    let build = dir().join("build");
    let tree = build.join(format!("strongswan-{upstream}"));
    if !tree.join("configure.ac").is_file() {
        fs::create_dir_all(&build)?;
        run_cmd(
            Command::new("tar")
                .arg("xf")
                .arg(tarball)
                .arg("-C")
                .arg(&build),
        )?;
    }
    let ac = fs::read_to_string(tree.join("configure.ac"))?;
    let version = ac
        .lines()
        .find_map(|l| l.trim().strip_prefix("AC_INIT([strongSwan],["))
        .and_then(|r| r.split(']').next())
        .context("configure.ac has no AC_INIT([strongSwan],[…])")?;
    if version != upstream {
        bail!(
            "the strongSwan source in {} is {version} but the installed charon is {upstream}: \
             a plugin built against other headers would not fit charon's ABI (delete {} and \
             run setup again)",
            tree.display(),
            dir().display()
        );
    }
    if !tree.join("config.h").is_file() {
        let log = build.join("configure.log");
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "./configure --prefix=/usr --sysconfdir=/etc --libexecdir=/usr/lib \
                 --with-ipsecdir=/usr/lib/ipsec --disable-defaults --enable-charon \
                 --enable-kernel-netlink --enable-socket-default > '{}' 2>&1",
                log.display()
            ))
            .current_dir(&tree)
            .status()?;
        if !status.success() || !tree.join("config.h").is_file() {
            bail!(
                "configure of strongSwan {upstream} failed ({status}), see {}",
                log.display()
            );
        }
    }
    Ok(tree)
}

fn plugin_sources() -> Result<Vec<PathBuf>> {
    let d = repo_root().join("strongswan/kernel-xfrmuser");
    let mut files: Vec<PathBuf> = fs::read_dir(&d)
        .with_context(|| format!("read {}", d.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "c" || e == "h"))
        .collect();
    files.sort();
    Ok(files)
}

pub fn step() -> Result<Done> {
    if !is_root() {
        return Ok(Done::Skipped(
            "not root: cannot install strongSwan nor its plugin (only the root-only \
             strongswan_* tests need them)"
                .into(),
        ));
    }
    let missing = !Path::new(CHARON).is_file()
        || find_program("swanctl").is_none()
        || find_program("pki").is_none()
        || find_program("nft").is_none()
        || !Path::new(PLUGIN_DIR)
            .join("libstrongswan-kernel-libipsec.so")
            .is_file()
        || !Path::new(PLUGIN_DIR).join("libstrongswan-gcm.so").is_file();
    if missing {
        apt_install(PACKAGES)?;
    }
    let (debian, upstream) = installed()?;
    let sources = plugin_sources()?;
    let mut h = DefaultHasher::new();
    for f in &sources {
        f.file_name().hash(&mut h);
        fs::read(f)?.hash(&mut h);
    }
    let stamp = format!("{PLUGIN} {:016x} for charon {debian}\n", h.finish());
    let stamp_path = dir().join("stamp");
    let built = dir().join(PLUGIN);
    let target = Path::new(PLUGIN_DIR).join(PLUGIN);
    let same = |a: &Path, b: &Path| matches!((fs::read(a), fs::read(b)), (Ok(x), Ok(y)) if x == y);
    if fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
        && same(&built, &target)
    {
        return Ok(Done::AlreadyThere(format!(
            "{} (charon {debian})",
            target.display()
        )));
    }
    let tarball = fetch_source(&debian, &upstream)?;
    let tree = configured_tree(&tarball, &upstream)?;
    let cc = find_program("cc")
        .or_else(|| find_program("gcc"))
        .context("missing piece: a C compiler (apt-get install gcc)")?;
    let mut cmd = Command::new(cc);
    cmd.args([
        "-shared",
        "-fPIC",
        "-O2",
        "-g",
        "-D_GNU_SOURCE=",
        "-DHAVE_CONFIG_H",
    ])
    .args(["-Wall", "-Werror", "-Wno-format", "-Wno-pointer-sign"])
    .arg("-Wno-unused-parameter")
    .arg("-include")
    .arg(tree.join("config.h"))
    .arg(format!("-I{}", tree.join("src/libstrongswan").display()))
    .arg(format!("-I{}", tree.join("src/libcharon").display()))
    .arg("-o")
    .arg(&built)
    .args(
        sources
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "c")),
    )
    .args(["-L/usr/lib/ipsec", "-lstrongswan", "-lcharon"])
    .args(["-Wl,-rpath,/usr/lib/ipsec", "-Wl,-z,defs"]);
    run_cmd(&mut cmd).context("building the kernel-xfrmuser plugin")?;
    // A new inode: a running charon keeps the mapping of the old file.
    let tmp = Path::new(PLUGIN_DIR).join(format!(".{PLUGIN}.tmp"));
    fs::copy(&built, &tmp)?;
    fs::rename(&tmp, &target)
        .with_context(|| format!("install {} as {}", built.display(), target.display()))?;
    fs::write(&stamp_path, stamp)?;
    Ok(Done::Installed(format!(
        "{} for charon {debian} ({} bytes)",
        target.display(),
        fs::metadata(&target)?.len()
    )))
}

#[cfg(test)]
mod tests {
    use super::upstream_of;

    #[test]
    fn upstream_version() {
        assert_eq!(upstream_of("5.9.8-5+deb12u6"), "5.9.8");
        assert_eq!(upstream_of("1:5.9.8-5"), "5.9.8");
        assert_eq!(upstream_of("5.9.8"), "5.9.8");
    }
}
