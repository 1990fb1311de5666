//! Loads evenflow's eBPF object, pins its maps, attaches its programs and
//! reads its counters.
//!
//! Maps are pinned under `<bpffs>/evenflow/<node-name>/`: a restarted agent
//! reuses them and keeps counting from where it was, and agents of different
//! nodes on one machine never share them. Dropping [`Datapath`] detaches every
//! program (TCX links and the cgroup link close with it); the pinned maps stay.

use std::{
    fs::File,
    io::Read as _,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use agent_common::{
    EndpointCounters, EndpointKey, LAYOUT_VERSION, MAX_ENDPOINTS, MAX_FLOWS, META_EPOCH,
    META_LAYOUT, STAT_COUNT, maps,
};
use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap},
    programs::{CgroupAttachMode, SchedClassifier, SockOps, TcAttachType},
};
use tracing::{debug, info};

use crate::cli::EbpfLog;

/// The eBPF object built by `agent/build.rs` (aya-build) from `agent-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// Where and how to attach.
pub struct Config<'a> {
    pub node_name: &'a str,
    pub bpffs: &'a Path,
    pub ifaces: &'a [String],
    pub cgroup: &'a Path,
    pub ebpf_log: EbpfLog,
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
    fn slot(&self, s: agent_common::Stat) -> u64 {
        self.slots[s as usize]
    }

    /// Endpoints the LRU map evicted: inserted minus live (nothing else
    /// deletes endpoints).
    pub fn endpoint_evictions(&self) -> u64 {
        self.slot(agent_common::Stat::EndpointInserted)
            .saturating_sub(self.live_endpoints)
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
    pub fn flow_missing_on_close(&self) -> u64 {
        self.slot(agent_common::Stat::FlowMissingOnClose)
    }
    pub fn unsupported_family(&self) -> u64 {
        self.slot(agent_common::Stat::UnsupportedFamily)
    }
}

/// Capacities, for reporting.
pub const CAPACITY: (u64, u64) = (MAX_ENDPOINTS as u64, MAX_FLOWS as u64);

/// Loaded and attached programs and the maps userspace reads.
pub struct Datapath {
    // Field order matters for drop: links go with `ebpf`.
    endpoints: PerCpuHashMap<MapData, EndpointKey, EndpointCounters>,
    /// A second handle on the pinned endpoint map for batch reads, and the
    /// reader's buffers; `None` once the kernel refused batch lookups.
    batch: std::sync::Mutex<Option<(MapData, crate::batch::Reader)>>,
    stats: PerCpuArray<MapData, u64>,
    epoch: u64,
    pin_dir: PathBuf,
    interfaces: Vec<String>,
    cgroup: PathBuf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    _ebpf: Ebpf,
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
        let level = cfg.ebpf_log.aya_level();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .override_global(aya_log::LEVEL, &level, true)
            .load(EBPF_OBJECT)
            .with_context(|| {
                format!(
                    "loading evenflow's eBPF programs (maps pinned at {}); if the pinned maps come from an \
                     incompatible evenflow version, remove that directory (counters restart at zero)",
                    pin_dir.display()
                )
            })?;
        let logger = if cfg.ebpf_log == EbpfLog::Off {
            None
        } else {
            Some(aya_log::EbpfLogger::init(&mut ebpf).context("initialising eBPF logs (aya-log)")?)
        };

        let mut meta: Array<MapData, u64> = take(&mut ebpf, maps::META)?;
        let epoch = init_meta(&mut meta, &pin_dir)?;

        let sockops: &mut SockOps = program(&mut ebpf, "evenflow_sockops")?;
        sockops
            .load()
            .context("loading evenflow_sockops (sock_ops)")?;
        let cg = File::open(cfg.cgroup)
            .with_context(|| format!("opening cgroup {}", cfg.cgroup.display()))?;
        sockops
            .attach(cg, CgroupAttachMode::Single)
            .with_context(|| format!("attaching sock_ops to cgroup {}", cfg.cgroup.display()))?;
        debug!(cgroup = %cfg.cgroup.display(), "sock_ops attached");

