//! Takes an ESP/AH packet apart into named fields, so that the bytes Linux puts on the wire
//! can be compared with ours field by field for the same SA and the same plaintext.
//!
//! ESP with AES-GCM is decrypted here with a plain AES-CTR keystream (RFC 4106: counter
//! block = salt | IV | counter, the payload from counter 2), without checking the ICV: the
//! point is to see the plaintext layout (inner packet, padding, pad length, next header).
//! The ICV is checked by the peers themselves (Linux decrypting ours, ours decrypting Linux's).
//! ESP with a cipher and HMAC is decrypted with xfrm-user's cipher (whose RFC 3602/3686
//! known answers are its unit tests), the ICV not checked either; ChaCha20-Poly1305 with
//! ring, which checks it.

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};

#[derive(Clone, Debug)]
pub enum SaKind {
    /// rfc4106(gcm(aes)) (gmac false) or rfc4543(gcm(aes)) (gmac true).
    Aead {
        key: Vec<u8>,
        salt: [u8; 4],
        icv: usize,
        gmac: bool,
    },
    /// ESP enc + auth: the cipher keyed as configured, its IV length, the ICV length.
    EncAuth {
        enc: xfrm_user::sa::EncAlgo,
        key: Vec<u8>,
        icv: usize,
    },
    /// rfc7539esp(chacha20,poly1305).
    ChaCha {
        key: Vec<u8>,
        salt: [u8; 4],
    },
    Ah {
        icv: usize,
    },
}

#[derive(Clone, Debug)]
pub struct SaKeys {
    pub spi: u32,
    pub kind: SaKind,
}

/// One named field; `value` is hex or decimal text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: String,
}

pub struct Parsed {
    pub fields: Vec<Field>,
    /// The inner packet (tunnel) or the transport payload after all layers, decrypted.
    pub inner: Vec<u8>,
}

impl Parsed {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value.as_str())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

struct Out {
    fields: Vec<Field>,
}

impl Out {
    fn put(&mut self, name: &str, value: impl ToString) {
        self.fields.push(Field {
            name: name.to_string(),
            value: value.to_string(),
        });
    }
}

fn aes_ctr(key: &[u8], salt: [u8; 4], iv: &[u8], data: &mut [u8]) {
    enum K {
        A128(Box<aes::Aes128>),
        A256(Box<aes::Aes256>),
    }
    let k = match key.len() {
        16 => K::A128(Box::new(aes::Aes128::new(GenericArray::from_slice(key)))),
        32 => K::A256(Box::new(aes::Aes256::new(GenericArray::from_slice(key)))),
        n => panic!("AES key of {n} bytes"),
    };
    for (i, chunk) in data.chunks_mut(16).enumerate() {
        let mut block = [0u8; 16];
        block[..4].copy_from_slice(&salt);
        block[4..12].copy_from_slice(iv);
        block[12..].copy_from_slice(&(2 + i as u32).to_be_bytes());
        let mut b = GenericArray::from(block);
        match &k {
            K::A128(c) => c.encrypt_block(&mut b),
            K::A256(c) => c.encrypt_block(&mut b),
        }
        for (d, s) in chunk.iter_mut().zip(b.iter()) {
            *d ^= s;
        }
    }
}

