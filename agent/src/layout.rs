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
/// A directory that says the maps aside are retired, made before they
/// are removed: an agent stopped while it removed them leaves nothing to
/// put back. (bpffs refuses names with a dot.)
const RETIRED: &str = "retired-layout";

/// The map layout this agent needs, and in its low bit which flow map it
/// keeps forwarded connections in: `EF_CT_FLOWS` when conntrack follows
/// them (0), `EF_FLOWS` when they are counted packet by packet (1). An
/// agent that switches between the two starts a new epoch: connections
/// open across the switch would otherwise sit in the map it no longer
/// sweeps. [`WALK`] is set where a walk samples sockets: a socket
/// counted one way would close the other way. (A bit apart, so that the
/// layouts of agents with slots stay what they were: an upgrade keeps
/// their counters.) `EVENFLOW_TEST_LAYOUT_BUMP=N` adds N to the layout, so
/// tests can play an upgrade to an agent built with another.
pub fn version(conntrack: bool, walk: bool) -> u64 {
    let layout = LAYOUT_VERSION
        + std::env::var("EVENFLOW_TEST_LAYOUT_BUMP")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    let version = layout << 1 | u64::from(!conntrack);
    if walk { version | WALK } else { version }
}

/// The layout bit of `--socket-sampling walk`.
const WALK: u64 = 1 << 48;

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
        if let Err(e) = set_aside(pin_dir, &aside) {
            // Nothing new was pinned: whatever moved goes back.
            let _ = put_back(pin_dir);
            return Err(e);
        }
        Ok(Some(Self {
            pin_dir: pin_dir.to_owned(),
            armed: true,
        }))
    }

    /// The new programs are about to replace the old ones: the old maps
    /// go with them. A marker directory says so first, so an agent stopped
    /// while it removes them does not take them for maps to put back.
    pub fn retire(mut self) -> Result<()> {
        self.armed = false;
        let retired = self.pin_dir.join(RETIRED);
        std::fs::create_dir_all(&retired)
            .with_context(|| format!("creating {}", retired.display()))?;
        remove_retired(&self.pin_dir)
    }
}

/// Removes the maps set aside and then the marker that says they are
/// retired.
fn remove_retired(pin_dir: &Path) -> Result<()> {
    let aside = pin_dir.join(ASIDE);
    if aside.exists() {
        std::fs::remove_dir_all(&aside)
            .with_context(|| format!("removing the old maps at {}", aside.display()))?;
    }
    let retired = pin_dir.join(RETIRED);
    std::fs::remove_dir(&retired).with_context(|| format!("removing {}", retired.display()))
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
                "could not pin the old maps again; the next agent to start tries again"
            ),
        }
    }
}

/// Deals with maps an agent left aside when it was stopped (killed, or
/// SIGTERMed, which ends a loading agent at once) before it either put
/// them back or retired them: no program of its own was swapped in, so
/// they are still the ones the attached programs count into, and go back.
fn recover(pin_dir: &Path) -> Result<()> {
    if pin_dir.join(RETIRED).exists() {
        return remove_retired(pin_dir);
    }
    if !pin_dir.join(ASIDE).exists() {
        return Ok(());
    }
    info!(pins = %pin_dir.display(), "pinning again the maps an agent left aside as it loaded");
    put_back(pin_dir)
}

/// Moves every pinned map into `aside`, `EF_META` last: while it is still
/// in the pin directory, every pin there is an old one.
fn set_aside(pin_dir: &Path, aside: &Path) -> Result<()> {
    for path in pins(pin_dir)? {
        if !is_meta(&path) {
            move_pin(&path, aside)?;
        }
    }
    move_pin(&pin_dir.join(maps::META), aside)
}

/// Moves the maps set aside back, `EF_META` first. Whatever a build
/// pinned before it failed is removed first, while `EF_META` is aside
/// (once it is back, every pin in the pin directory is an old one).
fn put_back(pin_dir: &Path) -> Result<()> {
    let aside = pin_dir.join(ASIDE);
    let meta = aside.join(maps::META);
    if meta.exists() {
        for path in pins(pin_dir)? {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the new pin {}", path.display()))?;
        }
        move_pin(&meta, pin_dir)?;
    }
    for path in pins(&aside)? {
        move_pin(&path, pin_dir)?;
    }
    std::fs::remove_dir(&aside).with_context(|| format!("removing {}", aside.display()))
}

fn is_meta(path: &Path) -> bool {
    path.file_name() == Some(std::ffi::OsStr::new(maps::META))
}

/// Renames the pin at `path` into the directory `to`.
fn move_pin(path: &Path, to: &Path) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} names no pin", path.display()))?;
    let target = to.join(name);
    std::fs::rename(path, &target)
        .with_context(|| format!("moving the pin {} to {}", path.display(), target.display()))
}

