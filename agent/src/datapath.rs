//! Loads evenflow's eBPF object, pins its maps, attaches its programs and
//! reads its counters.
//!
//! Maps are pinned under `<bpffs>/evenflow/<node-name>/`: a restarted agent
//! reuses them and keeps counting from where it was, and agents of different
//! nodes on one machine never share them. Maps pinned by an agent with
//! another layout are removed and a new epoch starts (the collector sees one
//! reset, never a crash loop). Links are pinned too (see [`crate::links`]):
//! dropping [`Datapath`], or the agent dying, leaves every program attached
//! and counting.
//!
//! At start, once sock_ops is attached, the adoption iterator counts the
//! connections established before it (see [`crate::adopt`]).
//!
//! Before each read the iterators run: the socket samplers (bytes of live
//! local connections, in slots and in socket storage) and the flow
//! sweepers of the maps this agent keeps forwarded connections in (their
//! bytes; the end of those gone; young connections that settled move).

use std::{
    fs::File,
    io::Read as _,
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use agent_common::{
    EndpointCounters, EndpointKey, META_EPOCH, META_LAYOUT, META_TIMEOUT_CLOSING_NS,
    META_TIMEOUT_ESTABLISHED_NS, META_TIMEOUT_SYN_NS, STAT_COUNT, maps,
};
use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, Iter, SchedClassifier, SockOps,
        TcAttachType, links::FdLink,
    },
};
use tracing::{debug, info, warn};

use crate::{
    changes::{Changes, Coverage},
    cli::{EbpfLog, SocketSampling},
    ct_adopt::Translations,
    ctnetlink::Translated,
    direct_reads::Reads,
    iter::MapIter,
    journal::{Drains, Journal},
    walk::Walk,
};

/// The eBPF object built by `agent/build.rs` (aya-build) from `agent-ebpf`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// Where and how to attach.
pub struct Config<'a> {
    pub node_name: &'a str,
    pub bpffs: &'a Path,
    pub ifaces: &'a [String],
    pub cgroup: &'a Path,
    pub ebpf_log: EbpfLog,
    /// Forwarded connections the flow map is created for (`--max-flows`).
    pub max_flows: u32,
    /// Endpoints the endpoint map is created for (`--max-endpoints`).
    pub max_endpoints: u32,
    /// Socket slots `EF_SOCK_SLOTS` is created with (`--sock-slots`).
    pub sock_slots: u32,
    /// How open sockets are sampled (`--socket-sampling`).
    pub socket_sampling: SocketSampling,
    /// Count forwarded connections per packet even where conntrack follows
    /// them (`--forwarded-per-packet`).
    pub forwarded_per_packet: bool,
    /// Read kernel memory through `bpf_probe_read_kernel` even where the
    /// kernel lets the programs load it (`--probe-reads`): the older
    /// kernels' way, kept testable on a newer one.
    pub probe_reads: bool,
}

/// What one retirement pass did (see [`Datapath::retire`]).
#[derive(Debug, Default)]
pub struct Retired {
    /// The endpoints no longer in the map.
    pub gone: Vec<EndpointKey>,
    /// Of those, the ones this pass took out, counted in
    /// `endpoints_retired`.
    pub removed: u64,
    /// Endpoints a program counted anew while they were out, their
    /// counters added back: in `endpoints_retired` too (the program's
    /// insert counted one more), still in the map.
    pub merged: u64,
    /// Whether `removed` and `merged` went into `EF_STATS`.
    pub recorded: bool,
}

/// Datapath accounting read from `EF_STATS`, plus what userspace derives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Cumulative values per `agent_common::Stat` slot, summed over CPUs.
    pub slots: [u64; STAT_COUNT as usize],
    /// Endpoints in the kernel map at the last read.
    pub live_endpoints: u64,
}

impl Stats {
    pub fn slot(&self, s: agent_common::Stat) -> u64 {
        self.slots[s as usize]
    }

    /// Takes in what a retirement after the read did, so that the
    /// interval's report counts the map as it leaves it.
    pub fn note_retired(&mut self, r: &Retired) {
        self.live_endpoints = self.live_endpoints.saturating_sub(r.removed);
        if r.recorded {
            self.slots[agent_common::Stat::EndpointRetired as usize] += r.removed + r.merged;
        }
    }

    /// Forwarded connections tracked now: registered minus ended (each
    /// registration and each end counts one connection, two map entries).
    pub fn live_flows(&self) -> u64 {
        self.slot(agent_common::Stat::FlowInserted)
            .saturating_sub(self.slot(agent_common::Stat::FlowDeleted))
    }

    /// Endpoints that vanished from the map: inserted minus live, less
    /// the ones the agent retired (the map is not LRU and nothing else
    /// deletes endpoints, so this stays zero unless something outside
    /// evenflow edits its pinned map).
    pub fn endpoint_evictions(&self) -> u64 {
        self.slot(agent_common::Stat::EndpointInserted)
            .saturating_sub(self.live_endpoints)
            .saturating_sub(self.slot(agent_common::Stat::EndpointRetired))
    }

    pub fn packets_unparsable(&self) -> u64 {
        self.slot(agent_common::Stat::PacketUnparsable)
    }
    pub fn endpoint_insert_failed(&self) -> u64 {
        self.slot(agent_common::Stat::EndpointInsertFailed)
    }
    pub fn flow_insert_failed(&self) -> u64 {
        self.slot(agent_common::Stat::FlowInsertFailed)
    }
    pub fn endpoint_insert_no_memory(&self) -> u64 {
        self.slot(agent_common::Stat::EndpointNoMemory)
    }
    pub fn flow_insert_no_memory(&self) -> u64 {
        self.slot(agent_common::Stat::FlowNoMemory)
    }
    pub fn flow_missing_on_close(&self) -> u64 {
        self.slot(agent_common::Stat::FlowMissingOnClose)
    }
    pub fn unsupported_family(&self) -> u64 {
        self.slot(agent_common::Stat::UnsupportedFamily)
    }
}

/// Logs a warning for each loss counter that grew between two reads: what
/// the datapath could not count must not stay silent until someone reads
/// `/metrics`. The endpoint and flow maps are not preallocated, so an
/// insert fails either because the map is full or because the kernel could
/// not allocate the entry; the programs count the second apart, and each
/// cause gets its own warning with its own fix.
pub fn warn_new_losses(prev: &Stats, now: &Stats, capacity: Capacity, marks: &mut FullMarks) {
    for (lost, what) in new_losses(prev, now, marks) {
        if lost > 0 {
            tracing::warn!(
                lost,
                capacity = ?capacity,
                live_flows = now.live_flows(),
                live_endpoints = now.live_endpoints,
                "{what}"
            );
        }
    }
}

/// What each loss counter gained between two reads, with what to say of it.
fn new_losses(prev: &Stats, now: &Stats, marks: &mut FullMarks) -> Vec<(u64, &'static str)> {
    use agent_common::Stat;
    let grew = |s: Stat| now.slot(s).saturating_sub(prev.slot(s));
    let refused_full =
        |s: &Stats, failed, no_memory| s.slot(failed).saturating_sub(s.slot(no_memory));
    let mut losses = Vec::new();
    for (mark, failed, no_memory, full, memory) in [
        (
            &mut marks.flow,
            Stat::FlowInsertFailed,
            Stat::FlowNoMemory,
            "the flow map is full: forwarded connections were not counted (raise --max-flows)",
            "the kernel could not allocate flow map entries: forwarded connections were not \
             counted (the maps' memory is charged to the cgroup of the agent that created \
             them: raise the agent's memory limit)",
        ),
        (
            &mut marks.endpoint,
            Stat::EndpointInsertFailed,
            Stat::EndpointNoMemory,
            "the endpoint map is full: new endpoints were not counted (raise --max-endpoints; \
             or lower --retire-idle-after, if the map holds endpoints long gone: only those \
             idle for it are retired)",
            "the kernel could not allocate endpoints' counters: new endpoints were not \
             counted (the maps' memory is charged to the cgroup of the agent that created \
             them: raise the agent's memory limit)",
        ),
    ] {
        let before = (*mark).max(refused_full(prev, failed, no_memory));
        let so_far = refused_full(now, failed, no_memory);
        *mark = before.max(so_far);
        losses.push((so_far.saturating_sub(before), full));
        losses.push((grew(no_memory), memory));
    }
    losses.push((
        grew(Stat::SockStorageFailed),
        "sockets could not get evenflow's storage (memory pressure): not counted",
    ));
    losses.push((
        grew(Stat::ReplyUnseen),
        "forwarded connections were counted without their bytes: their backends' SYN-ACKs \
         left through a device the agent is not attached to (give --iface every device \
         forwarded connections leave through, both ways, or drop --iface to attach to all; \
         if journal_lost grew too, the journal lost them instead)",
    ));
    losses
}

