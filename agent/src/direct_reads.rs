//! Reading kernel memory without a helper call.
//!
//! TC egress reads `skb->_nfct` and conntrack's record of a forwarded
//! connection at every packet that may change the connection's state.
//! Through `bpf_probe_read_kernel` each read is a call, and on CPUs whose
//! kernel mitigates return-stack attacks (AMD's SRSO "Safe RET", retbleed
//! thunks) every return in it is a dear one. From Linux 6.17 the
//! `bpf_rdonly_cast` kfunc casts any value to read-only memory of type
//! `void`; the verifier replaces the call with a move and the JIT guards
//! each load against faults, so a read is a load.
//!
//! aya cannot relocate kfunc calls, so the object's calls carry
//! [`RDONLY_CAST_CALL`] in place of a helper number, and before aya sees
//! the object this module rewrites each: into the kfunc's call where a
//! probe program shows this kernel takes the cast to `void`, or else into
//! a move (`DIRECT_READS` is then 0, and the verifier never walks the code
//! that would use it).

use std::os::fd::OwnedFd;

use agent_common::RDONLY_CAST_CALL;
use thiserror::Error;

use crate::{
    btf::Btf,
    sys::{CALL, EXIT, KFUNC, LOAD_B, MOV_IMM, MOV_REG, insn, load_xdp},
};

#[derive(Debug, Error)]
pub enum DirectReadsError {
    #[error("the eBPF object is not a 64-bit little-endian ELF file: {0}")]
    Elf(&'static str),
    #[error("the eBPF object holds no call to bpf_rdonly_cast: rebuild agent-ebpf")]
    NoCall,
}

/// `XDP_PASS`.
const XDP_PASS: i32 = 2;
/// `SHF_EXECINSTR`: a section of instructions.
const SHF_EXECINSTR: u64 = 4;

/// How this kernel reads kernel memory for evenflow's programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// Plain loads: `bpf_rdonly_cast` (this BTF id) casts to `void`.
    Direct(i32),
    /// `bpf_probe_read_kernel` calls.
    Helper,
}

impl Reads {
    /// What this kernel offers: the cast where a probe program that casts
    /// its context to `void` and loads from it is accepted. Why not is
    /// returned beside [`Reads::Helper`] for the agent's log.
    pub fn of_kernel(vmlinux: &Btf<'_>) -> (Self, Option<String>) {
        let id = match vmlinux.func_id("bpf_rdonly_cast") {
            Ok(id) => id as i32,
            Err(e) => return (Self::Helper, Some(e.to_string())),
        };
        match probe(id) {
            Ok(_) => (Self::Direct(id), None),
            Err((e, log)) => (
                Self::Helper,
                Some(format!(
                    "the kernel refused bpf_rdonly_cast to void (Linux 6.17 and later take it): {e}: {}",
                    log.trim()
                )),
            ),
        }
    }

    /// The value of the programs' `DIRECT_READS`.
    pub fn flag(self) -> u8 {
        u8::from(matches!(self, Self::Direct(_)))
    }

    /// `object` with every placeholder call rewritten for these reads.
    pub fn patch(self, object: &[u8]) -> Result<Vec<u8>, DirectReadsError> {
        let mut bytes = object.to_vec();
        let mut calls = 0;
        for range in code_sections(object)? {
            for at in range.step_by(8) {
                if bytes[at] == CALL && bytes[at + 1] == 0 && imm(&bytes[at..]) == RDONLY_CAST_CALL
                {
                    bytes[at..at + 8].copy_from_slice(&self.replacement());
                    calls += 1;
                }
            }
        }
        if calls == 0 {
            return Err(DirectReadsError::NoCall);
        }
        Ok(bytes)
    }

    /// The instruction a placeholder call becomes.
    fn replacement(self) -> [u8; 8] {
        let i = match self {
            Self::Direct(id) => insn(CALL, 0, KFUNC, 0, id),
            // `r0 = r1`: what the kfunc's call becomes in the verifier.
            Self::Helper => insn(MOV_REG, 0, 1, 0, 0),
        };
        i.to_bytes()
    }
}

fn imm(insn: &[u8]) -> i32 {
    i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]])
}

/// `bpf_rdonly_cast(ctx, 0)`, then a byte loaded from what it returned.
fn probe(id: i32) -> Result<OwnedFd, (std::io::Error, String)> {
    let prog = [
        insn(MOV_IMM, 2, 0, 0, 0),
        insn(CALL, 0, KFUNC, 0, id),
        insn(LOAD_B, 0, 0, 0, 0),
        insn(MOV_IMM, 0, 0, 0, XDP_PASS),
        insn(EXIT, 0, 0, 0, 0),
    ];
    load_xdp(&prog, c"evenflow_rdcast", None)
}

/// The byte ranges of `elf`'s instruction sections, each a whole number
/// of instructions.
fn code_sections(elf: &[u8]) -> Result<Vec<std::ops::Range<usize>>, DirectReadsError> {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err(DirectReadsError::Elf("bad header"));
    }
    let truncated = || DirectReadsError::Elf("truncated");
    let shoff = u64_at(0x28).ok_or_else(truncated)? as usize;
    let entsize = u16_at(0x3a).ok_or_else(truncated)? as usize;
    let count = u16_at(0x3c).ok_or_else(truncated)? as usize;
    let mut ranges = Vec::new();
    for i in 0..count {
        let sh = shoff + i * entsize;
        let (Some(flags), Some(offset), Some(size)) =
            (u64_at(sh + 8), u64_at(sh + 24), u64_at(sh + 32))
        else {
            return Err(DirectReadsError::Elf("truncated section header"));
        };
        if flags & SHF_EXECINSTR == 0 {
            continue;
        }
        let (start, end) = (offset as usize, (offset + size) as usize);
        if end > elf.len() || size % 8 != 0 {
            return Err(DirectReadsError::Elf("a code section out of bounds"));
        }
        ranges.push(start..end);
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_call_is_rewritten_and_nothing_else() {
        let object = crate::datapath::EBPF_OBJECT;
        for reads in [Reads::Direct(77), Reads::Helper] {
            let patched = reads
                .patch(object)
                .expect("the object has placeholder calls");
            assert_eq!(patched.len(), object.len());
            let changed: Vec<usize> = (0..object.len())
                .filter(|&at| object[at] != patched[at])
                .collect();
            assert!(!changed.is_empty());
            let code = code_sections(object).expect("an ELF object");
            for at in changed {
                let range = code.iter().find(|r| r.contains(&at)).expect("in code");
                let insn = at - (at - range.start) % 8;
                assert_eq!(imm(&object[insn..]), RDONLY_CAST_CALL);
                assert_eq!(patched[insn..insn + 8], reads.replacement());
            }
        }
    }

    #[test]
    fn a_file_that_is_not_elf_is_refused() {
        assert!(matches!(
            Reads::Helper.patch(b"not an object"),
            Err(DirectReadsError::Elf(_))
        ));
    }

    /// Needs root and a kernel of 6.17 or later: this project's CI machine.
    #[test]
    fn this_kernel_takes_the_cast() {
        let blob = std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel has BTF");
        let btf = Btf::parse(&blob).expect("BTF parses");
        let (reads, why) = Reads::of_kernel(&btf);
        assert!(matches!(reads, Reads::Direct(_)), "{why:?}");
    }
}
