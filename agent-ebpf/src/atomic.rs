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

/// Clears the bits not in `v` in the `u64` at `p` atomically; returns the
/// bits that were set before.
///
/// # Safety
/// `p` points into a map value.
#[inline(always)]
pub unsafe fn fetch_and(p: *mut u64, v: u64) -> u64 {
    let old: u64;
    // SAFETY: per the contract.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_and((u64 *)({p} + 0), {v})",
            p = in(reg) p,
            v = inout(reg) v => old,
            options(nostack, preserves_flags)
        )
    };
    old
}

/// Adds `v` to the `u64` at `p` atomically; returns the value before, so
/// that of writers adding at once each gets a place of its own.
///
/// # Safety
/// `p` points into a map value.
#[inline(always)]
pub unsafe fn fetch_add(p: *mut u64, v: u64) -> u64 {
    let old: u64;
    // SAFETY: per the contract.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
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
pub unsafe fn cmpxchg(p: *mut u64, old: u64, new: u64) -> u64 {
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

/// Reads the `u64` at `p` as a full barrier (a fetch-or of nothing): the
/// reads after it see at least what the writes before its writer's
/// barrier left.
///
/// # Safety
/// `p` points into a map value.
#[inline(always)]
pub unsafe fn load(p: *mut u64) -> u64 {
    // SAFETY: per the contract.
    unsafe { fetch_or(p, 0) }
}

/// Raises the high-water mark at `acc`, whose top `tag_bits` bits hold a
/// tag (an owner's generation), to `target`, only while it still carries
/// `tag`: returns by how much it rose, zero when it was already there
/// (another CPU folded first), so what racing folders add sums to exactly
/// `target - start`; `None` once it carries another tag (its owner
/// changed since `tag` was read).
///
/// # Safety
/// `acc` points into a map value.
#[inline(always)]
pub unsafe fn raise_tagged(acc: *mut u64, tag: u64, tag_bits: u32, target: u64) -> Option<u64> {
    let shift = 64 - tag_bits;
    let mask = (1u64 << shift) - 1;
    let target = target.min(mask);
    for _ in 0..4 {
        // SAFETY: per the contract.
        let cur = unsafe { read_volatile(acc) };
        if cur >> shift != tag {
            return None;
        }
        let value = cur & mask;
        if target <= value {
            return Some(0);
        }
        // SAFETY: per the contract.
        if unsafe { cmpxchg(acc, cur, tag << shift | target) } == cur {
            return Some(target - value);
        }
    }
    Some(0)
}
