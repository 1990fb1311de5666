//! Lets `agent` name this crate as a build-dependency so cargo rebuilds the
//! embedded eBPF object whenever these sources change. The programs are in
//! `main.rs`.
#![no_std]
