//! BPF iterators, attached (with the map they walk, for a map's) and run
//! by reading them. aya 0.14's `Iter::attach` passes no map, so the link
//! is made with a raw `bpf(BPF_LINK_CREATE)` carrying `iter_info`.
//!
//! One `read()` of an iterator visits at most 1,000,000 elements
//! (`MAX_ITER_OBJECTS` in the kernel's `bpf_seq_read`), and fails with
//! `EAGAIN` when it wrote nothing meanwhile: the storage sampler (and its
//! `iter/tcp` walk) never writes, so over more elements than that (a
//! million sockets in storage) the first read fails. The next read goes
//! on from the element after the last visited, so every read here is tried
//! again on `EAGAIN` (and `EINTR`): each element is visited exactly once.

use std::{
    fs::File,
    io::{ErrorKind, Read},
    os::fd::{AsRawFd as _, BorrowedFd, OwnedFd},
};

use crate::sys::bpf_fd;

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

/// `union bpf_iter_link_info` (its `map` member, padded to the union).
#[repr(C)]
struct IterLinkInfo {
    map_fd: u32,
    _rest: [u32; 3],
}

/// The `link_create` member of `union bpf_attr`, padded.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _rest: [u32; 9],
}

/// An attached iterator program.
pub struct MapIter {
    link: OwnedFd,
}

impl MapIter {
    /// Links the loaded iterator program `prog` to `map`.
    pub fn attach(prog: BorrowedFd<'_>, map: BorrowedFd<'_>) -> std::io::Result<Self> {
        let info = IterLinkInfo {
            map_fd: map.as_raw_fd() as u32,
            _rest: [0; 3],
        };
        Self::link(prog, Some(&info))
    }

    /// Links the loaded iterator program `prog`, whose target needs no map
    /// (`iter/tcp`: the sockets of the calling thread's network namespace).
    pub fn attach_target(prog: BorrowedFd<'_>) -> std::io::Result<Self> {
        Self::link(prog, None)
    }

    fn link(prog: BorrowedFd<'_>, info: Option<&IterLinkInfo>) -> std::io::Result<Self> {
        let mut attr = LinkCreateAttr {
            prog_fd: prog.as_raw_fd() as u32,
            target_fd: 0,
            attach_type: BPF_TRACE_ITER,
            flags: 0,
            iter_info: info.map_or(0, |i| i as *const IterLinkInfo as u64),
            iter_info_len: info.map_or(0, |_| std::mem::size_of::<IterLinkInfo>() as u32),
            _rest: [0; 9],
        };
        let link = bpf_fd(BPF_LINK_CREATE, &mut attr)?;
        Ok(Self { link })
    }

    /// Runs the program over every element once (it writes no output).
    pub fn run(&self) -> std::io::Result<()> {
        drain(&mut self.open()?).map(drop)
    }

    /// Runs the program over every element once and returns what it wrote.
    pub fn output(&self) -> std::io::Result<Vec<u8>> {
        drain(&mut self.open()?)
    }

    fn open(&self) -> std::io::Result<File> {
        let mut attr: [u32; 2] = [self.link.as_raw_fd() as u32, 0];
        let fd = bpf_fd(BPF_ITER_CREATE, &mut attr)?;
        Ok(File::from(fd))
    }
}

/// Reads `r` to its end, trying a read again when it fails with `EAGAIN`
/// or `EINTR` (see the module's doc); returns what was read.
/// (`read_to_end` gives up at `EAGAIN`.)
fn drain(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// Answers each read with the next of `reads` (then end of file), as
    /// an iterator's fd does.
    struct Reads(Vec<io::Result<&'static [u8]>>);

    impl Read for Reads {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let b = self.0.remove(0)?;
            buf[..b.len()].copy_from_slice(b);
            Ok(b.len())
        }
    }

    fn err(kind: ErrorKind) -> io::Result<&'static [u8]> {
        Err(io::Error::from(kind))
    }

    #[test]
    fn reads_on_past_eagain_and_eintr() {
        // A million elements visited with nothing written (EAGAIN), then
        // output, EINTR, the rest, the end.
        let mut r = Reads(vec![
            err(ErrorKind::WouldBlock),
            err(ErrorKind::WouldBlock),
            Ok(b"ab"),
            err(ErrorKind::Interrupted),
            Ok(b"c"),
        ]);
        assert_eq!(drain(&mut r).expect("drained"), b"abc");
        assert!(r.0.is_empty(), "every read was made");
    }

    #[test]
    fn other_errors_end_the_read() {
        let mut r = Reads(vec![Ok(b"a"), err(ErrorKind::PermissionDenied), Ok(b"b")]);
        let e = drain(&mut r).expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    }
}
