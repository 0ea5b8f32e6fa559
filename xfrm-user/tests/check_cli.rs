//! `xfrm-user check --config FILE` as a user runs it: exit codes and output.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xfrm-user"))
}

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/site-a.conf")
}

#[test]
fn valid_config_exits_0_with_a_summary() {
    let out = bin()
        .args(["check", "--config"])
        .arg(sample())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "8 states, 9 policies\n"
    );
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[test]
fn invalid_config_exits_2_with_every_error() {
    let p = std::env::temp_dir().join(format!("xfrm-check-cli-{}.conf", std::process::id()));
    std::fs::write(
        &p,
        "policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir sideways\n\
         # fine\n\
         state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 1 aead gcm128 0x00 128\n",
    )
    .unwrap();
    let out = bin().args(["-v", "check", "-c"]).arg(&p).output().unwrap();
    std::fs::remove_file(&p).unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    let f = p.display();
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with(&f.to_string()))
        .collect();
    assert_eq!(
        errors,
        [
            format!("{f}:1: word 'sideways': expected a direction: out, in or fwd"),
            format!("{f}:3: word 'gcm128': expected an aead algorithm name: 'rfc4106(gcm(aes))', 'rfc4543(gcm(aes))' or 'rfc7539esp(chacha20,poly1305)'"),
        ]
    );
}

/// `check --algorithms` names every algorithm the config language takes.
#[test]
fn check_algorithms_lists_what_is_supported() {
    let out = bin().args(["check", "--algorithms"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "rfc4106(gcm(aes))",
        "rfc4543(gcm(aes))",
        "rfc7539esp(chacha20,poly1305)",
        "cbc(aes)",
        "rfc3686(ctr(aes))",
        "cipher_null",
        "hmac(sha256)",
        "hmac(sha384)",
        "hmac(sha512)",
        "hmac(sha1)",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    // Without --algorithms the config is required.
    let out = bin().arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn missing_file_exits_2() {
    let out = bin()
        .args(["check", "--config", "/nonexistent/xfrm.conf"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("/nonexistent/xfrm.conf: cannot read: ")
    );
}

#[test]
fn no_subcommand_is_a_usage_error() {
    let out = bin().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}
