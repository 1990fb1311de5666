//! Netlink dumps: a request, then every message of the answer handed to
//! the caller, until the kernel says it is done.
//!
//! The socket belongs to the network namespace of the thread that opens
//! it, as `/proc/net` shows the reading thread's.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLMSG_HDRLEN: usize = 16;

/// Sends `request` (a netlink header and its payload) on a `protocol`
/// socket and passes each answering message's type and payload to `each`.
pub fn dump(protocol: i32, request: &[u8], mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
    let fd = open(protocol)?;
    // SAFETY: `request` is a live buffer of the length given.
    let sent = unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is a live buffer of the length given.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if messages(&buf[..n as usize], &mut each)? {
            return Ok(());
        }
    }
}

fn open(protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned to us and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // A dump the kernel never finishes must not stall the agent: after a
    // second the caller gets an error.
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

/// Passes each message of one datagram to `each`; `Ok(true)` at the end
/// of the dump.
fn messages(mut data: &[u8], each: &mut impl FnMut(u16, &[u8])) -> io::Result<bool> {
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a truncated netlink message",
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
            _ => each(ty, &data[NLMSG_HDRLEN..len]),
        }
        // Messages are 4-byte aligned.
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(false)
}

/// The attributes (`struct nlattr`) in `data`: each one's type (its
/// nested and byte-order flags cleared) and payload.
pub fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16::from_ne_bytes([*data.first()?, *data.get(1)?]) as usize;
        let ty = u16::from_ne_bytes([*data.get(2)?, *data.get(3)?]) & 0x3fff;
        let payload = data.get(4..len)?;
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((ty, payload))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_its_errno() {
        let mut msg = vec![0u8; NLMSG_HDRLEN + 4];
        msg[..4].copy_from_slice(&((NLMSG_HDRLEN + 4) as u32).to_ne_bytes());
        msg[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg[NLMSG_HDRLEN..].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        let err = messages(&msg, &mut |_, _| {}).expect_err("an error message");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn reads_attributes_past_their_padding() {
        // A 5-byte attribute padded to 8, then a nested 4-byte one.
        let data = [5, 0, 1, 0, 7, 0, 0, 0, 8, 0, 2, 0x80, 1, 2, 3, 4];
        let got: Vec<_> = attributes(&data).collect();
        assert_eq!(got, vec![(1, &[7u8][..]), (2, &[1, 2, 3, 4][..])]);
        // A length past the end stops the walk.
        assert_eq!(attributes(&[9, 0, 1, 0, 0]).count(), 0);
    }
}