/// The most inserts each map refused for being full (refused less refused
/// for want of memory) that the agent has read. A program counts a
/// refusal for want of memory in both slots, one after the other, and the
/// agent reads them one after the other too: one counted between the two
/// reads shows in one slot a read before the other, and read as deltas,
/// the next interval would take it for a full map.
#[derive(Debug, Default)]
pub struct FullMarks {
    flow: u64,
    endpoint: u64,
}

/// What the pinned maps can hold, as created (a restart with another
/// `--max-flows` keeps the pinned map and its size).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Endpoints.
    pub endpoints: u64,
    /// Forwarded connections.
    pub flows: u64,
}

/// Loaded and attached programs and the maps userspace reads.
pub struct Datapath {
    // Field order matters for drop: links go with `ebpf`.
    endpoints: PerCpuHashMap<MapData, EndpointKey, EndpointCounters>,
    /// A second handle on the pinned endpoint map for batch reads, and the
    /// reader's buffers; `None` once the kernel refused batch lookups.
    batch: std::sync::Mutex<Option<(MapData, crate::batch::Reader)>>,
    /// Which endpoints were counted since the last reading.
    changes: Changes,
    stats: PerCpuArray<MapData, u64>,
    capacity: Capacity,
    epoch: u64,
    pin_dir: PathBuf,
    /// The pin directory's lock, held while this agent lives.
    _lock: std::fs::File,
    /// The interfaces the TC programs are on, and each one's index.
    interfaces: Vec<String>,
    ifindexes: std::collections::HashMap<String, u32>,
    /// Interfaces wanted that could not be attached to (warned once).
    unattached: std::collections::HashSet<String>,
    cgroup: PathBuf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// The socket slot sampler, run before every read unless a walk
    /// samples sockets.
    slot_sampler: Walk,
    /// Whether a walk over every network namespace's sockets samples them
    /// (`--socket-sampling walk`), which then carry no state until it does.
    walk: bool,
    /// The socket storage sampler, run before every read.
    storage_sampler: Option<StorageSampler>,
    /// Whether the storage sampler's walk was said not to reach other
    /// network namespaces.
    unreached_said: std::sync::atomic::AtomicBool,
    /// The journal's drains (where conntrack is followed); the agent's runs
    /// before every read and before the sweepers: it starts and ends the
    /// connections TC egress journaled since.
    drain: Option<Drains>,
    /// The flow sweepers, one per map of forwarded connections, run before
    /// every read while a connection is tracked.
    sweepers: Vec<Walk>,
    /// Whether the node forwards.
    forwards: bool,
    /// Whether idle endpoints are retired (until the kernel refuses).
    retiring: bool,
    /// Whether forwarded connections are followed in conntrack's record,
    /// which tells where their SYNs were headed: TC ingress, which notes
    /// that otherwise, is then not needed.
    conntrack: bool,
    /// Pins this agent keeps (sock_ops, and TC per interface).
    pinned: Vec<String>,
    links_dir: PathBuf,
    ebpf: Ebpf,
}

