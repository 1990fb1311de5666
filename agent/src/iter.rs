//! BPF iterators, attached (with the map they walk, for a map's) and run
//! by reading them. aya 0.14's `Iter::attach` passes no map, so the link
//! is made with a raw `bpf(BPF_LINK_CREATE)` carrying `iter_info`.

use std::{
    fs::File,
    io::Read as _,
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
        let mut sink = [0u8; 64];
        let mut f = self.open()?;
        while f.read(&mut sink)? != 0 {}
        Ok(())
    }

    /// Runs the program over every element once and returns what it wrote.
    pub fn output(&self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open()?.read_to_end(&mut out)?;
        Ok(out)
    }

    fn open(&self) -> std::io::Result<File> {
        let mut attr: [u32; 2] = [self.link.as_raw_fd() as u32, 0];
        let fd = bpf_fd(BPF_ITER_CREATE, &mut attr)?;
        Ok(File::from(fd))
    }
}
