//! The raw `bpf(2)` calls aya does not make for the agent.

use std::os::fd::{FromRawFd as _, OwnedFd};

/// Runs `bpf(cmd, attr)`; `attr` is the `union bpf_attr` member `cmd`
/// takes, padded as the kernel expects.
pub fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<i64> {
    // SAFETY: `attr` points to `size_of::<A>()` bytes of a bpf_attr member,
    // which the kernel may write back into.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut A).cast::<u8>(),
            size_of::<A>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// Runs a `bpf(2)` command that returns a new descriptor.
pub fn bpf_fd<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: the kernel returned a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
