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
use aya::EbpfLoader;
use thiserror::Error;
use tracing::info;

use crate::{
    btf::{Btf, BtfError},
    sys::{CALL, EXIT, KFUNC, LOAD_B, MOV_IMM, MOV_REG, insn, load_xdp},
};

#[derive(Debug, Error)]
pub enum DirectReadsError {
    #[error(
        "the embedded eBPF object is not a 64-bit little-endian ELF file ({0}): rebuild evenflow-agent, \
         which embeds agent-ebpf (a build with AYA_BUILD_SKIP embeds none)"
    )]
    Elf(&'static str),
    #[error(
        "the embedded eBPF object calls bpf_rdonly_cast's placeholder in an instruction other than a \
         plain call, at byte {0}: the agent cannot rewrite it (agent-ebpf's `kernel::rdonly_cast` \
         must compile to `call`)"
    )]
    Placeholder(usize),
    #[error(
        "the embedded eBPF object holds no call to bpf_rdonly_cast: rebuild evenflow-agent, which \
         embeds agent-ebpf"
    )]
    NoCall,
}

/// Why the programs cannot read kernel memory by loads here.
#[derive(Debug, Error)]
pub enum NoCast {
    #[error("this kernel's BTF names no bpf_rdonly_cast (Linux 6.2 added it): {0}")]
    NoKfunc(#[from] BtfError),
    #[error(
        "the agent may not load a program that calls a kfunc ({0}): it needs CAP_BPF and CAP_PERFMON"
    )]
    NotPermitted(std::io::Error),
    #[error(
        "the kernel refused bpf_rdonly_cast to void, which Linux 6.17 and later take ({0}): {1}"
    )]
    Refused(std::io::Error, String),
}

/// `XDP_PASS`.
const XDP_PASS: i32 = 2;
/// `SHF_EXECINSTR`: a section of instructions.
const SHF_EXECINSTR: u64 = 4;
/// `sizeof(Elf64_Shdr)`.
const SECTION_HEADER: usize = 64;

/// How this kernel reads kernel memory for evenflow's programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// Plain loads: `bpf_rdonly_cast` (this BTF id) casts to `void`.
    Direct(i32),
    /// `bpf_probe_read_kernel` calls.
    Helper,
}

impl Reads {
    /// How the programs read: by loads where this kernel lets them, unless
    /// `probe_reads` (`--probe-reads`). Logged either way.
    pub fn choose(vmlinux: &Btf<'_>, probe_reads: bool) -> Self {
        if probe_reads {
            info!("kernel memory is read through bpf_probe_read_kernel (--probe-reads)");
            return Self::Helper;
        }
        match cast_id(vmlinux) {
            Ok(id) => {
                info!("kernel memory is read by loads (bpf_rdonly_cast)");
                Self::Direct(id)
            }
            Err(e) => {
                info!(
                    "kernel memory is read through bpf_probe_read_kernel, one helper call a read: {e}"
                );
                Self::Helper
            }
        }
    }

    /// Readies `loader` and `object` for these reads together: the
    /// programs' `DIRECT_READS`, and a copy of the object with every
    /// placeholder call rewritten (the two must agree, or the verifier
    /// refuses the code that reads).
    pub fn prepare(
        self,
        loader: &mut EbpfLoader<'_>,
        object: &[u8],
    ) -> Result<Vec<u8>, DirectReadsError> {
        static LOADS: u8 = 1;
        static HELPER: u8 = 0;
        let flag = match self {
            Self::Direct(_) => &LOADS,
            Self::Helper => &HELPER,
        };
        loader.override_global("DIRECT_READS", flag, true);
        self.patch(object)
    }

    /// `object` with every placeholder call rewritten for these reads.
    fn patch(self, object: &[u8]) -> Result<Vec<u8>, DirectReadsError> {
        let mut bytes = object.to_vec();
        let mut calls = 0;
        for range in code_sections(object)? {
            for at in range.step_by(8) {
                if imm(&bytes[at..]) != RDONLY_CAST_CALL {
                    continue;
                }
                if bytes[at] != CALL || bytes[at + 1] != 0 {
                    return Err(DirectReadsError::Placeholder(at));
                }
                bytes[at..at + 8].copy_from_slice(&self.replacement());
                calls += 1;
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

/// `bpf_rdonly_cast`'s BTF id, where a probe program that casts its
/// context to `void` with it and loads from the result is accepted.
fn cast_id(vmlinux: &Btf<'_>) -> Result<i32, NoCast> {
    let id = vmlinux.func_id("bpf_rdonly_cast")? as i32;
    match probe(id) {
        Ok(_) => Ok(id),
        Err((e, _)) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            Err(NoCast::NotPermitted(e))
        }
        Err((e, log)) => {
            let last = log.lines().rev().find(|l| !l.trim().is_empty());
            Err(NoCast::Refused(e, last.unwrap_or_default().to_owned()))
        }
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
    let truncated = || DirectReadsError::Elf("truncated");
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
            .ok_or_else(truncated)
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(|b| u64::from_le_bytes(b) as usize)
            .ok_or_else(truncated)
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err(DirectReadsError::Elf("bad header"));
    }
    let (shoff, entsize, count) = (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?);
    if entsize < SECTION_HEADER {
        return Err(DirectReadsError::Elf("section headers too small"));
    }
    let mut ranges = Vec::new();
    for i in 0..count {
        let sh = shoff.saturating_add(i * entsize);
        if u64_at(sh.saturating_add(8))? as u64 & SHF_EXECINSTR == 0 {
            continue;
        }
        let (start, size) = (
            u64_at(sh.saturating_add(24))?,
            u64_at(sh.saturating_add(32))?,
        );
        if size % 8 != 0 {
            return Err(DirectReadsError::Elf(
                "a code section of part of an instruction",
            ));
        }
        match start.checked_add(size) {
            Some(end) if end <= elf.len() => ranges.push(start..end),
            _ => {
                return Err(DirectReadsError::Elf(
                    "a code section past the end of the file",
                ));
            }
        }
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

    /// Linux 6.17 and later take the cast to `void`; an older kernel
    /// refuses the probe program. Needs root.
    #[test]
    fn the_probe_program_answers_as_the_kernel_version_says() {
        let blob = std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel has BTF");
        let btf = Btf::parse(&blob).expect("BTF parses");
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        let version = crate::host::kernel_version(&release).expect("a kernel release");
        match cast_id(&btf) {
            Ok(_) => assert!(version >= (6, 17), "{release}"),
            Err(e) => assert!(version < (6, 17), "{release}: {e}"),
        }
    }
}
