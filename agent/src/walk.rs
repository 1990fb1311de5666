//! Walks over a map: a TC program that is never attached, run with
//! `BPF_PROG_TEST_RUN`, which visits every element with
//! `bpf_for_each_map_elem` (the samplers and sweepers in
//! `agent-ebpf/src/{sampler,sweeper}.rs`).
//!
//! Not a map-element iterator (`iter/bpf_map_elem`): some hardened
//! kernels refuse those outright (EPERM at load), and a walk needs nothing
//! an attached TC program does not already have.

use std::os::fd::{AsFd as _, OwnedFd};

use anyhow::{Context as _, Result};
use aya::{Ebpf, programs::SchedClassifier};

/// A loaded walk.
pub struct Walk {
    name: &'static str,
    prog: OwnedFd,
}

impl Walk {
    /// Loads the walk program `name` from `ebpf`.
    pub fn load(ebpf: &mut Ebpf, name: &'static str) -> Result<Self> {
        // A test switch: a build whose walk the kernel refuses.
        if std::env::var("EVENFLOW_TEST_REFUSE_LOAD").is_ok_and(|refused| refused == name) {
            anyhow::bail!("loading {name}: refused (EVENFLOW_TEST_REFUSE_LOAD, a test switch)");
        }
        let prog: &mut SchedClassifier = crate::datapath::program(ebpf, name)?;
        prog.load()
            .with_context(|| format!("loading {name} (a walk over a map, run as a TC program)"))?;
        let fd = prog
            .fd()
            .with_context(|| format!("{name} has no fd"))?
            .as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("duplicating {name}'s fd"))?;
        Ok(Self { name, prog: fd })
    }

    /// Visits every element once; returns what the program returned.
    pub fn run(&self) -> Result<u32> {
        // The program reads no packet; the kernel wants at least an
        // Ethernet header's worth to build one.
        let packet = [0u8; 64];
        let mut out = [0u8; 64];
        crate::sys::test_run(self.prog.as_fd(), &packet, &mut out)
            .with_context(|| format!("running {}", self.name))
    }
}
