//! The stand-in's HTTP side: routing, authentication, RBAC, list and watch,
//! answered as kube-apiserver answers them (see the module docs of
//! [`super`] for what is covered).

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Frame, Incoming},
    header,
};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};

use super::store::{Event, Expired, Kind, Store};

/// The user the stand-in says it authenticated (a ServiceAccount's).
pub const USER: &str = "system:serviceaccount:evenflow:evenflow-collector";

/// One RBAC PolicyRule: what a ClusterRole grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `apiGroups` ("" is the core group, "*" any).
    pub api_groups: Vec<String>,
    /// `resources` ("*" any).
    pub resources: Vec<String>,
    /// `verbs` ("*" any).
    pub verbs: Vec<String>,
}

impl Rule {
    fn allows(&self, group: &str, resource: &str, verb: &str) -> bool {
        let has = |v: &[String], x: &str| v.iter().any(|s| s == x || s == "*");
        has(&self.api_groups, group) && has(&self.resources, resource) && has(&self.verbs, verb)
    }
}

/// One request the stand-in answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// `get`, `list` or `watch` (or the HTTP method when not an API call).
    pub verb: String,
    /// The resource's plural ("" when not an API call).
    pub resource: String,
    /// The request's query string.
    pub query: String,
    /// The status answered (200 for a watch, whatever its events say).
    pub status: u16,
}

/// Forced ends of open watches.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// Increments with every forced end.
    pub generation: u64,
    /// End with an ERROR 410 event (history compacted) rather than a
    /// plain close.
    pub expire: bool,
}

type SnapshotKey = (Kind, Option<String>, u64);

/// State shared by the connections and the test's handle.
pub struct Shared {
    /// Objects and history.
    pub store: Mutex<Store>,
    /// Bumped after every write: wakes the watches.
    pub changed: watch::Sender<u64>,
    /// Ends open watches.
    pub control: watch::Sender<Control>,
    /// The bearer token every request must carry.
    pub token: String,
    /// What the token may do; `None` allows everything.
    pub rules: Mutex<Option<Vec<Rule>>>,
    /// Every request answered.
    pub log: Mutex<Vec<Logged>>,
    /// How often an idle watch that asked for bookmarks gets one.
    pub bookmark_every: Duration,
    /// Paginated lists' snapshots, by kind, namespace and revision: later
    /// pages read the list's revision, as etcd serves them.
    pub snapshots: Mutex<HashMap<SnapshotKey, Arc<Vec<Arc<Value>>>>>,
    /// Watches open now.
    pub open_watches: std::sync::atomic::AtomicUsize,
}

/// A response body: a whole document or a watch stream.
pub type Body = BoxBody<Bytes, Infallible>;

fn whole(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A `Status` document, the API's error body.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn fail(code: u16, reason: &str, message: &str) -> Response<Body> {
    whole(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status(code, reason, message),
    )
}

/// `%XX` and `+` decoding of one query value.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Which resource a path names.
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
}

fn route(path: &str) -> Option<Target> {
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match seg.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, "v1", rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return None,
    };
    let kind = Kind::from_path(group, plural)?;
    if namespace.is_some() && !kind.namespaced() {
        return None;
    }
    Some(Target {
        kind,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    })
}

/// Equality label selectors (`a=b,c==d`); `None` for what the stand-in
/// does not evaluate.
fn selector(s: &str) -> Option<Vec<(String, String)>> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            let (k, v) = t.split_once("==").or_else(|| t.split_once('='))?;
            (!k.contains('!')).then(|| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

fn matches(obj: &Value, sel: &[(String, String)]) -> bool {
    sel.iter()
        .all(|(k, v)| obj["metadata"]["labels"][k].as_str() == Some(v.as_str()))
}

/// The object as a list item or watch event carries it: whole, or as
/// `PartialObjectMetadata` when the client asked for metadata only.
fn shape(obj: &Value, meta_only: bool, in_list: bool) -> Value {
    if meta_only {
        return json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        });
    }
    if in_list {
        // List items carry no TypeMeta: the list's kind says it.
        let mut v = obj.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("kind");
            m.remove("apiVersion");
        }
        return v;
    }
    obj.clone()
}

