//! The stand-in's storage, as etcd behind the API server keeps it: one
//! cluster-wide revision counter that every write increments and stamps
//! into the object's `metadata.resourceVersion`, and the history of write
//! events from which watches resume. Compaction drops that history: a
//! watch or a continued list from before it gets 410 Gone.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use serde_json::{Value, json};

/// The resources the stand-in serves.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` Services (namespaced).
    Service,
    /// `discovery.k8s.io/v1` EndpointSlices (namespaced).
    EndpointSlice,
    /// `v1` Nodes (cluster-scoped).
    Node,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

    /// The API group ("" for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io",
            _ => "",
        }
    }

    /// `apiVersion` of its objects.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    /// `kind` of its objects.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }

    /// The resource's plural, as in URLs and RBAC rules.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
        }
    }

    /// Whether its objects live in namespaces.
    pub fn namespaced(self) -> bool {
        self != Kind::Node
    }

    /// The kind a group and plural name.
    pub fn from_path(group: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.plural() == plural)
    }
}

/// What a write did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// The watch event's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One write, as watches replay it.
#[derive(Clone, Debug)]
pub struct Event {
    /// The revision it made.
    pub rv: u64,
    /// Its kind.
    pub kind: Kind,
    /// Its namespace ("" for cluster-scoped objects).
    pub namespace: String,
    /// What happened.
    pub what: EventType,
    /// The object after the write (for a delete: its last state, stamped
    /// with the delete's revision).
    pub object: Arc<Value>,
}

/// The history asked for is compacted away.
#[derive(Debug, PartialEq, Eq)]
pub struct Expired {
    /// The revision asked for.
    pub asked: u64,
    /// The oldest revision still resumable.
    pub oldest: u64,
}

type Key = (Kind, String, String);

/// Objects and their history.
#[derive(Default)]
pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Event>,
    compacted: u64,
    uids: u64,
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or("")
}

/// The object without its resourceVersion, to tell a real change from a
/// no-op write (which the API server answers without a new revision).
fn content(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    v
}

impl Store {
    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.rv
    }

    /// The oldest revision a watch may resume from.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Creates or replaces an object (`apiVersion`, `kind` and
    /// `metadata.name` set; `metadata.namespace` for namespaced kinds).
    /// Returns the event, or `None` when nothing changed.
    pub fn apply(&mut self, kind: Kind, mut obj: Value) -> Option<Event> {
        obj["apiVersion"] = json!(kind.api_version());
        obj["kind"] = json!(kind.name());
        let name = meta_str(&obj, "name").to_owned();
        let ns = if kind.namespaced() {
            meta_str(&obj, "namespace").to_owned()
        } else {
            String::new()
        };
        let key = (kind, ns.clone(), name);
        let old = self.objects.get(&key).cloned();
        // Server-set fields survive a client's update, as with `kubectl apply`.
        match &old {
            Some(o) => {
                for f in ["uid", "creationTimestamp"] {
                    obj["metadata"][f] = o["metadata"][f].clone();
                }
                if content(o) == content(&obj) {
                    return None;
                }
            }
            None => {
                self.uids += 1;
                obj["metadata"]["uid"] =
                    json!(format!("00000000-0000-4000-8000-{:012x}", self.uids));
                obj["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
            }
        }
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let obj = Arc::new(obj);
        self.objects.insert(key, obj.clone());
        Some(self.record(
            kind,
            ns,
            if old.is_some() {
                EventType::Modified
            } else {
                EventType::Added
            },
            obj,
        ))
    }

    /// Deletes an object; `None` when it does not exist.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> Option<Event> {
        let ns = if kind.namespaced() { namespace } else { "" };
        let old = self
            .objects
            .remove(&(kind, ns.to_owned(), name.to_owned()))?;
        self.rv += 1;
        let mut obj = (*old).clone();
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        Some(self.record(kind, ns.to_owned(), EventType::Deleted, Arc::new(obj)))
    }

    fn record(
        &mut self,
        kind: Kind,
        namespace: String,
        what: EventType,
        object: Arc<Value>,
    ) -> Event {
        let ev = Event {
            rv: self.rv,
            kind,
            namespace,
            what,
            object,
        };
        self.history.push_back(ev.clone());
        ev
    }

    /// One object.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Arc<Value>> {
        let ns = if kind.namespaced() { namespace } else { "" };
        self.objects
            .get(&(kind, ns.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every object of `kind` (in `namespace`, if given), sorted by
    /// namespace and name, with the current revision.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> (u64, Vec<Arc<Value>>) {
        let items = self
            .objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v.clone())
            .collect();
        (self.rv, items)
    }

    /// The events of `kind` (in `namespace`, if given) after revision
    /// `rv`, or [`Expired`] when history from `rv` on is compacted.
    pub fn since(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        rv: u64,
    ) -> Result<Vec<Event>, Expired> {
        if rv < self.compacted {
            return Err(Expired {
                asked: rv,
                oldest: self.compacted,
            });
        }
        Ok(self
            .history
            .iter()
            .filter(|e| e.rv > rv && e.kind == kind && namespace.is_none_or(|n| n == e.namespace))
            .cloned()
            .collect())
    }

    /// Drops the history up to now, as etcd's compaction does: watches
    /// and continued lists from an older revision get 410 Gone.
    pub fn compact(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, port: i64) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"ports": [{"port": port}]}})
    }

    #[test]
    fn revisions_events_and_compaction() {
        let mut s = Store::default();
        let e = s.apply(Kind::Service, svc("a", 80)).unwrap();
        assert_eq!((e.rv, e.what), (1, EventType::Added));
        assert_eq!(e.object["metadata"]["resourceVersion"], "1");
        assert_eq!(e.object["kind"], "Service");
        // A no-op write makes no revision.
        assert!(s.apply(Kind::Service, svc("a", 80)).is_none());
        let e = s.apply(Kind::Service, svc("a", 81)).unwrap();
        assert_eq!((e.rv, e.what), (2, EventType::Modified));
        assert_eq!(
            e.object["metadata"]["uid"],
            s.get(Kind::Service, "default", "a").unwrap()["metadata"]["uid"]
        );
        s.apply(Kind::Node, json!({"metadata": {"name": "n1"}}))
            .unwrap();
        let e = s.delete(Kind::Service, "default", "a").unwrap();
        assert_eq!((e.rv, e.what), (4, EventType::Deleted));
        let evs = s.since(Kind::Service, None, 1).unwrap();
        assert_eq!(evs.iter().map(|e| e.rv).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(s.list(Kind::Node, None).1.len(), 1);
        s.compact();
        assert_eq!(
            s.since(Kind::Service, None, 3).err(),
            Some(Expired {
                asked: 3,
                oldest: 4
            })
        );
        assert!(s.since(Kind::Service, None, 4).unwrap().is_empty());
    }
}
