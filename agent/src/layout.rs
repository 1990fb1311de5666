//! Which map layout an agent needs, and what it does with maps an agent
//! of another layout pinned.
//!
//! An agent whose maps differ from the pinned ones starts a new epoch on
//! fresh maps instead of failing: an upgrade on a DaemonSet must never
//! crash-loop. The pinned links stay, and the new programs replace the
//! old ones in them, so counting goes on. Until they do, the old maps are
//! only moved aside: a build the kernel refuses puts them back as it
//! exits, and the old programs, which never stopped counting into them,
//! are found with their counters by the agent that starts next (the
//! previous build, rolled back).

use std::path::{Path, PathBuf};

use agent_common::{LAYOUT_VERSION, META_LAYOUT, maps};
use anyhow::{Context as _, Result};
use aya::maps::{Array, MapData};
use tracing::{info, warn};

/// Where maps of another layout wait while a new build loads, under the
/// node's pin directory.
const ASIDE: &str = "other-layout";

/// The map layout this agent needs, and in its low bit which flow map it
/// keeps forwarded connections in: `EF_CT_FLOWS` when conntrack follows
/// them (0), `EF_FLOWS` when they are counted packet by packet (1). An
/// agent that switches between the two starts a new epoch: connections
/// open across the switch would otherwise sit in the map it no longer
/// sweeps. `EVENFLOW_TEST_LAYOUT_BUMP=N` adds N to the layout, so tests
/// can play an upgrade to an agent built with another.
pub fn version(conntrack: bool) -> u64 {
    let layout = LAYOUT_VERSION
        + std::env::var("EVENFLOW_TEST_LAYOUT_BUMP")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    layout << 1 | u64::from(!conntrack)
}

/// Maps of another layout, moved aside while this agent loads its own.
/// Dropped, it puts them back; [`Aside::retire`] removes them.
pub struct Aside {
    pin_dir: PathBuf,
    armed: bool,
}

impl Aside {
    /// Moves the maps pinned in `pin_dir` aside when they have another
    /// layout than `layout`; `None` when they have this one, or there are
    /// none. Maps an agent that stopped half-way left aside are dealt with
    /// first (see [`recover`]).
    pub fn other_layout(pin_dir: &Path, layout: u64) -> Result<Option<Self>> {
        recover(pin_dir)?;
        let Ok(map) = MapData::from_pin(pin_dir.join(maps::META)) else {
            return Ok(None);
        };
        let found = Array::<MapData, u64>::try_from(aya::maps::Map::Array(map))
            .ok()
            .and_then(|meta| meta.get(&META_LAYOUT, 0).ok());
        if found == Some(layout) {
            return Ok(None);
        }
        info!(
            pins = %pin_dir.display(),
            ?found,
            needed = layout,
            "pinned maps have another layout: counters start a new epoch once this build is loaded"
        );
        let aside = pin_dir.join(ASIDE);
        std::fs::create_dir_all(&aside).with_context(|| format!("creating {}", aside.display()))?;
        if let Err(e) = move_pins(pin_dir, &aside) {
            // Those that moved go back: nothing else was pinned meanwhile.
            let _ = move_pins(&aside, pin_dir);
            return Err(e);
        }
        Ok(Some(Self {
            pin_dir: pin_dir.to_owned(),
            armed: true,
        }))
    }

    /// The new programs are about to replace the old ones: the old maps
    /// go with them.
    pub fn retire(mut self) -> Result<()> {
        self.armed = false;
        let aside = self.pin_dir.join(ASIDE);
        std::fs::remove_dir_all(&aside)
            .with_context(|| format!("removing the old maps at {}", aside.display()))
    }
}

impl Drop for Aside {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match put_back(&self.pin_dir) {
            Ok(()) => info!(
                pins = %self.pin_dir.display(),
                "this build did not load: the maps of the programs still attached are pinned again"
            ),
            Err(e) => warn!(
                pins = %self.pin_dir.display(),
                error = format!("{e:#}"),
                "could not pin the old maps again; the next agent starts a new epoch"
            ),
        }
    }
}

/// Maps an agent left aside when it stopped before it either put them
/// back or retired them (it was killed as it loaded). With no map pinned
/// in their place, they are the ones the attached programs count into:
/// they go back. Otherwise the agent had pinned its own, and they are
/// stale.
fn recover(pin_dir: &Path) -> Result<()> {
    let aside = pin_dir.join(ASIDE);
    if !aside.exists() {
        return Ok(());
    }
    if pin_dir.join(maps::META).exists() {
        info!(pins = %aside.display(), "removing maps of another layout an agent left aside");
        return std::fs::remove_dir_all(&aside)
            .with_context(|| format!("removing {}", aside.display()));
    }
    info!(pins = %aside.display(), "pinning again the maps an agent left aside as it loaded");
    put_back(pin_dir)
}

/// Removes whatever a build pinned before it failed, then moves the maps
/// set aside back.
fn put_back(pin_dir: &Path) -> Result<()> {
    for path in pins(pin_dir)? {
        std::fs::remove_file(&path)
            .with_context(|| format!("removing the new pin {}", path.display()))?;
    }
    let aside = pin_dir.join(ASIDE);
    move_pins(&aside, pin_dir)?;
    std::fs::remove_dir(&aside).with_context(|| format!("removing {}", aside.display()))
}

/// Renames every pinned map in `from` (not the directories: the links'
/// and the aside one) into `to`.
fn move_pins(from: &Path, to: &Path) -> Result<()> {
    for path in pins(from)? {
        let Some(name) = path.file_name() else {
            continue;
        };
        let target = to.join(name);
        std::fs::rename(&path, &target).with_context(|| {
            format!("moving the pin {} to {}", path.display(), target.display())
        })?;
    }
    Ok(())
}

/// The pinned maps in `dir`.
fn pins(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut pins = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if !path.is_dir() {
            pins.push(path);
        }
    }
    Ok(pins)
}