/// Answers one request.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let q = req.uri().query().unwrap_or("").to_owned();
    let path = req.uri().path().to_owned();
    let (verb, resource, resp) = answer(&shared, &req, &path, &q);
    shared
        .log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Logged {
            verb,
            resource,
            query: q,
            status: resp.status().as_u16(),
        });
    Ok(resp)
}

fn answer(
    shared: &Arc<Shared>,
    req: &Request<Incoming>,
    path: &str,
    q: &str,
) -> (String, String, Response<Body>) {
    let authed = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|t| t == shared.token);
    let method = req.method().as_str().to_lowercase();
    if !authed {
        return (
            method,
            String::new(),
            fail(401, "Unauthorized", "Unauthorized"),
        );
    }
    if path == "/version" {
        let v = json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-evenflow-standin", "platform": "linux/amd64"});
        return (method, String::new(), whole(StatusCode::OK, &v));
    }
    let Some(t) = route(path) else {
        return (
            method,
            String::new(),
            fail(
                404,
                "NotFound",
                &format!("the server could not find the requested resource ({path})"),
            ),
        );
    };
    let params = query(q);
    let watching = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (t.name.is_some(), watching) {
        (true, _) => "get",
        (false, true) => "watch",
        (false, false) => "list",
    };
    let resource = t.kind.plural().to_owned();
    let log = |r| (verb.to_owned(), resource.clone(), r);
    if req.method() != hyper::Method::GET {
        return (
            method,
            resource.clone(),
            fail(
                405,
                "MethodNotAllowed",
                "the stand-in API server is read-only",
            ),
        );
    }
    let allowed = shared
        .rules
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_none_or(|rules| {
            rules
                .iter()
                .any(|r| r.allows(t.kind.group(), &resource, verb))
        });
    if !allowed {
        let scope = match &t.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        return log(fail(
            403,
            "Forbidden",
            &format!(
                "{resource} is forbidden: User \"{USER}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
                t.kind.group()
            ),
        ));
    }
    if params.contains_key("fieldSelector") {
        return log(fail(
            400,
            "BadRequest",
            "the stand-in API server does not evaluate field selectors",
        ));
    }
    let Some(sel) = selector(params.get("labelSelector").map_or("", String::as_str)) else {
        return log(fail(
            400,
            "BadRequest",
            "the stand-in API server evaluates equality label selectors only",
        ));
    };
    let meta_only = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    let resp = match (verb, &t.name) {
        ("get", Some(name)) => get(shared, &t, name, meta_only),
        ("watch", _) => watch_response(shared, &t, &params, sel, meta_only),
        _ => list(shared, &t, &params, &sel, meta_only),
    };
    log(resp)
}

fn get(shared: &Shared, t: &Target, name: &str, meta_only: bool) -> Response<Body> {
    let store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
    match store.get(t.kind, t.namespace.as_deref().unwrap_or(""), name) {
        Some(o) => whole(StatusCode::OK, &shape(&o, meta_only, false)),
        None => fail(
            404,
            "NotFound",
            &format!("{} \"{name}\" not found", t.kind.plural()),
        ),
    }
}

const CONTINUE_TOO_OLD: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

