//! Acceptance: two gateways running `xfrm-user run`, host-a — gw-a ══ wire ══ gw-b —
//! host-b. For each case: ping both ways, a TCP transfer each way (256 MiB unless said
//! otherwise; `XFRM_GW_MIB` overrides for local runs) with equal SHA-256 at both ends, a
//! capture on the wire with no protected packet in clear, and the Scapy-based peer decrypting
//! a sample of the captured ESP/AH and finding the hosts' packets inside. See
//! `xfrm_tests::scenario` for the steps and `xfrm_tests::gateway` for the topology.

use xfrm_tests::{
    gateway::{
        Alg, Case, Endpoints, Family, Mode, NetOpts, SaSpec, CBC128_SHA256, CHACHA20_POLY1305,
        GCM128, GCM256, SHA256,
    },
    init_logging, root_or_skip,
    scenario::{heavy, run_case, transfer_size},
};

fn run(test: &str, case: Case, opts: NetOpts, default_mib: u64) {
    if !root_or_skip(test) {
        return;
    }
    init_logging();
    let _one_at_a_time = heavy();
    let size = transfer_size(default_mib);
    match run_case(&case, opts, size) {
        Ok(t) => xfrm_tests::scenario::report(&format!(
            "TIME {test}: {:.1?} ({} MiB each way; {t})",
            t.total(),
            size >> 20
        )),
        Err(e) => panic!("{test}: {e:#}"),
    }
}

#[test]
fn gateway_esp_tunnel_ipv4() {
    let case = Case::new("esp-tunnel-v4", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, GCM128));
    run("gateway_esp_tunnel_ipv4", case, NetOpts::default(), 256);
}

#[test]
fn gateway_esp_tunnel_ipv6() {
    let case = Case::new("esp-tunnel-v6", Endpoints::Hosts, Family::V6, Family::V6)
        .sa(SaSpec::new(Mode::Tunnel, GCM256));
    run("gateway_esp_tunnel_ipv6", case, NetOpts::default(), 256);
}

/// ESP with AES-128-CBC + HMAC-SHA-256-128 (RFC 8221's MUST beside GCM), IPv4 tunnel.
#[test]
fn gateway_esp_tunnel_cbc_hmac_sha256() {
    let case = Case::new(
        "esp-tunnel-cbc-sha256",
        Endpoints::Hosts,
        Family::V4,
        Family::V4,
    )
    .sa(SaSpec::new(Mode::Tunnel, CBC128_SHA256));
    run(
        "gateway_esp_tunnel_cbc_hmac_sha256",
        case,
        NetOpts::default(),
        64,
    );
}

/// ESP with ChaCha20-Poly1305 (RFC 7634), IPv6 tunnel.
#[test]
fn gateway_esp_tunnel_chacha20_poly1305() {
    let case = Case::new(
        "esp-tunnel-chacha",
        Endpoints::Hosts,
        Family::V6,
        Family::V6,
    )
    .sa(SaSpec::new(Mode::Tunnel, CHACHA20_POLY1305));
    run(
        "gateway_esp_tunnel_chacha20_poly1305",
        case,
        NetOpts::default(),
        64,
    );
}

/// IPv6 hosts over an IPv4 wire, and IPv4 hosts over an IPv6 wire.
#[test]
fn gateway_esp_tunnel_mixed_families() {
    for (name, inner, outer) in [
        ("esp-tunnel-6in4", Family::V6, Family::V4),
        ("esp-tunnel-4in6", Family::V4, Family::V6),
    ] {
        let case =
            Case::new(name, Endpoints::Hosts, inner, outer).sa(SaSpec::new(Mode::Tunnel, GCM128));
        run(
            "gateway_esp_tunnel_mixed_families",
            case,
            NetOpts::default(),
            16,
        );
    }
}

/// Transport mode between the gateways' own outside addresses: the traffic starts and ends
/// in the gateways' namespaces (their own stacks: the TC egress program and the TAP device).
#[test]
fn gateway_esp_transport_between_gateways() {
    let case = Case::new(
        "esp-transport-gw",
        Endpoints::Gateways,
        Family::V4,
        Family::V4,
    )
    .sa(SaSpec::new(Mode::Transport, GCM128));
    run(
        "gateway_esp_transport_between_gateways",
        case,
        NetOpts::default(),
        256,
    );
}

/// The same over IPv6 (neighbour discovery between the gateways stays in clear, as the
/// classifier's ND rule says).
#[test]
fn gateway_esp_transport_between_gateways_ipv6() {
    let case = Case::new(
        "esp-transport-gw-v6",
        Endpoints::Gateways,
        Family::V6,
        Family::V6,
    )
    .sa(SaSpec::new(Mode::Transport, GCM256));
    run(
        "gateway_esp_transport_between_gateways_ipv6",
        case,
        NetOpts::default(),
        16,
    );
}

#[test]
fn gateway_ah_tunnel() {
    let case = Case::new("ah-tunnel-v4", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, SHA256));
    run("gateway_ah_tunnel", case, NetOpts::default(), 256);
}

/// ESP in UDP 4500 (RFC 3948).
#[test]
fn gateway_nat_traversal() {
    let case = Case::new("natt-v4", Endpoints::Hosts, Family::V4, Family::V4).sa(SaSpec::new(
        Mode::Tunnel,
        GCM128,
    )
    .natt(4500));
    run("gateway_nat_traversal", case, NetOpts::default(), 256);
}

/// ESP tunnel, then AH transport over the outer header: IP | AH | ESP | inner.
#[test]
fn gateway_bundle_esp_then_ah() {
    let case = Case::new("bundle-esp-ah", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, GCM128))
        .sa(SaSpec::new(Mode::Transport, Alg::Sha1 { trunc: 96 }));
    run("gateway_bundle_esp_then_ah", case, NetOpts::default(), 256);
}

/// Two queues on every link and `xfrm-user run --queues 2` on both gateways: one worker per
/// queue, both on the same SAs (and two TAP queues), each queue shown to carry traffic.
#[test]
fn gateway_two_queues() {
    let case = Case::new("esp-tunnel-v4-2q", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, GCM128));
    let opts = NetOpts {
        queues: 2,
        ..NetOpts::default()
    };
    run("gateway_two_queues", case, opts, 64);
}

/// Hosts with veth's TX checksum offload on: their TCP checksums reach the gateway partial
/// (CHECKSUM_PARTIAL), which AF_XDP does not report; the far host must still get valid ones.
#[test]
fn gateway_host_checksum_offload() {
    let case = Case::new(
        "esp-tunnel-v4-csum-offload",
        Endpoints::Hosts,
        Family::V4,
        Family::V4,
    )
    .sa(SaSpec::new(Mode::Tunnel, GCM128));
    let opts = NetOpts {
        host_tx_checksum: true,
        ..NetOpts::default()
    };
    run("gateway_host_checksum_offload", case, opts, 16);
}