        for (name, side) in [
            ("evenflow_tc_ingress", TcAttachType::Ingress),
            ("evenflow_tc_egress", TcAttachType::Egress),
        ] {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            prog.load()
                .with_context(|| format!("loading {name} (TC)"))?;
            for iface in cfg.ifaces {
                prog.attach(iface, side)
                    .with_context(|| format!("attaching {name} to {iface}"))?;
            }
        }
        info!(
            node = cfg.node_name,
            epoch,
            pins = %pin_dir.display(),
            ifaces = ?cfg.ifaces,
            cgroup = %cfg.cgroup.display(),
            "eBPF programs attached"
        );
        let batch = match (
            MapData::from_pin(pin_dir.join(maps::ENDPOINTS)),
            aya::util::nr_cpus(),
        ) {
            (Ok(m), Ok(n)) => Some((m, crate::batch::Reader::new(n))),
            _ => None,
        };
        Ok(Self {
            batch: std::sync::Mutex::new(batch),
            endpoints: take(&mut ebpf, maps::ENDPOINTS)?,
            stats: take(&mut ebpf, maps::STATS)?,
            epoch,
            pin_dir,
            interfaces: cfg.ifaces.to_vec(),
            cgroup: cfg.cgroup.to_owned(),
            logger,
            _ebpf: ebpf,
        })
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

    /// Reads every endpoint, summing per-CPU values, into `out` (cleared
    /// first), and the stats map. An entry that vanishes between key and
    /// value lookups (LRU eviction) is skipped.
    pub fn read(&self, out: &mut Vec<(EndpointKey, EndpointCounters)>) -> Result<Stats> {
        out.clear();
        let mut batch = self.batch.lock().unwrap_or_else(|p| p.into_inner());
        let batched = match batch.as_mut() {
            Some((map, reader)) => match reader.read(map.fd().as_fd(), out) {
                Ok(()) => true,
                Err(e) => {
                    tracing::info!("batch map lookups unavailable ({e}); reading entry by entry");
                    out.clear();
                    *batch = None;
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
                let mut sum = EndpointCounters::default();
                for c in per_cpu.iter() {
                    sum.accumulate(c);
                }
                out.push((key, sum));
            }
        }
        let mut stats = Stats {
            live_endpoints: out.len() as u64,
            ..Stats::default()
        };
        for (i, slot) in stats.slots.iter_mut().enumerate() {
            let per_cpu = self
                .stats
                .get(&(i as u32), 0)
                .with_context(|| format!("reading EF_STATS[{i}]"))?;
            *slot = per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v));
        }
        Ok(stats)
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("eBPF object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("eBPF object has no program {name}"))?;
    p.try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

/// Reads the epoch of the pinned maps, or starts a new one when they were
/// just created, and refuses maps pinned with another layout.
fn init_meta(meta: &mut Array<MapData, u64>, pin_dir: &Path) -> Result<u64> {
    let layout = meta
        .get(&META_LAYOUT, 0)
        .context("reading EF_META layout")?;
    let epoch = meta.get(&META_EPOCH, 0).context("reading EF_META epoch")?;
    match layout {
        0 => {}
        LAYOUT_VERSION => {
            if epoch != 0 {
                info!(epoch, "reusing pinned counters");
                return Ok(epoch);
            }
        }
        other => bail!(
            "maps pinned at {} have layout {other}, this agent needs {LAYOUT_VERSION}: \
             remove that directory (counters restart at zero)",
            pin_dir.display()
        ),
    }
    let epoch = new_epoch()?;
    meta.set(META_EPOCH, epoch, 0)
        .context("writing EF_META epoch")?;
    meta.set(META_LAYOUT, LAYOUT_VERSION, 0)
        .context("writing EF_META layout")?;
    info!(epoch, "new counters (epoch started)");
    Ok(epoch)
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