fn list(
    shared: &Shared,
    t: &Target,
    params: &HashMap<String, String>,
    sel: &[(String, String)],
    meta_only: bool,
) -> Response<Body> {
    let limit: usize = params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
    let mut snaps = shared.snapshots.lock().unwrap_or_else(|e| e.into_inner());
    snaps.retain(|(_, _, rv), _| *rv >= store.compacted());
    let (rv, items, start) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let parsed = token
                .split_once('.')
                .and_then(|(rv, off)| Some((rv.parse::<u64>().ok()?, off.parse::<usize>().ok()?)));
            let Some((rv, offset)) = parsed else {
                return fail(400, "BadRequest", "continue key is not valid");
            };
            match snaps.get(&(t.kind, t.namespace.clone(), rv)) {
                Some(items) if rv >= store.compacted() => (rv, items.clone(), offset),
                _ => return fail(410, "Expired", CONTINUE_TOO_OLD),
            }
        }
        None => {
            match params.get("resourceVersion").map(String::as_str) {
                None | Some("" | "0") => {}
                Some(asked) => {
                    let exact =
                        params.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
                    let Ok(asked) = asked.parse::<u64>() else {
                        return fail(
                            400,
                            "BadRequest",
                            &format!("invalid resourceVersion {asked:?}"),
                        );
                    };
                    if asked < store.compacted() || (exact && asked != store.revision()) {
                        return fail(
                            410,
                            "Expired",
                            &format!(
                                "too old resource version: {asked} ({})",
                                store.compacted().max(store.revision())
                            ),
                        );
                    }
                }
            }
            let (rv, items) = store.list(t.kind, t.namespace.as_deref());
            (rv, Arc::new(items), 0)
        }
    };
    let matching: Vec<&Arc<Value>> = items.iter().filter(|o| matches(o, sel)).collect();
    let end = if limit == 0 {
        matching.len()
    } else {
        (start + limit).min(matching.len())
    };
    let page: Vec<Value> = matching
        .get(start..end)
        .unwrap_or(&[])
        .iter()
        .map(|o| shape(o, meta_only, true))
        .collect();
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if end < matching.len() {
        snaps.insert((t.kind, t.namespace.clone(), rv), items.clone());
        meta["continue"] = json!(format!("{rv}.{end}"));
        meta["remainingItemCount"] = json!(matching.len() - end);
    }
    let (kind, api_version) = if meta_only {
        ("PartialObjectMetadataList".to_owned(), "meta.k8s.io/v1")
    } else {
        (format!("{}List", t.kind.name()), t.kind.api_version())
    };
    whole(
        StatusCode::OK,
        &json!({"kind": kind, "apiVersion": api_version, "metadata": meta, "items": page}),
    )
}

