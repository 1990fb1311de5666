//! The atomic operations counting needs, as BPF instructions: the
//! `bpfel-unknown-none` target has no compare-and-swap in `core`.
//!
//! Counters are written from softirq (TC, most sock_ops callbacks) and from
//! process context (the iterators the agent runs): a plain `+=` on a per-CPU
//! slot could lose an update when one interrupts the other.

use core::ptr::read_volatile;

/// Adds `v` to the `u64` at `p` atomically (`lock xadd`).
///
/// # Safety
/// `p` points into a map value.
#[inline(always)]
pub unsafe fn add(p: *mut u64, v: u64) {
    // SAFETY: per the contract.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {v}",
            p = in(reg) p,
            v = in(reg) v,
            options(nostack, preserves_flags)
        )
    };
}

/// Sets the bits `v` in the `u64` at `p` atomically; returns the bits that
/// were set before, so of CPUs setting the same bit at once exactly one
/// finds it clear.
///
/// # Safety
/// `p` points into a map value.
#[inline(always)]
pub unsafe fn fetch_or(p: *mut u64, v: u64) -> u64 {
    let old: u64;
    // SAFETY: per the contract.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_or((u64 *)({p} + 0), {v})",
            p = in(reg) p,
            v = inout(reg) v => old,
            options(nostack, preserves_flags)
        )
    };
    old
}

/// Compare-and-swap on the `u64` at `p`; returns the value found there.
///
/// # Safety
/// `p` points into a map value.
#[inline(always)]
unsafe fn cmpxchg(p: *mut u64, old: u64, new: u64) -> u64 {
    let found: u64;
    // SAFETY: per the contract.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {new})",
            p = in(reg) p,
            new = in(reg) new,
            inout("r0") old => found,
            options(nostack)
        )
    };
    found
}

/// Raises the high-water mark at `acc` to `target` and returns by how much
/// it rose: zero when it was already there (another CPU folded first), so
/// what two racing folders add sums to exactly `target - start`.
///
/// # Safety
/// `acc` points into a map value.
#[inline(always)]
pub unsafe fn raise_to(acc: *mut u64, target: u64) -> u64 {
    for _ in 0..4 {
        // SAFETY: per the contract.
        let cur = unsafe { read_volatile(acc) };
        if target <= cur {
            return 0;
        }
        // SAFETY: per the contract.
        if unsafe { cmpxchg(acc, cur, target) } == cur {
            return target - cur;
        }
    }
    // Four lost races in a row: the next fold picks up the difference.
    0
}
