//! No error message and no `{:?}` of a parsed configuration carries a key: lines with keys in
//! every form, mutated the ways people get them wrong (a word missing, doubled, swapped, a
//! key split by a space, a word replaced by the key), and every message checked for any
//! stretch of the key.

use super::*;

/// Keys nothing else in a line resembles: (the word as written, its secret text).
const KEYS: &[(&str, &str)] = &[
    (
        "0x5ec2e7a1b3c4d5e6f708192a3b4c5d6e7f8091a2",
        "5ec2e7a1b3c4d5e6f708192a3b4c5d6e7f8091a2",
    ),
    ("'Zq8#secret-raw-key!'", "Zq8#secret-raw-key!"),
];

/// Lines holding `{K}` where a key goes.
const LINES: &[&str] = &[
    "state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x100 reqid 1 mode tunnel aead 'rfc4106(gcm(aes))' {K} 128",
    "state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x100 aead 'rfc4543(gcm(aes))' {K} 128 mode transport",
    "state add src 192.0.2.1 dst 192.0.2.2 proto ah spi 0x100 auth 'hmac(sha256)' {K} mode tunnel",
    "state add src 192.0.2.1 dst 192.0.2.2 proto ah spi 0x100 auth-trunc 'hmac(sha1)' {K} 96 reqid 7",
    "ip xfrm state add src fd00::1 dst fd00::2 proto esp spi 9 aead 'rfc4106(gcm(aes))' {K} 96 flag esn replay-window 64",
    "state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x100 enc 'cbc(aes)' {K} auth-trunc 'hmac(sha256)' {K} 128 mode tunnel",
    "state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x100 auth sha512 {K} enc 'rfc3686(ctr(aes))' {K}",
    "state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x100 aead 'rfc7539esp(chacha20,poly1305)' {K} 128",
];

/// Every stretch of `secret` this long or longer counts as a leak (a hex key's 8 bytes; 6
/// characters of a raw one).
fn leaks(text: &str, secret: &str) -> Option<String> {
    let n = if secret.chars().all(|c| c.is_ascii_hexdigit()) {
        16
    } else {
        6
    };
    let lower = text.to_ascii_lowercase();
    let s = secret.to_ascii_lowercase();
    (0..=s.len().saturating_sub(n))
        .map(|i| &s[i..i + n])
        .find(|w| lower.contains(w))
        .map(str::to_string)
}

/// Splits a line into shell words without losing the quotes (the lines above quote whole
/// words only).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (None, ' ') => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                cur.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The mutations of one line (as words; `key` is the index of the key word).
fn mutations(w: &[String], key: usize) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for i in 0..w.len() {
        let mut m = w.to_vec();
        m.remove(i);
        out.push(m);
        let mut m = w.to_vec();
        m.insert(i, w[i].clone());
        out.push(m);
        if i + 1 < w.len() {
            let mut m = w.to_vec();
            m.swap(i, i + 1);
            out.push(m);
        }
        // The key where another word belongs, and the key twice.
        let mut m = w.to_vec();
        m[i] = w[key].clone();
        out.push(m);
        let mut m = w.to_vec();
        m.insert(i, w[key].clone());
        out.push(m);
        // The line cut short here.
        out.push(w[..i].to_vec());
    }
    // The key split by a blank, its halves in turn moved about.
    let k = &w[key];
    let mid = k.len() / 2;
    let (a, b) = k.split_at(mid);
    let (a, b) = if k.starts_with('\'') {
        (format!("{a}'"), format!("'{b}"))
    } else {
        (a.to_string(), format!("0x{b}"))
    };
    let mut m = w.to_vec();
    m.splice(key..=key, [a.clone(), b.clone()]);
    out.push(m.clone());
    m.swap(key, key + 1);
    out.push(m);
    let mut m = w.to_vec();
    m[key] = b;
    out.push(m);
    out
}

#[test]
fn no_error_shows_a_key() {
    let mut checked = 0;
    for (kw, secret) in KEYS {
        for line in LINES {
            let line = line.replace("{K}", kw);
            let w = words(&line);
            let key = w.iter().position(|x| x == kw).unwrap();
            for m in mutations(&w, key) {
                let text = format!("# a comment\n{}\n", m.join(" "));
                match parse_config(&text, "k.conf") {
                    Ok(c) => {
                        let d = format!("{c:?}");
                        assert_eq!(leaks(&d, secret), None, "Debug of {text}: {d}");
                    }
                    Err(errs) => {
                        for e in errs {
                            let s = format!("{e} / {e:?}");
                            assert_eq!(leaks(&s, secret), None, "{text}: {s}");
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 500, "only {checked} errors seen");
}

#[test]
fn the_detector_finds_what_it_looks_for() {
    let (kw, secret) = KEYS[0];
    assert!(leaks(&format!("word '{kw}': x"), secret).is_some());
    assert!(leaks("word '0x5EC2E7A1B3C4D5E6F7': x", secret).is_some());
    assert!(leaks("word 'secret-raw': x", KEYS[1].1).is_some());
    assert_eq!(leaks("word '<key>': expected", secret), None);
}