/// Parses `pkt` (an outer IPv4/IPv6 packet) with the SAs it may use.
/// `esn_hi`: the high half of the packet's sequence number with ESN (ChaCha20-Poly1305's
/// AAD holds it).
pub fn parse(pkt: &[u8], sas: &[SaKeys], esn_hi: Option<u32>) -> Result<Parsed, String> {
    let mut o = Out { fields: Vec::new() };
    if pkt.is_empty() {
        return Err("empty packet".into());
    }
    let (mut proto, mut off) = match pkt[0] >> 4 {
        4 => {
            if pkt.len() < 20 {
                return Err("short IPv4 header".into());
            }
            let ihl = usize::from(pkt[0] & 15) * 4;
            o.put("ip.ihl", ihl);
            o.put("ip.tos", format!("{:#04x}", pkt[1]));
            o.put("ip.len", be16(pkt, 2));
            o.put("ip.id", format!("{:#06x}", be16(pkt, 4)));
            o.put("ip.frag", format!("{:#06x}", be16(pkt, 6)));
            o.put("ip.ttl", pkt[8]);
            o.put("ip.proto", pkt[9]);
            o.put("ip.csum", format!("{:#06x}", be16(pkt, 10)));
            o.put("ip.src", hex(&pkt[12..16]));
            o.put("ip.dst", hex(&pkt[16..20]));
            if ihl > 20 {
                o.put("ip.options", hex(&pkt[20..ihl]));
            }
            if usize::from(be16(pkt, 2)) != pkt.len() {
                return Err(format!(
                    "IPv4 total length {} != {}",
                    be16(pkt, 2),
                    pkt.len()
                ));
            }
            (pkt[9], ihl)
        }
        6 => {
            if pkt.len() < 40 {
                return Err("short IPv6 header".into());
            }
            let first = be32(pkt, 0);
            o.put("ip6.tclass", format!("{:#04x}", (first >> 20) & 0xff));
            o.put("ip6.flow", format!("{:#07x}", first & 0xf_ffff));
            o.put("ip6.plen", be16(pkt, 4));
            o.put("ip6.nh", pkt[6]);
            o.put("ip6.hlim", pkt[7]);
            o.put("ip6.src", hex(&pkt[8..24]));
            o.put("ip6.dst", hex(&pkt[24..40]));
            if usize::from(be16(pkt, 4)) + 40 != pkt.len() {
                return Err(format!(
                    "IPv6 payload length {} + 40 != {}",
                    be16(pkt, 4),
                    pkt.len()
                ));
            }
            (pkt[6], 40)
        }
        v => return Err(format!("IP version {v}")),
    };
    let mut layer = 0;
    loop {
        layer += 1;
        let l = format!("l{layer}");
        match proto {
            17 => {
                if pkt.len() < off + 8 {
                    return Err("short UDP header".into());
                }
                o.put(&format!("{l}.udp.sport"), be16(pkt, off));
                o.put(&format!("{l}.udp.dport"), be16(pkt, off + 2));
                o.put(&format!("{l}.udp.len"), be16(pkt, off + 4));
                o.put(
                    &format!("{l}.udp.csum"),
                    format!("{:#06x}", be16(pkt, off + 6)),
                );
                off += 8;
                // espinudp-nonike: 8 zero bytes before ESP
                if pkt.len() >= off + 8 && pkt[off..off + 8] == [0; 8] {
                    o.put(&format!("{l}.udp.nonike"), "1");
                    off += 8;
                }
                proto = 50;
            }
            50 => {
                if pkt.len() < off + 16 {
                    return Err("short ESP".into());
                }
                let spi = be32(pkt, off);
                let sa = sas
                    .iter()
                    .find(|s| s.spi == spi)
                    .ok_or_else(|| format!("ESP SPI {spi:#x}: no such SA"))?;
                let (iv_len, icv) = match &sa.kind {
                    SaKind::Aead { icv, .. } => (8, *icv),
                    SaKind::ChaCha { .. } => (8, 16),
                    SaKind::EncAuth { enc, icv, .. } => (enc.iv_len(), *icv),
                    SaKind::Ah { .. } => return Err(format!("ESP SPI {spi:#x} is an AH SA")),
                };
                o.put(&format!("{l}.esp.spi"), format!("{spi:#010x}"));
                o.put(&format!("{l}.esp.seq"), be32(pkt, off + 4));
                let iv = &pkt[off + 8..off + 8 + iv_len];
                if iv_len > 0 {
                    o.put(&format!("{l}.esp.iv"), hex(iv));
                }
                if pkt.len() < off + 8 + iv_len + icv + 2 {
                    return Err("ESP shorter than IV + trailer + ICV".into());
                }
                let body_end = pkt.len() - icv;
                let mut body = pkt[off + 8 + iv_len..body_end].to_vec();
                o.put(&format!("{l}.esp.icv"), hex(&pkt[body_end..]));
                match &sa.kind {
                    SaKind::Aead {
                        key,
                        salt,
                        gmac: false,
                        ..
                    } => aes_ctr(key, *salt, iv, &mut body),
                    SaKind::EncAuth { enc, key, .. } => {
                        xfrm_user::crypto::cipher::EspCipher::new(*enc, key)
                            .and_then(|c| c.decrypt(iv, &mut body))
                            .map_err(|e| format!("ESP SPI {spi:#x}: {e}"))?;
                    }
                    SaKind::ChaCha { key, salt } => {
                        let k = xfrm_user::crypto::ChaChaKey::new(key, *salt)
                            .map_err(|e| format!("ESP SPI {spi:#x}: {e}"))?;
                        let mut aad = pkt[off..off + 8].to_vec();
                        if let Some(hi) = esn_hi {
                            aad.splice(4..4, hi.to_be_bytes());
                        }
                        xfrm_user::crypto::EspAead::open(
                            &k,
                            iv.try_into().unwrap(),
                            &aad,
                            &mut body,
                            &pkt[body_end..],
                        )
                        .map_err(|e| format!("ESP SPI {spi:#x}: ChaCha20-Poly1305: {e}"))?;
                    }
                    _ => {}
                }
                let n = body.len();
                let padlen = usize::from(body[n - 2]);
                let nh = body[n - 1];
                if padlen + 2 > n {
                    return Err(format!("ESP pad length {padlen} > payload {n}"));
                }
                o.put(&format!("{l}.esp.payload_len"), n);
                o.put(&format!("{l}.esp.padlen"), padlen);
                o.put(&format!("{l}.esp.pad"), hex(&body[n - 2 - padlen..n - 2]));
                o.put(&format!("{l}.esp.nh"), nh);
                let inner = body[..n - 2 - padlen].to_vec();
                o.put(&format!("{l}.esp.inner"), hex(&inner));
                return Ok(Parsed {
                    fields: o.fields,
                    inner,
                });
            }
            51 => {
                if pkt.len() < off + 12 {
                    return Err("short AH".into());
                }
                let spi = be32(pkt, off + 4);
                let sa = sas
                    .iter()
                    .find(|s| s.spi == spi)
                    .ok_or_else(|| format!("AH SPI {spi:#x}: no such SA"))?;
                let SaKind::Ah { icv } = sa.kind else {
                    return Err(format!("AH SPI {spi:#x} is an ESP SA"));
                };
                let len = (usize::from(pkt[off + 1]) + 2) * 4;
                o.put(&format!("{l}.ah.nh"), pkt[off]);
                o.put(&format!("{l}.ah.len_bytes"), len);
                o.put(&format!("{l}.ah.reserved"), be16(pkt, off + 2));
                o.put(&format!("{l}.ah.spi"), format!("{spi:#010x}"));
                o.put(&format!("{l}.ah.seq"), be32(pkt, off + 8));
                if len < 12 + icv || pkt.len() < off + len {
                    return Err(format!("AH length {len} with an ICV of {icv}"));
                }
                o.put(&format!("{l}.ah.icv"), hex(&pkt[off + 12..off + 12 + icv]));
                o.put(
                    &format!("{l}.ah.icv_pad"),
                    hex(&pkt[off + 12 + icv..off + len]),
                );
                proto = pkt[off];
                off += len;
                if proto != 50 {
                    let inner = pkt[off..].to_vec();
                    o.put(&format!("{l}.ah.inner"), hex(&inner));
                    return Ok(Parsed {
                        fields: o.fields,
                        inner,
                    });
                }
            }
            p => return Err(format!("not ESP/AH/UDP-encapsulated ESP: protocol {p}")),
        }
    }
}

/// The fields that differ between two parses (`a`: Linux, `b`: ours), in order.
pub fn diff(a: &Parsed, b: &Parsed) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for f in &a.fields {
        let other = b.get(&f.name).unwrap_or("(absent)");
        if other != f.value {
            out.push((f.name.clone(), f.value.clone(), other.to_string()));
        }
    }
    for f in &b.fields {
        if a.get(&f.name).is_none() {
            out.push((f.name.clone(), "(absent)".into(), f.value.clone()));
        }
    }
    out
}
