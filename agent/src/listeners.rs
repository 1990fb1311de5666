//! Listening sockets of the agent's network namespace: from sock_diag,
//! which the kernel filters by state (see [`crate::sockdiag`]), or from
//! `/proc/net` where a kernel does not answer for a family or protocol
//! (`udp_diag` not loaded).
//!
//! Both show the namespace of the calling thread, so this sees the node's
//! listeners even when the agent entered a namespace with `--netns`.

use std::net::IpAddr;

use anyhow::{Context as _, Result};

/// A listening socket.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listener {
    pub addr: IpAddr,
    pub port: u16,
    /// `agent_common::PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
}

const TCP_LISTEN: &str = "0A";
const UDP_UNCONNECTED: &str = "07";

/// TCP_LISTEN and TCP_CLOSE (an unconnected UDP socket) as `idiag_states`
/// bits.
const LISTEN_BIT: u32 = 1 << 10;
const UNCONNECTED_BIT: u32 = 1 << 7;

/// Every TCP listener and bound, unconnected UDP socket, deduplicated.
pub fn read() -> Result<Vec<Listener>> {
    let mut out = Vec::new();
    for (file, family, proto, state, bit) in [
        (
            "/proc/net/tcp",
            libc::AF_INET,
            agent_common::PROTO_TCP,
            TCP_LISTEN,
            LISTEN_BIT,
        ),
        (
            "/proc/net/tcp6",
            libc::AF_INET6,
            agent_common::PROTO_TCP,
            TCP_LISTEN,
            LISTEN_BIT,
        ),
        (
            "/proc/net/udp",
            libc::AF_INET,
            agent_common::PROTO_UDP,
            UDP_UNCONNECTED,
            UNCONNECTED_BIT,
        ),
        (
            "/proc/net/udp6",
            libc::AF_INET6,
            agent_common::PROTO_UDP,
            UDP_UNCONNECTED,
            UNCONNECTED_BIT,
        ),
    ] {
        if let Ok(ends) = crate::sockdiag::local_ends(family as u8, proto, bit) {
            out.extend(
                ends.into_iter()
                    .map(|(addr, port)| Listener { addr, port, proto }),
            );
            continue;
        }
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            // IPv6 disabled: no tcp6/udp6 file.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {file}")),
        };
        out.extend(parse(&text, proto, state));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Parses one `/proc/net/{tcp,udp}[6]` table, keeping rows in `state`.
/// Malformed rows are skipped.
pub fn parse(text: &str, proto: u8, state: &str) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let st = cols.nth(1)?;
            if st != state {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            Some(Listener {
                addr: parse_addr(addr)?,
                port: u16::from_str_radix(port, 16).ok()?,
                proto,
            })
        })
        .collect()
}

/// The kernel prints addresses as 32-bit words in host byte order.
fn parse_addr(hex: &str) -> Option<IpAddr> {
    match hex.len() {
        8 => Some(IpAddr::from(
            u32::from_str_radix(hex, 16).ok()?.to_ne_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            let v6 = std::net::Ipv6Addr::from(bytes);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0B024D0A:1F90 0C024D0A:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
   1: 000077FD000000000000000011000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn parses_ipv4_listeners_only() {
        let l = parse(TCP, 6, TCP_LISTEN);
        assert_eq!(
            l,
            vec![Listener {
                addr: "127.0.0.1".parse().expect("ip"),
                port: 8080,
                proto: 6
            }]
        );
    }

    #[test]
    fn parses_ipv6_listeners() {
        let l = parse(TCP6, 6, TCP_LISTEN);
        assert_eq!(l[0].addr, "::".parse::<IpAddr>().expect("ip"));
        assert_eq!(l[1].addr, "fd77::11".parse::<IpAddr>().expect("ip"));
        assert_eq!(l[1].port, 80);
    }

    #[test]
    fn finds_tcp_listeners_and_unconnected_udp_sockets() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let udp = std::net::UdpSocket::bind("[::1]:0").expect("bind");
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let connected = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        connected
            .connect(peer.local_addr().expect("addr"))
            .expect("connect");
        let all = read().expect("listeners");
        let has = |a: std::net::SocketAddr, proto| {
            all.contains(&Listener {
                addr: a.ip(),
                port: a.port(),
                proto,
            })
        };
        assert!(has(tcp.local_addr().expect("addr"), 6), "{all:?}");
        assert!(has(udp.local_addr().expect("addr"), 17), "{all:?}");
        assert!(!has(connected.local_addr().expect("addr"), 17), "{all:?}");
    }

    #[test]
    fn reads_this_namespace() {
        let l = read().expect("/proc/net readable");
        // Whatever is listening, every row parsed has a port.
        assert!(l.iter().all(|x| x.port != 0 || x.proto == 17));
    }
}