/// One watch, as its stream is sent.
struct Watch {
    shared: Arc<Shared>,
    kind: Kind,
    namespace: Option<String>,
    selector: Vec<(String, String)>,
    meta_only: bool,
    bookmarks: bool,
    timeout: Duration,
    tx: mpsc::Sender<Bytes>,
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

fn watch_response(
    shared: &Arc<Shared>,
    t: &Target,
    params: &HashMap<String, String>,
    selector: Vec<(String, String)>,
    meta_only: bool,
) -> Response<Body> {
    let from = match params.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(v) => match v.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => return fail(400, "BadRequest", &format!("invalid resourceVersion {v:?}")),
        },
    };
    let initial_events_end = params.get("sendInitialEvents").map(String::as_str) == Some("true");
    // The API server caps a watch at timeoutSeconds (default: a few
    // minutes, randomised).
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let w = Watch {
        shared: shared.clone(),
        kind: t.kind,
        namespace: t.namespace.clone(),
        selector,
        meta_only,
        bookmarks: params.get("allowWatchBookmarks").map(String::as_str) == Some("true"),
        timeout,
        tx,
    };
    tokio::spawn(w.run(from, initial_events_end));
    let body =
        StreamBody::new(ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b))));
    let mut r = Response::new(http_body_util::BodyExt::boxed(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

impl Watch {
    fn event(&self, ev: &Event) -> Option<Value> {
        if !matches(&ev.object, &self.selector) {
            return None;
        }
        Some(json!({"type": ev.what.as_str(), "object": shape(&ev.object, self.meta_only, false)}))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Value {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let (kind, api_version) = if self.meta_only {
            ("PartialObjectMetadata", "meta.k8s.io/v1")
        } else {
            (self.kind.name(), self.kind.api_version())
        };
        json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": meta}})
    }

    fn expired(e: &Expired) -> Value {
        json!({"type": "ERROR", "object": status(410, "Expired", &format!("too old resource version: {} ({})", e.asked, e.oldest))})
    }

    /// The current revision when nothing of this watch's kind happened
    /// after `last` (a bookmark may say so), else `None`.
    fn idle_revision(&self, last: u64) -> Option<u64> {
        let s = self.shared.store.lock().unwrap_or_else(|e| e.into_inner());
        match s.since(self.kind, self.namespace.as_deref(), last) {
            Ok(evs) if evs.is_empty() => Some(s.revision()),
            _ => None,
        }
    }

    fn compacted(&self) -> u64 {
        self.shared
            .store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .compacted()
    }

    /// Ends the watch as the test asked: an ERROR 410 event first when
    /// the history was compacted, a plain close otherwise.
    async fn end(&self, c: Control, last: u64) {
        if c.expire {
            let e = Expired {
                asked: last,
                oldest: self.compacted(),
            };
            let _ = self.tx.send(line(&Self::expired(&e))).await;
        }
    }

    /// Sends the watch's events until it times out, the client goes, or
    /// the test ends it.
    async fn run(self, from: Option<u64>, initial_events_end: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.shared.open_watches.fetch_add(1, Relaxed);
        self.stream(from, initial_events_end).await;
        self.shared.open_watches.fetch_sub(1, Relaxed);
    }

    async fn stream(&self, from: Option<u64>, initial_events_end: bool) {
        let mut changed = self.shared.changed.subscribe();
        let mut control = self.shared.control.subscribe();
        control.borrow_and_update();
        let deadline = tokio::time::Instant::now() + self.timeout;
        // Without a version to resume from: the current state as ADDED
        // events first ("get state and start at most recent").
        let mut last = match from {
            Some(rv) => rv,
            None => {
                let (rv, items) = {
                    let s = self.shared.store.lock().unwrap_or_else(|e| e.into_inner());
                    s.list(self.kind, self.namespace.as_deref())
                };
                for o in items.iter().filter(|o| matches(o, &self.selector)) {
                    let ev = json!({"type": "ADDED", "object": shape(o, self.meta_only, false)});
                    if self.tx.send(line(&ev)).await.is_err() {
                        return;
                    }
                }
                if initial_events_end && self.tx.send(line(&self.bookmark(rv, true))).await.is_err()
                {
                    return;
                }
                rv
            }
        };
        loop {
            // Ended by the test: nothing written after that reaches this
            // watch (it is what a client must learn by listing again).
            if control.has_changed().unwrap_or(true) {
                let c = *control.borrow_and_update();
                return self.end(c, last).await;
            }
            // Everything since `last`, or 410 if that history is gone.
            let evs = {
                let s = self.shared.store.lock().unwrap_or_else(|e| e.into_inner());
                s.since(self.kind, self.namespace.as_deref(), last)
            };
            match evs {
                Err(e) => {
                    let _ = self.tx.send(line(&Self::expired(&e))).await;
                    return;
                }
                Ok(evs) => {
                    for ev in &evs {
                        last = ev.rv;
                        if let Some(v) = self.event(ev)
                            && self.tx.send(line(&v)).await.is_err()
                        {
                            return;
                        }
                    }
                }
            }
            let bookmark = tokio::time::sleep(self.shared.bookmark_every);
            tokio::select! {
                _ = changed.changed() => {}
                _ = bookmark, if self.bookmarks => {
                    // Nothing of this kind happened up to the current
                    // revision: say so, so a resumed watch starts there.
                    let rv = self.idle_revision(last);
                    if let Some(rv) = rv {
                        last = rv;
                        if self.tx.send(line(&self.bookmark(rv, false))).await.is_err() {
                            return;
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
                r = control.changed() => {
                    let c = *control.borrow_and_update();
                    if r.is_ok() {
                        self.end(c, last).await;
                    }
                    return;
                }
                _ = self.tx.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_paths_as_the_api_does() {
        let t = route("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices").unwrap();
        assert_eq!(
            (t.kind, t.namespace.as_deref(), t.name),
            (Kind::EndpointSlice, Some("default"), None)
        );
        let t = route("/api/v1/nodes/n1").unwrap();
        assert_eq!((t.kind, t.name.as_deref()), (Kind::Node, Some("n1")));
        assert!(route("/api/v1/namespaces/x/nodes").is_none());
        assert!(route("/api/v1/pods").is_none());
        assert!(route("/apis/discovery.k8s.io/v1beta1/endpointslices").is_none());
    }

    #[test]
    fn queries_and_selectors() {
        let q = query("labelSelector=kubernetes.io%2Fservice-name%3Dweb&watch=1");
        assert_eq!(q["labelSelector"], "kubernetes.io/service-name=web");
        assert_eq!(
            selector(&q["labelSelector"]),
            Some(vec![(
                "kubernetes.io/service-name".to_owned(),
                "web".to_owned()
            )])
        );
        assert_eq!(selector("a!=b"), None);
        let r = Rule {
            api_groups: vec!["discovery.k8s.io".into()],
            resources: vec!["endpointslices".into()],
            verbs: vec!["list".into(), "watch".into()],
        };
        assert!(r.allows("discovery.k8s.io", "endpointslices", "watch"));
        assert!(!r.allows("", "endpointslices", "watch"));
        assert!(!r.allows("discovery.k8s.io", "endpointslices", "get"));
    }
}
