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
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;

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
    let fd = open()?;
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
    // SAFETY: `req` is a plain repr(C) struct, sent as its bytes.
    let sent = unsafe {
        libc::send(
            fd.as_raw_fd(),
            (&raw const req).cast(),
            size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: `buf` is a live buffer of the length given.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if parse(&buf[..n as usize], &mut out)? {
            return Ok(out);
        }
    }
}

fn open() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned to us and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // A dump the kernel never finishes must not stall the counting loop:
    // after a second the caller falls back to /proc.
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: a valid socket and a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Appends the local ends in one datagram of netlink messages; `Ok(true)`
/// at the end of the dump.
fn parse(mut data: &[u8], out: &mut Vec<(IpAddr, u16)>) -> io::Result<bool> {
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a truncated sock_diag message",
            ));
        }
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = data
                    .get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)
                    .map_or(0, |e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]));
                return Err(io::Error::from_raw_os_error(-errno));
            }
            SOCK_DIAG_BY_FAMILY => {
                if let Some(end) = local_end(&data[NLMSG_HDRLEN..len]) {
                    out.push(end);
                }
            }
            _ => {}
        }
        // Messages are 4-byte aligned.
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(false)
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

    #[test]
    fn a_netlink_error_is_its_errno() {
        let mut msg = vec![0u8; NLMSG_HDRLEN + 4];
        msg[..4].copy_from_slice(&((NLMSG_HDRLEN + 4) as u32).to_ne_bytes());
        msg[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg[NLMSG_HDRLEN..].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        let err = parse(&msg, &mut Vec::new()).expect_err("an error message");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }
}