impl Datapath {
    /// Loads the object with maps pinned under the node's directory and
    /// attaches sock_ops to the cgroup and TC ingress/egress to each interface.
    pub fn attach(cfg: &Config<'_>) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this evenflow-agent was built with AYA_BUILD_SKIP and embeds no eBPF object: rebuild it after `cargo xtask setup`"
            );
        }
        let pin_dir = cfg.bpffs.join("evenflow").join(cfg.node_name);
        std::fs::create_dir_all(&pin_dir)
            .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
        let lock = lock_pin_dir(&pin_dir)?;
        let kernel = kernel_offsets(cfg.forwarded_per_packet, cfg.probe_reads)?;
        let walk = walk_sampling(cfg.socket_sampling, kernel.adopt)?;
        let layout = crate::layout::version(kernel.conntrack, walk);
        let aside = crate::layout::Aside::other_layout(&pin_dir, layout)?;
        let sock_slots = sock_slots(&pin_dir, cfg.sock_slots);
        let sock_slots_mask = sock_slots - 1;
        let level = cfg.ebpf_log.aya_level();
        let walk_flag = u8::from(walk);
        let flows = FlowMap::of(kernel.conntrack);
        let journal = Journal::of(kernel.conntrack, &pin_dir)?;
        let mut loader = EbpfLoader::new();
        for (map, entries) in flows.sizes(cfg.max_flows) {
            loader.map_max_entries(map, entries);
        }
        journal.configure(&mut loader);
        loader
            .default_map_pin_directory(&pin_dir)
            .map_max_entries(maps::ENDPOINTS, cfg.max_endpoints)
            .map_max_entries(maps::SOCK_SLOTS, sock_slots)
            .override_global("SOCK_SLOTS_MASK", &sock_slots_mask, true)
            .override_global("WALK_SAMPLING", &walk_flag, true)
            .override_global(aya_log::LEVEL, &level, true);
        for (name, off) in &kernel.offsets {
            loader.override_global(name, off, true);
        }
        let object = kernel
            .reads
            .prepare(&mut loader, EBPF_OBJECT)
            .context("preparing the eBPF object's reads of kernel memory")?;
        let cgroup_id = crate::adopt::cgroup_id(cfg.cgroup)?;
        loader.override_global("ADOPT_CGROUP_ID", &cgroup_id, true);
        let mut ebpf = loader.load(&object).with_context(|| {
            format!(
                "loading evenflow's eBPF programs (maps pinned at {})",
                pin_dir.display()
            )
        })?;
        let logger = if cfg.ebpf_log == EbpfLog::Off {
            None
        } else {
            Some(aya_log::EbpfLogger::init(&mut ebpf).context("initialising eBPF logs (aya-log)")?)
        };

        let mut meta: Array<MapData, u64> = take(&mut ebpf, maps::META)?;
        let (epoch, fresh) = init_meta(&mut meta, layout)?;
        write_flow_timeouts(&mut meta)?;
        let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
        let translations = translations(kernel.conntrack);
        let adoption = kernel.adopt.then(|| {
            note_local_nat(&mut ebpf, &mut meta, &translations.local);
            crate::adopt::attach(&mut ebpf, &btf)
        });

        let links_dir = crate::links::dir(&pin_dir);
        std::fs::create_dir_all(&links_dir)
            .with_context(|| format!("creating {}", links_dir.display()))?;
        // Every program is loaded, and so verified, before the first is
        // swapped into a pinned link: a build the kernel refuses exits
        // leaving the programs pinned before it counting, not half of them
        // replaced by its own.
        let resets_loaded = load_linked(&mut ebpf)?;
        let slot_sampler = Walk::load(&mut ebpf, "evenflow_slot_sampler")?;
        let drain = journal.load_drains(&mut ebpf)?;
        let sweepers = flows
            .maps
            .iter()
            .map(|(_, sweeper)| Walk::load(&mut ebpf, sweeper))
            .collect::<Result<Vec<_>>>()?;
        if let Some(aside) = aside {
            aside.retire()?;
        }
        // Open sockets may carry the callbacks of programs whose counters
        // are gone (another layout's, or an install since removed): where
        // a walk samples sockets, they are adopted into this epoch first
        // (see `adopt_before_attaching`).
        if walk && fresh {
            adopt_before_attaching(adoption.as_ref(), &mut meta)?;
        }
        let mut pinned = vec![attach_sockops(&mut ebpf, cfg.cgroup, &links_dir)?];
        // A refinement, not a requirement: without it every connection is
        // still counted, and only bytes a resetting peer took unacknowledged
        // are missed.
        match resets_loaded.and_then(|()| attach_resets(&mut ebpf, cfg.cgroup, &links_dir)) {
            Ok(pin) => pinned.push(pin),
            Err(e) => warn!(
                error = format!("{e:#}"),
                "the RST watcher (cgroup_skb ingress) is not attached: a server's sent bytes will miss \
                 what a peer that reset took without acknowledging; it needs cgroup_skb links \
                 (kernel >= 5.7) on the cgroup given by --cgroup"
            ),
        }
        let forwards = crate::host::forwards();
        let ingress = forwards && !kernel.conntrack;
        let mut interfaces = Vec::with_capacity(cfg.ifaces.len());
        for iface in cfg.ifaces {
            match attach_tc_missing(&mut ebpf, &mut pinned, &links_dir, iface, ingress) {
                Ok(()) => interfaces.push(iface.clone()),
                // A pod's veth can go between the listing and the attach:
                // the first interval follows what is there then.
                Err(e) if !crate::host::exists(iface) => {
                    warn!(iface, "the interface went as the agent started: {e:#}");
                }
                Err(e) => return Err(e),
            }
        }
        crate::links::prune(&links_dir, &pinned)?;
        if let Some(drain) = &drain {
            drain.install(&mut ebpf)?;
        }
        let storage_sampler = storage_sampler(&mut ebpf, &btf, &pin_dir, walk)?;
        if let Some(adoption) = adoption {
            adopt(adoption.as_ref());
        }
        if kernel.conntrack && forwards {
            // What the journal holds first: a connection whose SYN is in it
            // is followed already, not one to adopt.
            let adoption = crate::ct_adopt::Adoption::prepare(&mut ebpf);
            let held = drain.as_ref().map(Drains::run).transpose()?;
            adopt_forwarded(adoption, &translations.forwarded);
            drop(held);
        }
        info!(
            node = cfg.node_name,
            epoch,
            pins = %pin_dir.display(),
            ifaces = ?cfg.ifaces,
            forwards,
            conntrack = kernel.conntrack,
            socket_sampling = if walk { "walk" } else { "slots" },
            cgroup = %cfg.cgroup.display(),
            "eBPF programs attached"
        );
        let ncpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("counting the possible CPUs")?;
        let batch = MapData::from_pin(pin_dir.join(maps::ENDPOINTS))
            .ok()
            .map(|m| (m, crate::batch::Reader::new(ncpus)));
        let changed = match ebpf.take_map(maps::CHANGED) {
            Some(aya::maps::Map::Array(m)) => m,
            _ => bail!("the eBPF object has no array map {}", maps::CHANGED),
        };
        let changes = Changes::new(changed.fd().as_fd(), meta, ncpus)?;
        let capacity = Capacity {
            endpoints: max_entries(&pin_dir, maps::ENDPOINTS)?,
            flows: flows
                .maps
                .iter()
                .map(|(map, _)| max_entries(&pin_dir, map))
                .sum::<Result<u64>>()?
                / flows.entries_per_connection,
        };
        if capacity.endpoints != u64::from(cfg.max_endpoints) {
            info!(
                pinned = capacity.endpoints,
                asked = cfg.max_endpoints,
                "the pinned endpoint map keeps its size until the counters start a new epoch"
            );
        }
        if capacity.flows != u64::from(cfg.max_flows) {
            info!(
                pinned = capacity.flows,
                asked = cfg.max_flows,
                "the pinned flow map keeps its size until the counters start a new epoch"
            );
        }
        Ok(Self {
            batch: std::sync::Mutex::new(batch),
            changes,
            capacity,
            endpoints: take(&mut ebpf, maps::ENDPOINTS)?,
            stats: take(&mut ebpf, maps::STATS)?,
            epoch,
            pin_dir,
            _lock: lock,
            interfaces,
            ifindexes: std::collections::HashMap::new(),
            unattached: std::collections::HashSet::new(),
            forwards,
            retiring: true,
            conntrack: kernel.conntrack,
            cgroup: cfg.cgroup.to_owned(),
            logger,
            slot_sampler,
            walk,
            storage_sampler,
            unreached_said: std::sync::atomic::AtomicBool::new(false),
            drain,
            sweepers,
            pinned,
            links_dir,
            ebpf,
        })
    }

    /// Keeps the TC programs on the interfaces in `wanted` (a pod's veth
    /// created after the agent started gets them; a device that went took
    /// its links along), and TC ingress only while the node `forwards`
    /// and conntrack does not tell where SYNs were headed (see
    /// [`tc_programs`]). `indexes`: every interface's index now, by name.
    ///
    /// An interface that cannot be attached to (on a busy node a pod's
    /// veth can go between the listing and the attach) is warned of once
    /// and tried again every interval: a device's trouble never stops the
    /// agent. One deleted and created again under its name (a
    /// StatefulSet's pod, a VLAN recreated) is attached afresh: its links
    /// went with the old device.
    pub fn follow(
        &mut self,
        wanted: &[String],
        indexes: &std::collections::HashMap<String, u32>,
        forwards: bool,
    ) -> Result<()> {
        let replaced = self.note_indexes(indexes);
        if replaced.is_empty() && wanted == self.interfaces.as_slice() && forwards == self.forwards
        {
            return Ok(());
        }
        let ingress = forwards && !self.conntrack;
        if forwards != self.forwards && !self.conntrack {
            info!(
                forwards,
                "IP forwarding changed: TC ingress (where SYNs entering the node were going) follows"
            );
        }
        let mut attached = Vec::with_capacity(wanted.len());
        for iface in wanted {
            let Some(&index) = indexes.get(iface) else {
                self.unattachable(iface, &anyhow!("no such interface now"));
                continue;
            };
            let attach = attach_tc_missing(
                &mut self.ebpf,
                &mut self.pinned,
                &self.links_dir,
                iface,
                ingress,
            );
            if let Err(e) = attach {
                self.unattachable(iface, &e);
                continue;
            }
            if !self.interfaces.contains(iface) || self.unattached.remove(iface) {
                info!(iface, "attached to a new interface");
            }
            self.ifindexes.insert(iface.clone(), index);
            attached.push(iface.clone());
        }
        for gone in self.interfaces.iter().filter(|i| !attached.contains(i)) {
            info!(iface = %gone, "interface gone");
        }
        self.ifindexes.retain(|name, _| attached.contains(name));
        self.unattached.retain(|name| wanted.contains(name));
        self.pinned.retain(|pin| match tc_pin(pin) {
            Some((prog, iface)) => {
                attached.iter().any(|a| a == iface)
                    && tc_programs(ingress).any(|(name, _)| name == prog)
            }
            None => true,
        });
        crate::links::prune(&self.links_dir, &self.pinned)?;
        self.interfaces = attached;
        self.forwards = forwards;
        Ok(())
    }

    /// Records the index of each interface the programs are on, and returns
    /// the ones whose index changed, with their pins forgotten so that they
    /// are attached afresh.
    fn note_indexes(&mut self, indexes: &std::collections::HashMap<String, u32>) -> Vec<String> {
        let mut replaced = Vec::new();
        for iface in &self.interfaces {
            let Some(&now) = indexes.get(iface) else {
                continue;
            };
            match self.ifindexes.get_mut(iface) {
                Some(before) if *before != now => {
                    *before = now;
                    replaced.push(iface.clone());
                }
                Some(_) => {}
                None => {
                    self.ifindexes.insert(iface.clone(), now);
                }
            }
        }
        for iface in &replaced {
            info!(
                iface,
                "interface created again under its name: attaching afresh"
            );
            self.pinned
                .retain(|pin| tc_pin(pin).is_none_or(|(_, on)| on != iface));
        }
        replaced
    }

    /// Warns, once per interface until it is attached, that `iface` could
    /// not be.
    fn unattachable(&mut self, iface: &str, e: &anyhow::Error) {
        if self.unattached.insert(iface.to_owned()) {
            warn!(
                iface,
                "could not attach to the interface (removed as it was listed?); trying again every \
                 interval: {e:#}"
            );
        }
    }

    /// Retires the endpoints `idle` (each with the totals the last read
    /// found) from the endpoint map, as [`crate::retire`] says, and counts
    /// them in `endpoints_retired`.
    pub fn retire(&mut self, idle: &[(EndpointKey, EndpointCounters)]) -> Result<Retired> {
        use crate::retire::Outcome;
        use aya::maps::IterableMap as _;
        let mut done = Retired::default();
        if !self.retiring {
            return Ok(done);
        }
        // What goes back into the map after a retirement is the agent's
        // write, which no program notes.
        self.changes.read_whole_next();
        let ncpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("counting the possible CPUs")?;
        let fd = self.endpoints.map().fd().as_fd();
        for (key, seen) in idle {
            let outcome = match crate::retire::retire(fd, ncpus, key, seen) {
                Ok(outcome) => outcome,
                // The kernel refused to take the entry out (per-CPU hash
                // maps can since 5.14). Not tried again by this process:
                // the map fills as it did before retiring.
                Err(e) => {
                    warn!(
                        ?key,
                        "could not retire an endpoint from EF_ENDPOINTS: {e}; idle endpoints \
                         stay, and new ones are refused once the map is full"
                    );
                    self.retiring = false;
                    break;
                }
            };
            match outcome {
                Outcome::Retired | Outcome::Dropped => {
                    done.removed += 1;
                    done.gone.push(*key);
                }
                // A program inserted it anew, which counted an insert.
                Outcome::Merged => done.merged += 1,
                Outcome::Gone => done.gone.push(*key),
                Outcome::Restored => {
                    debug!(?key, "an endpoint counted as it was retired: kept");
                }
            }
        }
        let counted = done.removed + done.merged;
        done.recorded = counted == 0
            || match self.add_to_stat(agent_common::Stat::EndpointRetired, counted) {
                Ok(()) => true,
                // Out of the map either way: they read as evictions.
                Err(e) => {
                    warn!("counting {counted} retired endpoints in EF_STATS: {e:#}");
                    false
                }
            };
        Ok(done)
    }

    /// Adds `n` to a stats slot only the agent writes.
    fn add_to_stat(&mut self, stat: agent_common::Stat, n: u64) -> Result<()> {
        let index = stat as u32;
        let mut values: Vec<u64> = self
            .stats
            .get(&index, 0)
            .context("reading EF_STATS")?
            .iter()
            .copied()
            .collect();
        if let Some(first) = values.first_mut() {
            *first += n;
        }
        let values = aya::maps::PerCpuValues::try_from(values).context("EF_STATS values")?;
        self.stats.set(index, values, 0).context("writing EF_STATS")
    }

    /// What the pinned maps can hold.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// The epoch of the pinned counters.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The aya-log reader, when kernel logging is on; the caller drives it.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// Reads the endpoints counted since the last reading, or every one
    /// (see [`Changes`]), summing per-CPU values, into `out` (cleared
    /// first), and the stats map. `live`: the endpoints the agent knows of.
    /// `Stats::live_endpoints` is what was read: a reading of changed
    /// endpoints leaves it to the caller.
    pub fn read(
        &mut self,
        out: &mut Vec<(EndpointKey, EndpointCounters)>,
        live: usize,
    ) -> Result<(Stats, Coverage)> {
        out.clear();
        if !self.walk {
            self.slot_sampler.run()?;
        }
        self.sample_storage()?;
        // Held through the sweepers, which must not run beside a drain.
        let held = self.drain.as_ref().map(Drains::run).transpose()?;
        // The sweeper walks every bucket of the flow map, empty or not
        // (--max-flows of them: a fifth of the agent's CPU on a node with
        // 10,000 endpoints and no forwarded connection), so it runs only
        // while there is a flow to fold or expire.
        if self.flows_tracked()? {
            for sweeper in &self.sweepers {
                sweeper.run()?;
            }
        }
        drop(held);
        use aya::maps::IterableMap as _;
        let fd = self.endpoints.map().fd().as_fd();
        let coverage = if self.changes.read(fd, live, out)? {
            Coverage::Changed
        } else {
            let whole = self.read_whole(out);
            if whole.is_err() {
                self.changes.read_whole_next();
            }
            whole?;
            Coverage::Whole
        };
        let stats = self.stats(out.len() as u64);
        if stats.is_err() {
            // This reading fails after its generation advanced: the counts
            // that land late in the one before would not be read again.
            self.changes.read_whole_next();
        }
        Ok((stats?, coverage))
    }

    /// `EF_STATS`, summed over CPUs, with `live` endpoints read.
    fn stats(&self, live: u64) -> Result<Stats> {
        let mut stats = Stats {
            live_endpoints: live,
            ..Stats::default()
        };
        for (i, slot) in stats.slots.iter_mut().enumerate() {
            *slot = self.stat_total(i as u32)?;
        }
        Ok(stats)
    }

    /// Reads every endpoint into `out`: in batches, or entry by entry where
    /// the kernel refuses batches. An entry that vanishes between key and
    /// value lookups (retired) is skipped.
    fn read_whole(&self, out: &mut Vec<(EndpointKey, EndpointCounters)>) -> Result<()> {
        let mut batch = self.batch.lock().unwrap_or_else(|p| p.into_inner());
        let batched = match batch.as_mut() {
            Some((map, reader)) => match reader.read(map.fd().as_fd(), out) {
                Ok(()) => {
                    let failed = reader.streak.succeeded();
                    if failed > 0 {
                        tracing::info!(failed, "batch map lookups work again");
                    }
                    true
                }
                Err(e) if crate::batch::refused(&e) => {
                    tracing::info!("batch map lookups unavailable ({e}); reading entry by entry");
                    out.clear();
                    *batch = None;
                    false
                }
                // Failed this time: this reading goes entry by entry, and
                // the next tries a batch again.
                Err(e) => {
                    if reader.streak.failed() {
                        warn!(
                            "a batch map lookup failed ({e}); reading entry by entry until batches \
                             work again (said once; the reading that finds them working says how \
                             many failed)"
                        );
                    } else {
                        tracing::debug!("a batch map lookup failed again ({e})");
                    }
                    out.clear();
                    false
                }
            },
            None => false,
        };
        drop(batch);
        if !batched {
            for item in self.endpoints.iter() {
                let (key, per_cpu) = match item {
                    Ok(kv) => kv,
                    Err(aya::maps::MapError::KeyNotFound) => continue,
                    Err(e) => return Err(e).context("reading EF_ENDPOINTS"),
                };
                out.push((key, EndpointCounters::sum(per_cpu.iter())));
            }
        }
        Ok(())
    }
}

