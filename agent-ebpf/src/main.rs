//! evenflow's eBPF programs, one file per hook (see `docs/counting.md`).
//!
//! * [`sockops`]: every TCP socket the node's processes establish, opened
//!   and closed once, its bytes taken from the kernel's own per-socket
//!   counters at close: no per-packet work for local traffic. Its state
//!   sits in a slot found by the socket's address ([`sock`]).
//! * [`reset`]: cgroup_skb ingress notes what every RST reaching a local
//!   socket acknowledged, which sock_ops adds to the bytes it sent.
//! * [`adopt`]: an iterator the agent runs once at start, which adopts the
//!   connections established before sock_ops could see them.
//! * [`sampler`]: iterators over those sockets that the agent runs every
//!   interval, so long-lived connections' bytes appear while they last.
//! * [`tc`]: TC ingress (counting per packet only) notes where each SYN was
//!   going; TC egress returns at
//!   once for local sockets and tracks only forwarded connections whose
//!   destination this node translated (DNAT): a balancing decision.
//!   Connections conntrack follows are one entry each, whose state changes
//!   TC egress journals ([`journal`], [`ct_flow`]); others are counted
//!   packet by packet ([`forward`]).
//! * [`journal`]: where TC egress writes the state changes of connections
//!   conntrack follows, and the drain that applies them to their maps.
//! * [`sweeper`]: iterators over forwarded flows that fold their bytes into
//!   the endpoints and end the ones conntrack forgot (or would have).
//! * [`ct_adopt`]: an iterator the agent runs once at start, which adopts
//!   the forwarded connections conntrack followed before evenflow could.
//!
//! Every program passes every packet on (TCX_NEXT): evenflow observes and
//! never changes what the network does.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod adopt;
mod atomic;
mod conntrack;
mod counters;
mod ct_adopt;
mod ct_flow;
mod forward;
mod journal;
mod kernel;
mod packet;
mod reset;
mod sampler;
mod sock;
mod sockops;
mod sweeper;
mod tc;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