/// The pinned maps in `dir` (not its directories: the links' and the
/// aside ones).
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A pin directory of plain files (renames and removals behave as on
    /// bpffs), each holding which build pinned it.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("evenflow-layout-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("links")).expect("a temporary directory");
            Self(dir)
        }

        fn pin(&self, at: &str, name: &str, build: &str) {
            let dir = self.0.join(at);
            std::fs::create_dir_all(&dir).expect("the directory");
            std::fs::write(dir.join(name), build).expect("a pin");
        }

        /// Every pin under the directory, by path, with its build.
        fn all(&self) -> BTreeMap<String, String> {
            let mut out = BTreeMap::new();
            for sub in ["", ASIDE, RETIRED] {
                let dir = self.0.join(sub);
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for e in entries {
                    let path = e.expect("an entry").path();
                    if path.is_file() {
                        let name = format!(
                            "{sub}/{}",
                            path.file_name().expect("a name").to_string_lossy()
                        );
                        out.insert(name, std::fs::read_to_string(&path).expect("a pin"));
                    }
                }
            }
            out
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn old_pins(d: &Dir) {
        for name in [maps::META, maps::ENDPOINTS, maps::SOCK_SLOTS] {
            d.pin("", name, "old");
        }
    }

    fn only_old_pinned() -> BTreeMap<String, String> {
        [maps::META, maps::ENDPOINTS, maps::SOCK_SLOTS]
            .into_iter()
            .map(|name| (format!("/{name}"), "old".to_owned()))
            .collect()
    }

    /// Each way of keeping forwarded connections and of sampling sockets
    /// is a layout of its own: switching any starts a new epoch.
    #[test]
    fn every_mode_is_a_layout_of_its_own() {
        let layouts: std::collections::HashSet<u64> =
            [(false, false), (false, true), (true, false), (true, true)]
                .into_iter()
                .map(|(conntrack, walk)| version(conntrack, walk))
                .collect();
        assert_eq!(layouts.len(), 4);
        assert_eq!(
            (version(true, false), version(false, false)),
            (LAYOUT_VERSION << 1, LAYOUT_VERSION << 1 | 1),
            "with slots, the layout of the agents before walk mode: an upgrade keeps the counters"
        );
    }

    #[test]
    fn maps_set_aside_go_back_over_what_the_failed_build_pinned() {
        let d = Dir::new("back");
        old_pins(&d);
        set_aside(&d.0, &{
            let aside = d.0.join(ASIDE);
            std::fs::create_dir_all(&aside).expect("the aside directory");
            aside
        })
        .expect("the pins move aside");
        d.pin("", maps::META, "new");
        d.pin("", maps::ENDPOINTS, "new");
        put_back(&d.0).expect("the pins go back");
        assert_eq!(d.all(), only_old_pinned());
        assert!(d.0.join("links").is_dir(), "the links stay");
    }

    #[test]
    fn an_agent_stopped_as_it_set_maps_aside_leaves_them_to_go_back() {
        let d = Dir::new("halfaside");
        old_pins(&d);
        // Stopped after moving one map, before EF_META: every pin left in
        // the pin directory is an old one.
        std::fs::create_dir_all(d.0.join(ASIDE)).expect("the aside directory");
        std::fs::rename(
            d.0.join(maps::ENDPOINTS),
            d.0.join(ASIDE).join(maps::ENDPOINTS),
        )
        .expect("one pin moves");
        recover(&d.0).expect("recovers");
        assert_eq!(d.all(), only_old_pinned());
    }

    #[test]
    fn an_agent_stopped_as_it_loaded_leaves_the_old_maps_to_go_back() {
        let d = Dir::new("loading");
        for name in [maps::META, maps::ENDPOINTS, maps::SOCK_SLOTS] {
            d.pin(ASIDE, name, "old");
        }
        // The new build had pinned its own maps, EF_META among them.
        d.pin("", maps::META, "new");
        d.pin("", maps::ENDPOINTS, "new");
        recover(&d.0).expect("recovers");
        assert_eq!(d.all(), only_old_pinned());
    }

    #[test]
    fn an_agent_stopped_as_it_put_maps_back_leaves_the_rest_to_go_back() {
        let d = Dir::new("halfback");
        // EF_META went back first, then the agent stopped.
        d.pin("", maps::META, "old");
        d.pin(ASIDE, maps::ENDPOINTS, "old");
        d.pin(ASIDE, maps::SOCK_SLOTS, "old");
        recover(&d.0).expect("recovers");
        assert_eq!(d.all(), only_old_pinned());
    }

    #[test]
    fn maps_an_agent_was_removing_are_removed() {
        let d = Dir::new("retired");
        d.pin("", maps::META, "new");
        // Stopped after removing the old EF_META.
        d.pin(ASIDE, maps::ENDPOINTS, "old");
        std::fs::create_dir(d.0.join(RETIRED)).expect("the marker");
        recover(&d.0).expect("recovers");
        assert!(!d.0.join(RETIRED).exists() && !d.0.join(ASIDE).exists());
        assert_eq!(
            d.all(),
            [(format!("/{}", maps::META), "new".to_owned())].into()
        );
    }
}
