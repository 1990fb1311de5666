//! The last ingest stage: every agent's state by node name. The registry
//! is sharded and write-locked only when a new node first reports; each
//! agent's state has its own mutex, held by that agent's stream per report
//! and, briefly, by the tick. Ingest therefore never takes a global lock.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Instant,
};

use super::agent::AgentState;

/// Registry shards.
const SHARDS: usize = 32;

/// Global ingest counters.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Reports processed.
    pub reports: AtomicU64,
    /// Reports ignored as replays.
    pub replays: AtomicU64,
    /// Counter resets (epoch changes of a known agent).
    pub resets: AtomicU64,
    /// Reports rejected as invalid.
    pub invalid: AtomicU64,
    /// Endpoints processed.
    pub endpoints: AtomicU64,
    /// Report streams of new agents refused: the registry was full.
    pub refused: AtomicU64,
}

/// A new agent the registry has no room for.
#[derive(Debug, thiserror::Error)]
#[error(
    "this collector follows {max} agents already (--max-agents), so node {node} is refused until one of them is forgotten (silent for --agent-retention): raise --max-agents, or split the fleet over several collectors"
)]
pub struct Full {
    pub max: usize,
    pub node: String,
}

type Shard = RwLock<HashMap<Arc<str>, Arc<Mutex<AgentState>>>>;

/// Every agent that has reported, by node name.
pub struct Registry {
    shards: Vec<Shard>,
    /// Agents known, and how many may be.
    len: AtomicUsize,
    max: usize,
    /// Ingest counters.
    pub counters: IngestCounters,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

fn shard_of(node: &str) -> usize {
    // FNV-1a: cheap, stable.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in node.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h as usize) % SHARDS
}

impl Registry {
    /// A registry that follows at most `max` agents.
    pub fn new(max: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            len: AtomicUsize::new(0),
            max,
            counters: IngestCounters::default(),
        }
    }

    /// The state of `node`, created on first use if there is room.
    pub fn get_or_insert(&self, node: &str) -> Result<Arc<Mutex<AgentState>>, Full> {
        let shard = &self.shards[shard_of(node)];
        if let Some(s) = shard.read().unwrap_or_else(|e| e.into_inner()).get(node) {
            return Ok(s.clone());
        }
        let mut w = shard.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = w.get(node) {
            return Ok(s.clone());
        }
        // Claimed before the insert, so agents new on two shards at once
        // never take the last place both.
        if self.len.fetch_add(1, Relaxed) >= self.max {
            self.len.fetch_sub(1, Relaxed);
            self.counters.refused.fetch_add(1, Relaxed);
            return Err(Full {
                max: self.max,
                node: node.to_owned(),
            });
        }
        let node: Arc<str> = Arc::from(node);
        let state = Arc::new(Mutex::new(AgentState::new(node.clone())));
        w.insert(node, state.clone());
        Ok(state)
    }

    /// Agents known now.
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// Whether it knows no agent.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many agents it follows at most.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Every agent's state handle.
    pub fn all(&self) -> Vec<Arc<Mutex<AgentState>>> {
        let mut v = Vec::new();
        for s in &self.shards {
            v.extend(
                s.read()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned(),
            );
        }
        v
    }

    /// Forgets agents silent for longer than `secs`. Each forgotten state
    /// is marked so, under its lock: a stream still holding it (its agent
    /// paused with the connection open) then looks its agent up again
    /// rather than reporting into a state the tick no longer reads.
    pub fn forget_older_than(&self, now: Instant, secs: f64) -> Vec<Arc<str>> {
        let mut gone = Vec::new();
        for s in &self.shards {
            let mut w = s.write().unwrap_or_else(|e| e.into_inner());
            w.retain(|k, st| {
                // A lock poisoned by a panic elsewhere (which the tick
                // survives) still holds a usable state: aged like any other.
                let mut st = st.lock().unwrap_or_else(|e| e.into_inner());
                let keep = st.age(now) <= secs;
                st.forgotten |= !keep;
                if !keep {
                    gone.push(k.clone());
                }
                keep
            });
        }
        self.len.fetch_sub(gone.len(), Relaxed);
        gone
    }
}
