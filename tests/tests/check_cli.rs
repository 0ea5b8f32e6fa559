//! `xfrm-user check --config FILE` as a user runs it: exit codes and output.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(xfrm_tests::daemon::xfrm_user_bin())
}

/// A 0600 copy of the example (a checkout leaves it 0644, which `check` refuses), removed
/// on drop.
fn sample(name: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join(name);
    let text = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../xfrm-user/examples/site-a.conf"),
    );
    xfrm_user::keyfile::write_private(&p, text.unwrap()).unwrap();
    (d, p)
}

#[test]
fn valid_config_exits_0_with_a_summary() {
    let (_d, p) = sample("site-a.conf");
    let out = bin().args(["check", "--config"]).arg(&p).output().unwrap();
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
    xfrm_user::keyfile::write_private(
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

/// `check` and `pcap` refuse a key file that group or others may read, with the command that
/// fixes it, and accept it once it is 0600 (`run` is tested the same way in
/// tests/tests/hardening.rs, where it can run).
#[test]
fn key_files_others_can_read_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (d, p) = sample("open.conf");
    let pcap_in = d.path().join("in.pcap");
    let pcap_out = d.path().join("out.pcap");
    // An empty capture: enough for pcap to run once the config is read.
    let header = pcap_file::pcap::PcapHeader {
        datalink: pcap_file::DataLink::RAW,
        ..Default::default()
    };
    let w =
        pcap_file::pcap::PcapWriter::with_header(std::fs::File::create(&pcap_in).unwrap(), header);
    drop(w.unwrap());
    let check = || bin().args(["check", "-c"]).arg(&p).output().unwrap();
    let pcap = || {
        bin()
            .args(["pcap", "--dir", "out", "-c"])
            .arg(&p)
            .arg("--in")
            .arg(&pcap_in)
            .arg("--out")
            .arg(&pcap_out)
            .output()
            .unwrap()
    };
    let f = p.display();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let want = format!(
            "{f}: mode {mode:04o} gives group or others access to a file that holds keys; run \
             `chmod 600 {f}` (only its owner may read it)\n"
        );
        for (what, out) in [("check", check()), ("pcap", pcap())] {
            assert_eq!(out.status.code(), Some(2), "{what} {mode:o}: {out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stderr), want, "{what}");
            assert!(out.stdout.is_empty(), "{what}");
        }
    }
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = pcap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}
