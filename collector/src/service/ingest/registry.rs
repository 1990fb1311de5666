//! The last ingest stage: every agent's state by node name. The registry
//! is sharded and write-locked only when a new node first reports; each
//! agent's state has its own mutex, held by that agent's stream per report
//! and, briefly, by the tick. Ingest therefore never takes a global lock.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock, atomic::AtomicU64},
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
}

type Shard = RwLock<HashMap<Arc<str>, Arc<Mutex<AgentState>>>>;

/// Every agent that has reported, by node name.
pub struct Registry {
    shards: Vec<Shard>,
    /// Ingest counters.
    pub counters: IngestCounters,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            counters: IngestCounters::default(),
        }
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
    /// The state of `node`, created on first use.
    pub fn get_or_insert(&self, node: &str) -> Arc<Mutex<AgentState>> {
        let shard = &self.shards[shard_of(node)];
        if let Some(s) = shard.read().unwrap_or_else(|e| e.into_inner()).get(node) {
            return s.clone();
        }
        let mut w = shard.write().unwrap_or_else(|e| e.into_inner());
        w.entry(Arc::from(node))
            .or_insert_with_key(|k| Arc::new(Mutex::new(AgentState::new(k.clone()))))
            .clone()
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
        gone
    }
}
