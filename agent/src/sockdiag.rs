//! Socket dumps over `NETLINK_SOCK_DIAG`, filtered by state in the kernel.
//!
//! `/proc/net/tcp` formats every socket of the namespace, TIME_WAIT ones
//! included, as text: about 10 ms a read with 10,000 closed connections
//! lingering, every interval, for the few listeners the agent wants. A
//! dump asking for listeners only walks the kernel's listening hash.
//!
//! The socket belongs to the network namespace of the thread that opens
//! it, as `/proc/net` shows the reading thread's.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::netlink::{self, NLM_F_DUMP, NLM_F_REQUEST};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// `struct inet_diag_sockid`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    cookie: [u32; 2],
}

/// `struct nlmsghdr` followed by `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    len: u32,
    ty: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// Offsets in `struct inet_diag_msg` (after the netlink header).
const MSG_FAMILY: usize = 0;
const MSG_SPORT: usize = 4;
const MSG_SRC: usize = 8;
const MSG_LEN: usize = 72;

/// The local address and port of every `protocol` socket of `family`
/// (`AF_INET`/`AF_INET6`) whose state is in `states` (a bit per TCP state
/// number, as `idiag_states`).
pub fn local_ends(family: u8, protocol: u8, states: u32) -> io::Result<Vec<(IpAddr, u16)>> {
    let req = Request {
        len: size_of::<Request>() as u32,
        ty: SOCK_DIAG_BY_FAMILY,
        flags: NLM_F_REQUEST | NLM_F_DUMP,
        seq: 1,
        family,
        protocol,
        states,
        ..Request::default()
    };
    // SAFETY: `req` is a plain repr(C) struct without padding, sent as its
    // bytes.
    let bytes =
        unsafe { std::slice::from_raw_parts((&raw const req).cast::<u8>(), size_of::<Request>()) };
    let mut out = Vec::new();
    netlink::dump(NETLINK_SOCK_DIAG, bytes, |ty, msg| {
        if ty == SOCK_DIAG_BY_FAMILY
            && let Some(end) = local_end(msg)
        {
            out.push(end);
        }
    })?;
    Ok(out)
}

/// The local address and port of one `inet_diag_msg`.
fn local_end(msg: &[u8]) -> Option<(IpAddr, u16)> {
    if msg.len() < MSG_LEN {
        return None;
    }
    let port = u16::from_be_bytes([msg[MSG_SPORT], msg[MSG_SPORT + 1]]);
    let src = &msg[MSG_SRC..MSG_SRC + 16];
    let addr = match i32::from(msg[MSG_FAMILY]) {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3])),
        libc::AF_INET6 => {
            let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(src).ok()?);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some((addr, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTEN: u32 = 1 << 10;

    #[test]
    fn finds_a_listener_of_this_namespace() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let ends = local_ends(libc::AF_INET as u8, libc::IPPROTO_TCP as u8, LISTEN)
            .expect("sock_diag answers");
        assert!(
            ends.contains(&(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
            "{ends:?}"
        );
    }

    #[test]
    fn leaves_out_other_states() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (_s, _) = l.accept().expect("accept");
        let ends = local_ends(libc::AF_INET as u8, libc::IPPROTO_TCP as u8, LISTEN)
            .expect("sock_diag answers");
        // The listener once, not its established child on the same port.
        assert_eq!(ends.iter().filter(|e| e.1 == port).count(), 1, "{ends:?}");
    }
}