impl Datapath {
    /// Runs the socket storage sampler: its iterator, or else its walk over
    /// every namespace's TCP sockets once a socket has gone to storage.
    fn sample_storage(&self) -> Result<()> {
        match &self.storage_sampler {
            Some(StorageSampler::Storage(iter)) => {
                iter.run().context("running the socket storage sampler")
            }
            Some(StorageSampler::Sockets(iter))
                if self.walk || self.stat_total(agent_common::Stat::SockInStorage as u32)? > 0 =>
            {
                let walked = crate::adopt::in_each_namespace(|| iter.run())
                    .context("running the socket storage sampler (iter/tcp)")?;
                if let Some(why) = walked.unreachable
                    && !self
                        .unreached_said
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    warn!(
                        error = why,
                        "sockets beyond --sock-slots in other network namespaces (pods') reach their \
                         endpoint at their close only: entering a namespace takes CAP_SYS_ADMIN"
                    );
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Statistic `slot` of `EF_STATS`, summed over the CPUs.
    fn stat_total(&self, slot: u32) -> Result<u64> {
        let per_cpu = self
            .stats
            .get(&slot, 0)
            .with_context(|| format!("reading EF_STATS[{slot}]"))?;
        Ok(per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
    }

    /// Whether the flow map holds any connection: registered minus ended,
    /// as [`Stats::live_flows`] counts them.
    fn flows_tracked(&self) -> Result<bool> {
        let inserted = self.stat_total(agent_common::Stat::FlowInserted as u32)?;
        let deleted = self.stat_total(agent_common::Stat::FlowDeleted as u32)?;
        Ok(inserted.saturating_sub(deleted) != 0)
    }
}

/// The socket slots in force: the pinned map's, which keeps its size until
/// a new epoch, else `asked`.
fn sock_slots(pin_dir: &Path, asked: u32) -> u32 {
    match aya::maps::MapInfo::from_pin(pin_dir.join(maps::SOCK_SLOTS)) {
        Ok(info) if info.max_entries().is_power_of_two() => {
            if info.max_entries() != asked {
                info!(
                    pinned = info.max_entries(),
                    asked,
                    "the pinned socket slots keep their number until the counters start a new epoch"
                );
            }
            info.max_entries()
        }
        _ => asked,
    }
}

/// The `max_entries` the pinned map `name` was created with.
fn max_entries(pin_dir: &Path, name: &str) -> Result<u64> {
    let info = aya::maps::MapInfo::from_pin(pin_dir.join(name))
        .with_context(|| format!("reading the pinned map {name}'s info"))?;
    Ok(u64::from(info.max_entries()))
}

pub fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("eBPF object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("eBPF object has no program {name}"))?;
    p.try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

/// The TC programs and where each attaches.
const TC_PROGRAMS: [(&str, TcAttachType); 2] = [
    ("evenflow_tc_ingress", TcAttachType::Ingress),
    ("evenflow_tc_egress", TcAttachType::Egress),
];

/// The TC programs a node needs: egress always, and `ingress` where the
/// node forwards and conntrack does not follow its connections. Ingress
/// notes where SYNs entering the node were going, which only a forwarded
/// connection ever asks (egress compares it with where the SYN leaves
/// for), and which conntrack's record tells where it has one; otherwise
/// every arriving packet would pay for it for nothing.
fn tc_programs(ingress: bool) -> impl Iterator<Item = (&'static str, TcAttachType)> {
    TC_PROGRAMS
        .into_iter()
        .filter(move |(_, side)| ingress || *side == TcAttachType::Egress)
}

/// Loads the programs that go into pinned links: sock_ops and TC, and the
/// RST watcher, whose refusal is returned (it is optional), not raised.
fn load_linked(ebpf: &mut Ebpf) -> Result<Result<()>> {
    let sockops: &mut SockOps = program(ebpf, "evenflow_sockops")?;
    sockops
        .load()
        .context("loading evenflow_sockops (sock_ops)")?;
    for (name, _) in TC_PROGRAMS {
        let prog: &mut SchedClassifier = program(ebpf, name)?;
        prog.load()
            .with_context(|| format!("loading {name} (TC)"))?;
    }
    let resets: &mut CgroupSkb = program(ebpf, "evenflow_resets")?;
    Ok(resets
        .load()
        .context("loading evenflow_resets (cgroup_skb)"))
}

/// Attaches the loaded sock_ops program to `cgroup`, or adopts the link
/// pinned there (pointing it at this program); returns the pin's name.
fn attach_sockops(ebpf: &mut Ebpf, cgroup: &Path, links_dir: &Path) -> Result<String> {
    let sockops: &mut SockOps = program(ebpf, "evenflow_sockops")?;
    let fd = sockops.fd()?.try_clone()?;
    attach_cgroup("sockops", fd.as_fd(), cgroup, links_dir, |cg| {
        let id = sockops.attach(cg, CgroupAttachMode::Single)?;
        Ok(FdLink::try_from(sockops.take_link(id)?)?)
    })
}

/// Attaches the RST watcher (cgroup_skb ingress) to `cgroup`, or adopts
/// the pinned link already there; returns the pin's name.
fn attach_resets(ebpf: &mut Ebpf, cgroup: &Path, links_dir: &Path) -> Result<String> {
    let resets: &mut CgroupSkb = program(ebpf, "evenflow_resets")?;
    let fd = resets.fd()?.try_clone()?;
    attach_cgroup("resets", fd.as_fd(), cgroup, links_dir, |cg| {
        // A link (what `Single` makes on kernels ≥ 5.7) runs beside whatever
        // else filters this cgroup's packets; evenflow's program passes
        // every packet, so theirs decide.
        let id = resets.attach(cg, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)?;
        Ok(FdLink::try_from(resets.take_link(id)?)?)
    })
}

/// Points the link pinned for program `what` on `cgroup` at `prog`, or
/// attaches it afresh with `attach` and pins the link; returns the pin's
/// name.
fn attach_cgroup(
    what: &str,
    prog: BorrowedFd<'_>,
    cgroup: &Path,
    links_dir: &Path,
    attach: impl FnOnce(File) -> Result<FdLink>,
) -> Result<String> {
    let name = crate::links::cgroup_name(what, cgroup)?;
    let pin = links_dir.join(&name);
    if crate::links::adopt(&pin, prog)? {
        return Ok(name);
    }
    let cg = File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    let link =
        attach(cg).with_context(|| format!("attaching {what} to cgroup {}", cgroup.display()))?;
    pin_link(link, &pin)?;
    debug!(cgroup = %cgroup.display(), what, "attached to the cgroup");
    Ok(name)
}

/// Pins a link so its program outlives the agent.
fn pin_link(link: FdLink, pin: &Path) -> Result<()> {
    link.pin(pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

/// Attaches to `iface` the TC programs (with `ingress` or without) this
/// agent has not attached yet, adding their pins to `pinned`.
fn attach_tc_missing(
    ebpf: &mut Ebpf,
    pinned: &mut Vec<String>,
    links_dir: &Path,
    iface: &str,
    ingress: bool,
) -> Result<()> {
    for (name, side) in tc_programs(ingress) {
        if pinned.contains(&format!("{name}@{iface}")) {
            continue;
        }
        let prog: &mut SchedClassifier = program(ebpf, name)?;
        pinned.push(attach_tc(prog, name, side, iface, links_dir)?);
    }
    Ok(())
}

/// The program and interface of a TC link's pin name (`<program>@<iface>`);
/// `None` for the cgroup links' pins (`<program>@<cgroup inode>`).
fn tc_pin(pin: &str) -> Option<(&str, &str)> {
    pin.split_once('@')
        .filter(|(prog, _)| prog.starts_with("evenflow_tc_"))
}

/// Attaches the TC program `name` to `iface`, or adopts the pinned link
/// already there; returns the pin's name.
fn attach_tc(
    prog: &mut SchedClassifier,
    name: &str,
    side: TcAttachType,
    iface: &str,
    links_dir: &Path,
) -> Result<String> {
    let pin_name = format!("{name}@{iface}");
    let pin = links_dir.join(&pin_name);
    let prog_fd = prog.fd().with_context(|| format!("{name} has no fd"))?;
    if crate::links::adopt(&pin, prog_fd.as_fd())? {
        return Ok(pin_name);
    }
    let id = prog
        .attach(iface, side)
        .with_context(|| format!("attaching {name} to {iface}"))?;
    // TCX links (kernel ≥ 6.6) pin; a netlink (clsact) filter has no link
    // to pin and stays attached by aya for this process's life only.
    match FdLink::try_from(prog.take_link(id)?) {
        Ok(link) => {
            pin_link(link, &pin)?;
        }
        Err(e) => {
            tracing::warn!(iface, error = %e, "TC attached without TCX: it detaches when the agent exits");
        }
    }
    Ok(pin_name)
}

/// Takes the node's pin directory for this agent alone (`flock`): a second
/// agent for the same node, such as a DaemonSet pod surging in before the
/// old one has gone, waits for the first to stop instead of swapping maps
/// and programs under it. The kernel drops the lock with the process,
/// however it ends; the programs keep counting while the second waits.
fn lock_pin_dir(pin_dir: &Path) -> Result<std::fs::File> {
    let dir = std::fs::File::open(pin_dir)
        .with_context(|| format!("opening pin directory {}", pin_dir.display()))?;
    let lock = |how| {
        // SAFETY: flock(2) on a descriptor this function owns.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&dir), how) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    match lock(libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => return Ok(dir),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {}
        Err(e) => return Err(e).with_context(|| format!("locking {}", pin_dir.display())),
    }
    info!(
        pins = %pin_dir.display(),
        "another evenflow-agent runs for this node: waiting for it to stop (its programs go on counting)"
    );
    lock(libc::LOCK_EX).with_context(|| format!("locking {}", pin_dir.display()))?;
    info!("the other agent stopped: taking over");
    Ok(dir)
}

/// Reads the epoch of the pinned maps, or starts a new one when they were
/// just created.
fn init_meta(meta: &mut Array<MapData, u64>, layout: u64) -> Result<(u64, bool)> {
    // An agent stopped during the adoption before the attach leaves the
    // flag raised: the next walk would adopt sockets counted already.
    meta.set(agent_common::META_ADOPT_COUNTED, 0, 0)
        .context("clearing EF_META's adoption flag")?;
    let found = meta
        .get(&META_LAYOUT, 0)
        .context("reading EF_META layout")?;
    let epoch = meta.get(&META_EPOCH, 0).context("reading EF_META epoch")?;
    if found == layout && epoch != 0 {
        info!(epoch, "reusing pinned counters");
        return Ok((epoch, false));
    }
    let epoch = new_epoch()?;
    meta.set(META_EPOCH, epoch, 0)
        .context("writing EF_META epoch")?;
    meta.set(META_LAYOUT, layout, 0)
        .context("writing EF_META layout")?;
    info!(epoch, "new counters (epoch started)");
    Ok((epoch, true))
}

/// How long a forwarded flow may idle in each state before the sweeper
/// ends it: what conntrack allows in this network namespace (its sysctls),
/// or conntrack's defaults where it is not loaded.
fn write_flow_timeouts(meta: &mut Array<MapData, u64>) -> Result<()> {
    for (slot, sysctl, default_s) in [
        (
            META_TIMEOUT_SYN_NS,
            "nf_conntrack_tcp_timeout_syn_sent",
            120,
        ),
        (
            META_TIMEOUT_ESTABLISHED_NS,
            "nf_conntrack_tcp_timeout_established",
            432_000,
        ),
        (
            META_TIMEOUT_CLOSING_NS,
            "nf_conntrack_tcp_timeout_fin_wait",
            120,
        ),
    ] {
        let secs = std::fs::read_to_string(format!("/proc/sys/net/netfilter/{sysctl}"))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(default_s);
        meta.set(slot, secs.saturating_mul(1_000_000_000), 0)
            .with_context(|| format!("writing the {sysctl} timeout to EF_META"))?;
    }
    Ok(())
}

/// The constants the programs take from this kernel's BTF: `struct
/// tcp_sock` offsets for the socket samplers and the adoption,
/// `sk_flags`' for sock_ops, and conntrack's for forwarded
/// connections (all zero when this kernel's BTF has none: see
/// [`conntrack_offsets`]); and how the programs read kernel memory, which
/// a probe program tells (see [`Reads::choose`]).
fn kernel_offsets(per_packet: bool, probe_reads: bool) -> Result<KernelOffsets> {
    let blob = std::fs::read("/sys/kernel/btf/vmlinux")
        .context("reading /sys/kernel/btf/vmlinux (the kernel needs CONFIG_DEBUG_INFO_BTF)")?;
    let btf = crate::btf::Btf::parse(&blob).context("parsing the kernel's BTF")?;
    let reads = Reads::choose(&btf, probe_reads);
    let off = |field: &str| {
        btf.member_offset("tcp_sock", field)
            .with_context(|| format!("finding tcp_sock.{field} in the kernel's BTF"))
    };
    let mut offsets = vec![
        ("TCP_SOCK_BYTES_RECEIVED", off("bytes_received")?),
        ("TCP_SOCK_BYTES_ACKED", off("bytes_acked")?),
        ("TCP_SOCK_SEGS_IN", off("segs_in")?),
        ("TCP_SOCK_SEGS_OUT", off("segs_out")?),
        ("TCP_SOCK_WRITE_SEQ", off("write_seq")?),
        ("TCP_SOCK_FASTOPEN_RSK", off("fastopen_rsk")?),
        ("TCP_SOCK_SND_UNA", off("snd_una")?),
        ("TCP_SOCK_RCV_NXT", off("rcv_nxt")?),
        (
            "SOCK_FLAGS",
            // In `struct sock_common` on newer kernels, `struct sock` before.
            btf.member_offset("sock_common", "skc_flags")
                .or_else(|_| btf.member_offset("sock", "sk_flags"))
                .context("finding sock.sk_flags in the kernel's BTF")?,
        ),
    ];
    let adopt = match crate::adopt::offsets(&btf) {
        Ok(o) => {
            offsets.extend(o);
            true
        }
        Err(e) => {
            warn!(
                "connections established before evenflow first attached will not be counted: {e:#}"
            );
            false
        }
    };
    if per_packet {
        info!("forwarded connections are counted packet by packet (--forwarded-per-packet)");
        return Ok(KernelOffsets {
            offsets,
            conntrack: false,
            adopt,
            reads,
        });
    }
    let conntrack = match conntrack_offsets(&btf) {
        Ok(ct) => {
            offsets.extend(ct);
            true
        }
        Err(e) => {
            info!(
                "forwarded connections are counted packet by packet: {e:#} (load nf_conntrack before the agent to count them from conntrack)"
            );
            false
        }
    };
    Ok(KernelOffsets {
        offsets,
        conntrack,
        adopt,
        reads,
    })
}

/// Of `max_flows` connections conntrack follows, how many `EF_CT_YOUNG`
/// holds: [`CT_YOUNG_ENTRIES`](agent_common::CT_YOUNG_ENTRIES), or half of
/// a smaller `--max-flows`. `EF_CT_FLOWS` holds the rest, so that the two
/// hold `--max-flows` together.
fn young_flows(max_flows: u32) -> u32 {
    (max_flows / 2).min(agent_common::CT_YOUNG_ENTRIES)
}

/// The maps this agent keeps forwarded connections in, each with its
/// sweeper, which `--max-flows` sizes together.
struct FlowMap {
    maps: &'static [(&'static str, &'static str)],
    entries_per_connection: u64,
}

impl FlowMap {
    /// One entry per connection conntrack follows, young or settled; two
    /// halves per connection counted packet by packet.
    fn of(conntrack: bool) -> Self {
        if conntrack {
            Self {
                maps: &[
                    (maps::CT_FLOWS, "evenflow_ct_sweeper"),
                    (maps::CT_YOUNG, "evenflow_ct_young_sweeper"),
                ],
                entries_per_connection: 1,
            }
        } else {
            Self {
                maps: &[(maps::FLOWS, "evenflow_flow_sweeper")],
                entries_per_connection: 2,
            }
        }
    }

    /// Each flow map's entries for `--max-flows`: the maps this agent
    /// keeps connections in share it, and the others, which no program
    /// touches in this layout, get one entry each instead of megabytes of
    /// buckets.
    fn sizes(&self, max_flows: u32) -> [(&'static str, u32); 3] {
        let young = young_flows(max_flows);
        [
            (maps::FLOWS, max_flows.saturating_mul(2)),
            (maps::CT_FLOWS, max_flows - young),
            (maps::CT_YOUNG, young),
        ]
        .map(|(map, entries)| (map, if self.keeps(map) { entries } else { 1 }))
    }

    /// Whether connections are kept in `map`.
    fn keeps(&self, map: &str) -> bool {
        self.maps.iter().any(|(m, _)| *m == map)
    }
}

/// What [`kernel_offsets`] found.
struct KernelOffsets {
    /// The programs' `.rodata` constants, by name.
    offsets: Vec<(&'static str, u32)>,
    /// Whether conntrack's were among them.
    conntrack: bool,
    /// Whether the adoption iterator's were (see [`crate::adopt`]).
    adopt: bool,
    /// How the programs read kernel memory.
    reads: Reads,
}

/// Where conntrack keeps what the forwarded-connection path reads: in the
/// kernel's BTF when conntrack is built in, else in `nf_conntrack`'s
/// module BTF (there only while the module is loaded).
fn conntrack_offsets(vmlinux: &crate::btf::Btf<'_>) -> Result<[(&'static str, u32); 5]> {
    let nfct = vmlinux
        .member_offset("sk_buff", "_nfct")
        .context("the kernel is built without conntrack")?;
    if vmlinux.struct_size("nf_conn").is_ok() {
        return nf_conn_offsets(nfct, vmlinux);
    }
    let blob = std::fs::read("/sys/kernel/btf/nf_conntrack")
        .context("reading /sys/kernel/btf/nf_conntrack (is nf_conntrack loaded?)")?;
    let module =
        crate::btf::Btf::parse_split(&blob, vmlinux).context("parsing nf_conntrack's BTF")?;
    nf_conn_offsets(nfct, &module)
}

fn nf_conn_offsets(nfct: u32, btf: &crate::btf::Btf<'_>) -> Result<[(&'static str, u32); 5]> {
    let off = |s: &str, m: &str| {
        btf.member_offset(s, m)
            .with_context(|| format!("finding {s}.{m} in conntrack's BTF"))
    };
    let size = |s: &str| {
        btf.struct_size(s)
            .with_context(|| format!("finding struct {s} in conntrack's BTF"))
    };
    // The programs read a tuple as two 20-byte halves, an address and its
    // port at byte 16 in each, and the reply's tuple 56 bytes after the
    // original's (see `Man` and `Tuples` in agent-ebpf's conntrack.rs).
    let layout = [
        off("nf_conntrack_man", "u3")?,
        off("nf_conntrack_man", "u")?,
        size("nf_conntrack_man")?,
        off("nf_conntrack_tuple", "src")?,
        off("nf_conntrack_tuple", "dst")?,
        size("nf_conntrack_tuple_hash")?,
    ];
    if layout != [0, 16, 20, 0, 20, 56] {
        bail!(
            "this kernel's conntrack tuple is laid out unlike the one evenflow reads (nf_conntrack_man.u3, .u, its size, nf_conntrack_tuple.src, .dst, the size of nf_conntrack_tuple_hash: {layout:?}, not [0, 16, 20, 0, 20, 56])"
        );
    }
    // Both directions' TCP state are read as one array of 20-byte entries,
    // `td_end` first and the flags at byte 17, with the connection's state
    // right after them (see `TcpTrack` there).
    let seen = [
        off("ip_ct_tcp_state", "td_end")?,
        off("ip_ct_tcp_state", "flags")?,
        size("ip_ct_tcp_state")?,
        off("ip_ct_tcp", "state")?.wrapping_sub(off("ip_ct_tcp", "seen")?),
    ];
    if seen != [0, 17, 20, 40] {
        bail!(
            "this kernel's conntrack TCP state is laid out unlike the one evenflow reads (ip_ct_tcp_state.td_end, .flags, its size, ip_ct_tcp.state after .seen: {seen:?}, not [0, 17, 20, 40])"
        );
    }
    Ok([
        ("SKB_NFCT", nfct),
        ("NF_CONN_STATUS", off("nf_conn", "status")?),
        ("NF_CONN_TIMEOUT", off("nf_conn", "timeout")?),
        (
            "NF_CONN_ORIGINAL_SRC",
            off("nf_conn", "tuplehash")? + off("nf_conntrack_tuple_hash", "tuple")?,
        ),
        (
            "NF_CONN_SEEN",
            // `proto` is a union: its `tcp` member sits at its start.
            off("nf_conn", "proto")? + off("ip_ct_tcp", "seen")?,
        ),
    ])
}

/// How sockets kept in storage (beyond the slots) are sampled.
enum StorageSampler {
    /// An iterator over the storage (`iter/bpf_sk_storage_map`).
    Storage(MapIter),
    /// Where the kernel refuses that iterator: one over each network
    /// namespace's TCP sockets (`iter/tcp`), each one's storage looked up.
    Sockets(MapIter),
}

/// The socket storage sampler: where a walk samples sockets, that walk
/// over each namespace's TCP sockets (it must load); else its iterator
/// where the kernel allows it, else that walk, else none (said once:
/// sockets beyond the slots are then counted at their close only).
fn storage_sampler(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    pin_dir: &Path,
    walk: bool,
) -> Result<Option<StorageSampler>> {
    if walk {
        let fd = load_iter(ebpf, btf, "evenflow_sock_sampler_tcp", "tcp")?;
        let iter = MapIter::attach_target(fd)
            .context("attaching evenflow_sock_sampler_tcp (iter/tcp), which --socket-sampling walk needs: use --socket-sampling slots")?;
        return Ok(Some(StorageSampler::Sockets(iter)));
    }
    Ok(slot_storage_sampler(ebpf, btf, pin_dir))
}

/// The sampler of sockets beyond the slots, see [`storage_sampler`].
fn slot_storage_sampler(ebpf: &mut Ebpf, btf: &aya::Btf, pin_dir: &Path) -> Option<StorageSampler> {
    let refused = match attach_iter(
        ebpf,
        btf,
        "evenflow_sock_sampler",
        "bpf_sk_storage_map",
        pin_dir,
        maps::SOCKS,
    ) {
        Ok(iter) => return Some(StorageSampler::Storage(iter)),
        Err(e) => e,
    };
    let sockets = load_iter(ebpf, btf, "evenflow_sock_sampler_tcp", "tcp").and_then(|fd| {
        MapIter::attach_target(fd).context("attaching evenflow_sock_sampler_tcp (iter/tcp)")
    });
    match sockets {
        Ok(iter) => {
            info!(
                refused = format!("{refused:#}"),
                "this kernel refuses socket storage iterators: sockets beyond --sock-slots are \
                 sampled by walking each network namespace's TCP sockets, once one has gone to storage"
            );
            Some(StorageSampler::Sockets(iter))
        }
        Err(e) => {
            warn!(
                error = format!("{refused:#}; {e:#}"),
                "this kernel refuses socket storage iterators: the bytes of sockets beyond \
                 --sock-slots reach their endpoint at their close only, not every interval; \
                 give the node more slots than it keeps sockets open"
            );
            None
        }
    }
}

/// Loads the iterator program `name` over `kind` maps and links it to the
/// pinned map `map`.
fn attach_iter(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    name: &str,
    kind: &str,
    pin_dir: &Path,
    map: &str,
) -> Result<MapIter> {
    let map_data = MapData::from_pin(pin_dir.join(map))
        .with_context(|| format!("opening the pinned map {map}"))?;
    MapIter::attach(load_iter(ebpf, btf, name, kind)?, map_data.fd().as_fd())
        .with_context(|| format!("attaching {name} to {map}"))
}

/// Loads the iterator program `name` over `kind` (`bpf_map_elem`, `tcp`…).
pub fn load_iter<'a>(
    ebpf: &'a mut Ebpf,
    btf: &aya::Btf,
    name: &str,
    kind: &str,
) -> Result<BorrowedFd<'a>> {
    let prog: &mut Iter = program(ebpf, name)?;
    prog.load(kind, btf)
        .with_context(|| format!("loading {name} (iter/{kind})"))?;
    Ok(prog
        .fd()
        .with_context(|| format!("{name} has no fd"))?
        .as_fd())
}

/// Adopts the connections established before sock_ops was attached. A
/// refinement, not a requirement: without it those connections go
/// uncounted, as they did before evenflow was there.
fn adopt(iter: Result<&MapIter, &anyhow::Error>) {
    let a = match iter
        .map_err(|e| anyhow!("{e:#}"))
        .and_then(crate::adopt::run)
    {
        Ok(a) => a,
        Err(e) => {
            warn!(
                error = format!("{e:#}"),
                "connections established before evenflow attached are not counted"
            );
            return;
        }
    };
    info!(
        adopted = a.sockets,
        namespaces = a.namespaces,
        "connections established before evenflow attached are counted from now on"
    );
    if a.unsupported > 0 {
        warn!(
            left = a.unsupported,
            "connections established before evenflow attached are left uncounted: this kernel \
             cannot give them sock_ops' callbacks (TCP_BPF_SOCK_OPS_CB_FLAGS, Linux 6.12)"
        );
    }
    if let Some(why) = a.unreachable {
        warn!(
            error = why,
            "connections older than the agent in other network namespaces (pods') are not \
             adopted: entering them takes CAP_SYS_ADMIN, and seeing them hostPID"
        );
    }
}

/// Where a walk samples sockets and a new epoch starts: adopts every open
/// socket just before the new programs attach, every other program loaded
/// (see `META_ADOPT_COUNTED`), so that one the programs of a gone epoch
/// counted (another layout's, or an install since removed), and perhaps
/// sampled, counts what it carries from now on, not all it carried. The
/// flag is cleared before the programs attach, or the agent stops (and
/// the next start clears it).
fn adopt_before_attaching(
    adoption: Option<&Result<MapIter>>,
    meta: &mut Array<MapData, u64>,
) -> Result<()> {
    let Some(Ok(iter)) = adoption else {
        return Ok(());
    };
    meta.set(agent_common::META_ADOPT_COUNTED, 1, 0)
        .context("writing EF_META's adoption flag")?;
    match crate::adopt::run(iter) {
        Ok(a) => info!(
            adopted = a.sockets,
            namespaces = a.namespaces,
            "connections open as the counters start a new epoch count from now on"
        ),
        Err(e) => warn!(
            error = format!("{e:#}"),
            "connections open as the counters start a new epoch are counted at their close \
             with all they carried"
        ),
    }
    meta.set(agent_common::META_ADOPT_COUNTED, 0, 0)
        .context("clearing EF_META's adoption flag")
}

/// Whether a walk over every network namespace's sockets samples them
/// (`--socket-sampling walk`): it must enter the namespaces (`setns`,
/// which takes `CAP_SYS_ADMIN`) and read and set a socket's callback flags
/// from the TCP iterator (Linux 6.12), with the socket fields the adoption
/// reads (`offsets`: found in this kernel's BTF).
fn walk_sampling(asked: SocketSampling, offsets: bool) -> Result<bool> {
    if asked == SocketSampling::Slots {
        return Ok(false);
    }
    let kernel = crate::host::kernel_release()
        .ok()
        .and_then(|r| crate::host::kernel_version(&r));
    let why = if !offsets {
        Some("this kernel's BTF lacks socket fields the walk reads".to_owned())
    } else if kernel.is_some_and(|v| v < (6, 12)) {
        Some(
            "the kernel is older than 6.12 (the TCP iterator cannot set callback flags)".to_owned(),
        )
    } else {
        crate::adopt::can_enter_namespaces().err().map(|e| {
            format!("the agent cannot enter network namespaces ({e}): setns takes CAP_SYS_ADMIN")
        })
    };
    match why {
        None => {
            say_whether_namespaces_share_the_table();
            Ok(true)
        }
        Some(why) => bail!(
            "--socket-sampling walk: {why}; give the agent what it lacks, or use \
             --socket-sampling slots (the default)"
        ),
    }
}

/// Warns, where a walk samples sockets, when the namespaces created from
/// this one share its table of established sockets
/// (`net.ipv4.tcp_child_ehash_entries` 0, the kernel's default): the TCP
/// iterator then scans the whole table for each namespace it walks, about
/// 2 ms each interval on a table of 262,144 buckets; with a table of their
/// own (1,024 buckets) it was 0.05 ms (see docs/counting.md, "Sockets
/// sampled by a walk, measured").
fn say_whether_namespaces_share_the_table() {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    if read("tcp_child_ehash_entries") == Some(0) {
        warn!(
            buckets = read("tcp_ehash_entries").map(i64::unsigned_abs),
            "--socket-sampling walk: network namespaces created from this one share its table of \
             established TCP sockets, which the walk scans whole for each of them every interval \
             (about 2 ms each at 262,144 buckets): on a node of many pods set \
             net.ipv4.tcp_child_ehash_entries=1024 before they start, or use --socket-sampling slots"
        );
    }
}

/// Conntrack's translated connections, for the adoptions; none where
/// conntrack is not loaded (asking would load its netlink module, and
/// conntrack with it, on a node that does not use it) or cannot be read (a
/// warning only where the forwarded path follows conntrack).
fn translations(conntrack: bool) -> Translations {
    if !Path::new("/sys/module/nf_conntrack").exists() {
        return Translations::default();
    }
    Translations::list().unwrap_or_else(|e| {
        if conntrack {
            warn!(
                error = format!("{e:#}"),
                "connections this node translated before evenflow attached are not adopted"
            );
        } else {
            debug!(
                error = format!("{e:#}"),
                "conntrack's table is not readable"
            );
        }
        Translations::default()
    })
}

/// Notes where local sockets' SYNs that the node's DNAT redirected before
/// evenflow attached really went, for the socket adoption.
fn note_local_nat(ebpf: &mut Ebpf, meta: &mut Array<MapData, u64>, local: &[Translated]) {
    if let Err(e) = crate::ct_adopt::note_local_nat(ebpf, meta, local) {
        warn!(
            error = format!("{e:#}"),
            "local connections the node's DNAT redirected before evenflow attached count \
             towards the address they dialled"
        );
    }
}

/// Adopts the forwarded connections conntrack followed before evenflow
/// could see their SYN. A refinement, as [`adopt`] is.
fn adopt_forwarded(adoption: Result<crate::ct_adopt::Adoption>, forwarded: &[Translated]) {
    match adoption.and_then(|a| a.run(forwarded)) {
        Ok(a) => {
            info!(
                adopted = a.connections,
                followed = a.followed,
                gone = a.gone,
                "forwarded connections established before evenflow attached are counted from now on"
            );
            if a.full > 0 {
                warn!(
                    left = a.full,
                    "forwarded connections established before evenflow attached are left \
                     uncounted: the flow map is full (--max-flows) or short of memory"
                );
            }
        }
        Err(e) => warn!(
            error = format!("{e:#}"),
            "forwarded connections established before evenflow attached are not counted"
        ),
    }
}

fn new_epoch() -> Result<u64> {
    let mut buf = [0u8; 8];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom for the agent epoch")?;
    // Keep it within 2^53 so JSON consumers that parse numbers as doubles see
    // the exact value; zero means "unset".
    Ok((u64::from_ne_bytes(buf) >> 11).max(1))
}

#[cfg(test)]
mod tests {
    use agent_common::Stat;

    use super::{FullMarks, Stats, new_losses};

    fn stats(flow_failed: u64, flow_no_memory: u64) -> Stats {
        let mut s = Stats::default();
        s.slots[Stat::FlowInsertFailed as usize] = flow_failed;
        s.slots[Stat::FlowNoMemory as usize] = flow_no_memory;
        s
    }

    /// Flow losses (full, short of memory) between consecutive reads.
    fn flow_losses(reads: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut marks = FullMarks::default();
        reads
            .windows(2)
            .map(|w| {
                let l = new_losses(&stats(w[0].0, w[0].1), &stats(w[1].0, w[1].1), &mut marks);
                (l[0].0, l[1].0)
            })
            .collect()
    }

    #[test]
    fn a_refusal_for_want_of_memory_read_between_its_two_slots_is_not_a_full_map() {
        // Three refusals for want of memory: the agent read the failed
        // slot before the third was counted there, and the no-memory slot
        // after.
        assert_eq!(flow_losses(&[(0, 0), (2, 3), (3, 3)]), vec![(0, 3), (0, 0)]);
        // A full map is told as such, once.
        assert_eq!(
            flow_losses(&[(0, 0), (2, 3), (3, 3), (5, 3), (5, 3)]),
            vec![(0, 3), (0, 0), (2, 0), (0, 0)]
        );
    }

    /// The forwarded path reads conntrack's record at offsets from this
    /// kernel's BTF: every one of them is found (conntrack built in, or its
    /// module loaded: `modprobe nf_conntrack`).
    #[test]
    fn finds_this_kernels_conntrack() {
        let blob = std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel has BTF");
        let btf = crate::btf::Btf::parse(&blob).expect("parses");
        let offsets = super::conntrack_offsets(&btf).expect("conntrack's offsets");
        for (name, off) in offsets {
            assert!(off > 0 && off < 1024, "{name} = {off}");
        }
    }

    /// `--max-flows` goes to the maps the layout keeps connections in,
    /// whole; the others get one entry.
    #[test]
    fn max_flows_sizes_only_the_layouts_flow_maps() {
        use agent_common::maps::{CT_FLOWS, CT_YOUNG, FLOWS};
        assert_eq!(
            super::FlowMap::of(true).sizes(131_072),
            [(FLOWS, 1), (CT_FLOWS, 129_024), (CT_YOUNG, 2_048)]
        );
        assert_eq!(
            super::FlowMap::of(true).sizes(32),
            [(FLOWS, 1), (CT_FLOWS, 16), (CT_YOUNG, 16)]
        );
        assert_eq!(
            super::FlowMap::of(false).sizes(131_072),
            [(FLOWS, 262_144), (CT_FLOWS, 1), (CT_YOUNG, 1)]
        );
    }
}
