//! The Kubernetes API side: kube-rs watchers on Services, EndpointSlices
//! (`discovery.k8s.io/v1`) and Nodes (metadata only: their zone label),
//! each kept in a reflector store, and the catalog rebuilt from the three
//! stores after every change.
//!
//! kube-rs' watcher does what the API asks of a client: a paginated list,
//! then a watch from the list's `resourceVersion` with bookmarks, resumed
//! from the last version seen when the stream ends, and a fresh list when
//! the server answers 410 Gone (the version is too old). The reflector
//! swaps a re-listed store in whole, so a re-list never shows a half-empty
//! cluster. Errors are retried with kube-rs' default backoff and logged
//! with what to do (a 403 names the permission the ServiceAccount lacks).
//!
//! Objects are trimmed before they are stored: managed fields and
//! annotations (but the Service's topology ones) go, and Nodes are watched
//! as metadata only, since a Node's status (images, conditions) is large
//! and only its zone label matters here.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use ::kube::{
    Api, Client, Resource, ResourceExt as _,
    config::{KubeConfigOptions, Kubeconfig},
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use tokio::sync::{Notify, watch};
use tokio_stream::{Stream, StreamExt as _};
use tracing::{debug, error, info, warn};

use crate::service::kube::catalog::{self, Catalog, TOPOLOGY_HINTS, TOPOLOGY_MODE, ZONE_LABEL};

/// Rebuilds wait this long after a change, so a burst (a re-list, a
/// rollout touching many slices) makes one catalog.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig file could not be read or used.
    #[error(
        "Kubernetes: kubeconfig {path}: {source}; give --kubeconfig a readable kubeconfig (or run in a Pod and use --kubernetes alone)"
    )]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: ::kube::config::KubeconfigError,
    },
    /// Not in a Pod, or its ServiceAccount files are missing.
    #[error(
        "Kubernetes: no in-cluster configuration ({0}); run the collector in a Pod with a ServiceAccount token mounted, or pass --kubeconfig FILE"
    )]
    InCluster(::kube::config::InClusterError),
    /// The client could not be built from the configuration.
    #[error("Kubernetes: building the API client: {0}")]
    Client(::kube::Error),
}

/// Where the API is.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// A kubeconfig file; `None` for the in-cluster configuration.
    pub kubeconfig: Option<PathBuf>,
}

async fn client(opts: &Options) -> Result<Client, KubeError> {
    let config = match &opts.kubeconfig {
        Some(path) => {
            let bad = |source| KubeError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let kc = Kubeconfig::read_from(path).map_err(bad)?;
            ::kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(bad)?
        }
        None => ::kube::Config::incluster().map_err(KubeError::InCluster)?,
    };
    info!(api = %config.cluster_url, "Kubernetes: watching Services, EndpointSlices and Nodes");
    Client::try_from(config).map_err(KubeError::Client)
}

/// Starts watching; the catalog is published on the returned channel after
/// every change (unsynced until all three resources are listed). The tasks
/// run on the current tokio runtime until it stops.
pub async fn start(opts: &Options) -> Result<watch::Receiver<Arc<Catalog>>, KubeError> {
    let client = client(opts).await?;
    let changed = Arc::new(Notify::new());
    let services = spawn_reflector(
        "services",
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
        trim_service,
        changed.clone(),
    );
    let slices = spawn_reflector(
        "endpointslices",
        watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
        ),
        trim_slice,
        changed.clone(),
    );
    let nodes = spawn_reflector(
        "nodes",
        watcher(
            Api::<PartialObjectMeta<Node>>::all(client),
            watcher::Config::default(),
        ),
        trim_node,
        changed.clone(),
    );
    let (tx, rx) = watch::channel(Arc::new(Catalog::default()));
    tokio::spawn(publish(services, slices, nodes, changed, tx));
    Ok(rx)
}

/// Runs one resource's watcher into a reflector store, waking `changed`
/// after each change the store takes (a whole re-list counts once, at its
/// end).
fn spawn_reflector<K>(
    resource: &'static str,
    events: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    trim: fn(&mut K),
    changed: Arc<Notify>,
) -> Store<K>
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = events.default_backoff().modify(trim).reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::InitDone) => {
                    debug!(resource, "Kubernetes: listed");
                    changed.notify_one();
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => changed.notify_one(),
                Err(error) => log_error(resource, &error),
            }
        }
    });
    reader
}

/// Logs a watch error with what it means and what to do.
fn log_error(resource: &str, error: &watcher::Error) {
    let api_status = match error {
        watcher::Error::InitialListFailed(::kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(::kube::Error::Api(status))
        | watcher::Error::WatchFailed(::kube::Error::Api(status)) => Some(&**status),
        watcher::Error::WatchError(status) => Some(&**status),
        _ => None,
    };
    match api_status {
        Some(status) if status.code == 410 => info!(
            resource,
            "Kubernetes: watch expired (410 Gone: {}): listing again", status.message
        ),
        Some(status) if status.code == 401 || status.code == 403 => error!(
            resource,
            "Kubernetes: the API server refuses ({} {}: {}): grant the collector's ServiceAccount get, list and watch on {resource} (deploy/kubernetes/collector-rbac.yaml); retrying",
            status.code,
            status.reason,
            status.message
        ),
        _ => warn!(resource, "Kubernetes: {error}; retrying with backoff"),
    }
}

fn trim_service(service: &mut Service) {
    service.managed_fields_mut().clear();
    service
        .annotations_mut()
        .retain(|key, _| key == TOPOLOGY_MODE || key == TOPOLOGY_HINTS);
    service.status = None;
}

fn trim_slice(slice: &mut EndpointSlice) {
    slice.managed_fields_mut().clear();
    slice.annotations_mut().clear();
}

fn trim_node(node: &mut PartialObjectMeta<Node>) {
    node.managed_fields_mut().clear();
    node.annotations_mut().clear();
    node.labels_mut().retain(|key, _| key == ZONE_LABEL);
}

/// Waits until every store is listed, then publishes a catalog after each
/// burst of changes.
async fn publish(
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<PartialObjectMeta<Node>>,
    changed: Arc<Notify>,
    tx: watch::Sender<Arc<Catalog>>,
) {
    let ready = async {
        services.wait_until_ready().await?;
        slices.wait_until_ready().await?;
        nodes.wait_until_ready().await
    };
    if ready.await.is_err() {
        return;
    }
    let mut version = 0;
    loop {
        let zones: BTreeMap<String, String> = nodes
            .state()
            .iter()
            .filter_map(|node| Some((node.name_any(), node.labels().get(ZONE_LABEL)?.clone())))
            .collect();
        let services_now = services.state();
        let slices_now = slices.state();
        version += 1;
        let (pools, unpooled) = catalog::build_all(
            services_now.iter().map(|service| &**service),
            slices_now.iter().map(|slice| &**slice),
            &zones,
        );
        debug!(version, pools = pools.len(), "Kubernetes: catalog rebuilt");
        if version == 1 {
            info!(
                services = services_now.len(),
                endpointslices = slices_now.len(),
                nodes = zones.len(),
                pools = pools.len(),
                "Kubernetes: listed; pools follow the EndpointSlices from now on"
            );
        }
        if tx
            .send(Arc::new(Catalog {
                synced: true,
                version,
                pools,
                unpooled: unpooled.into(),
            }))
            .is_err()
        {
            return;
        }
        changed.notified().await;
        tokio::time::sleep(DEBOUNCE).await;
    }
}
