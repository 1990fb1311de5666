//! Conntrack's table over ctnetlink (`NETLINK_NETFILTER`): the connections
//! this node translated and that are established, as the forwarded path
//! would have followed them had it seen their SYN.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use crate::netlink::{self, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_HDRLEN};

const NETLINK_NETFILTER: i32 = 12;
/// `NFNL_SUBSYS_CTNETLINK << 8`, then `IPCTNL_MSG_CT_GET` / `_NEW`.
const CT_GET: u16 = 1 << 8 | 1;
const CT_NEW: u16 = 1 << 8;
/// `struct nfgenmsg`'s size.
const NFGENMSG_LEN: usize = 4;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;

/// `IPS_ASSURED | IPS_CONFIRMED | IPS_DST_NAT`: the handshake ended, the
/// record is in the table, and its destination was translated.
const WANTED_STATUS: u32 = 1 << 2 | 1 << 3 | 1 << 5;
/// `TCP_CONNTRACK_ESTABLISHED`.
const ESTABLISHED: u8 = 3;

/// A connection whose destination conntrack translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translated {
    pub client: SocketAddr,
    /// Where the client sent it (a service's address).
    pub dialled: SocketAddr,
    /// Where it went (the reply's source).
    pub backend: SocketAddr,
}

/// Every established TCP connection in conntrack's table (zone 0) of the
/// calling thread's network namespace whose destination was translated.
pub fn translated() -> io::Result<Vec<Translated>> {
    const LEN: usize = NLMSG_HDRLEN + NFGENMSG_LEN;
    let mut req = [0u8; LEN];
    req[0..4].copy_from_slice(&(LEN as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&CT_GET.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC (both families), version 0, resource 0.
    let mut out = Vec::new();
    netlink::dump(NETLINK_NETFILTER, &req, |ty, msg| {
        if ty == CT_NEW
            && let Some(t) = msg.get(NFGENMSG_LEN..).and_then(record)
        {
            out.push(t);
        }
    })?;
    Ok(out)
}

/// One record's attributes, if it is a connection [`translated`] wants.
fn record(attrs: &[u8]) -> Option<Translated> {
    let (mut original, mut reply, mut status, mut state, mut zone) = (None, None, 0, 0, 0);
    for (ty, v) in netlink::attributes(attrs) {
        match ty {
            CTA_TUPLE_ORIG => original = tuple(v),
            CTA_TUPLE_REPLY => reply = tuple(v),
            CTA_STATUS => status = u32::from_be_bytes(v.get(..4)?.try_into().ok()?),
            CTA_PROTOINFO => state = tcp_state(v).unwrap_or(0),
            CTA_ZONE => zone = u16::from_be_bytes(v.get(..2)?.try_into().ok()?),
            _ => {}
        }
    }
    let (original, reply) = (original?, reply?);
    let wanted = original.proto == libc::IPPROTO_TCP as u8
        && status & WANTED_STATUS == WANTED_STATUS
        && state == ESTABLISHED
        && zone == 0;
    wanted.then_some(Translated {
        client: original.src,
        dialled: original.dst,
        backend: reply.src,
    })
}

/// One direction's tuple.
struct Tuple {
    src: SocketAddr,
    dst: SocketAddr,
    proto: u8,
}

fn tuple(attrs: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut ports, mut proto) = (None, None, [0u16; 2], 0);
    for (ty, v) in netlink::attributes(attrs) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, a) in netlink::attributes(v) {
                    match ty {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = ip(a),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = ip(a),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, p) in netlink::attributes(v) {
                    match ty {
                        CTA_PROTO_NUM => proto = *p.first()?,
                        CTA_PROTO_SRC_PORT => ports[0] = port(p)?,
                        CTA_PROTO_DST_PORT => ports[1] = port(p)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        src: SocketAddr::new(src?, ports[0]),
        dst: SocketAddr::new(dst?, ports[1]),
        proto,
    })
}

fn ip(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?))),
        _ => None,
    }
}

fn port(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

fn tcp_state(attrs: &[u8]) -> Option<u8> {
    let (_, tcp) = netlink::attributes(attrs).find(|(ty, _)| *ty == CTA_PROTOINFO_TCP)?;
    let (_, state) = netlink::attributes(tcp).find(|(ty, _)| *ty == CTA_PROTOINFO_TCP_STATE)?;
    state.first().copied()
}

/// Network namespaces for tests that need conntrack to follow connections.
#[cfg(test)]
pub(crate) mod testing {
    /// Runs `f` on a thread in a new network namespace whose loopback is
    /// up and whose conntrack follows every connection (an nftables rule
    /// that matches on its state).
    pub fn in_tracked_namespace<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: moves only this thread, which ends with `f`.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
                let run = |cmd: &str, args: &[&str]| {
                    let st = std::process::Command::new(cmd).args(args).status();
                    assert!(st.is_ok_and(|s| s.success()), "{cmd} {args:?}");
                };
                run("ip", &["link", "set", "lo", "up"]);
                run("nft", &["add table inet t"]);
                run(
                    "nft",
                    &["add chain inet t c { type filter hook output priority 0; }"],
                );
                run("nft", &["add rule inet t c ct state new accept"]);
                run(
                    "nft",
                    &["add chain inet t n { type nat hook output priority -100; }"],
                );
                f()
            })
            .join()
            .expect("the namespace's thread")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attribute: its header, payload and padding.
    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        a.extend(ty.to_ne_bytes());
        a.extend(payload);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    fn nested(ty: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(ty | 0x8000, &parts.concat())
    }

    fn tuple_attr(ty: u16, src: [u8; 4], dst: [u8; 4], ports: [u16; 2]) -> Vec<u8> {
        nested(
            ty,
            &[
                nested(
                    CTA_TUPLE_IP,
                    &[attr(CTA_IP_V4_SRC, &src), attr(CTA_IP_V4_DST, &dst)],
                ),
                nested(
                    CTA_TUPLE_PROTO,
                    &[
                        attr(CTA_PROTO_NUM, &[6]),
                        attr(CTA_PROTO_SRC_PORT, &ports[0].to_be_bytes()),
                        attr(CTA_PROTO_DST_PORT, &ports[1].to_be_bytes()),
                    ],
                ),
            ],
        )
    }

    fn message(status: u32, state: u8) -> Vec<u8> {
        [
            tuple_attr(CTA_TUPLE_ORIG, [10, 0, 0, 1], [10, 9, 9, 9], [40000, 80]),
            tuple_attr(CTA_TUPLE_REPLY, [10, 0, 1, 5], [10, 0, 0, 1], [8080, 40000]),
            attr(CTA_STATUS | 0x4000, &status.to_be_bytes()),
            nested(
                CTA_PROTOINFO,
                &[nested(
                    CTA_PROTOINFO_TCP,
                    &[attr(CTA_PROTOINFO_TCP_STATE, &[state])],
                )],
            ),
        ]
        .concat()
    }

    #[test]
    fn reads_a_translated_established_connection() {
        let status = WANTED_STATUS | 1 << 1;
        assert_eq!(
            record(&message(status, ESTABLISHED)),
            Some(Translated {
                client: "10.0.0.1:40000".parse().expect("addr"),
                dialled: "10.9.9.9:80".parse().expect("addr"),
                backend: "10.0.1.5:8080".parse().expect("addr"),
            })
        );
    }

    #[test]
    fn leaves_out_untranslated_unassured_and_closing_connections() {
        let no_dnat = WANTED_STATUS & !(1 << 5);
        let unassured = WANTED_STATUS & !(1 << 2);
        assert_eq!(record(&message(no_dnat, ESTABLISHED)), None);
        assert_eq!(record(&message(unassured, ESTABLISHED)), None);
        // FIN_WAIT.
        assert_eq!(record(&message(WANTED_STATUS, 4)), None);
    }

    /// A connection DNAT sent elsewhere is listed, with where it was
    /// dialled and where it went; one that went where it was dialled is
    /// not.
    #[test]
    fn lists_the_translated_connections_of_this_namespace() {
        let (listed, dnat, plain) = testing::in_tracked_namespace(|| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let server = l.local_addr().expect("addr");
            let rule =
                format!("add rule inet t n ip daddr 127.0.0.9 tcp dport 99 dnat ip to {server}");
            let st = std::process::Command::new("nft").arg(&rule).status();
            assert!(st.is_ok_and(|s| s.success()), "{rule}");
            let dnat = std::net::TcpStream::connect("127.0.0.9:99").expect("connect");
            let plain = std::net::TcpStream::connect(server).expect("connect");
            let listed = translated().expect("ctnetlink answers");
            let addrs = |c: &std::net::TcpStream| c.local_addr().expect("addr");
            (listed, addrs(&dnat), addrs(&plain))
        });
        let server = listed.first().map(|t| t.backend);
        assert_eq!(
            listed,
            vec![Translated {
                client: dnat,
                dialled: "127.0.0.9:99".parse().expect("addr"),
                backend: server.expect("one connection listed"),
            }],
            "only the translated connection, not {plain}"
        );
        assert_eq!(server.map(|s| s.ip()), Some(plain.ip()));
    }
}
