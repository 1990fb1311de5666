//! How people name pools: by their own name, or, for a Kubernetes pool, by
//! its Service ("web", "default/web", "web:http", "default/web:http").

use evenflow_proto::v1;

/// The Service port's label: its name, or its number when unnamed.
fn port_label(k: &v1::KubernetesService) -> String {
    if k.port_name.is_empty() {
        k.port.to_string()
    } else {
        k.port_name.clone()
    }
}

/// A pool as people know it: a Kubernetes pool by its Service ("web ·
/// Service default/web port http (80) · zone z1"), any other by its name.
pub fn title(p: &v1::Pool) -> String {
    let Some(k) = &p.kubernetes else {
        return p.name.clone();
    };
    let port = if k.port_name.is_empty() {
        k.port.to_string()
    } else {
        format!("{} ({})", k.port_name, k.port)
    };
    let mut t = format!(
        "{} · Service {}/{} port {port}",
        k.service, k.namespace, k.service
    );
    if !k.zone.is_empty() {
        t.push_str(&format!(" · zone {}", k.zone));
    }
    if !k.node.is_empty() {
        t.push_str(&format!(" · node {}", k.node));
    }
    t
}

/// The pools `name` means: the pool of that exact name, else every
/// Kubernetes pool of the Service it names (all its ports, zones or nodes
/// unless the name gives the port).
pub fn matching<'a>(pools: &'a [v1::Pool], name: &str) -> Vec<&'a v1::Pool> {
    if let Some(p) = pools.iter().find(|p| p.name == name) {
        return vec![p];
    }
    pools
        .iter()
        .filter(|p| {
            p.kubernetes.as_ref().is_some_and(|k| {
                let svc = format!("{}/{}", k.namespace, k.service);
                let port = port_label(k);
                [
                    k.service.clone(),
                    svc.clone(),
                    format!("{}:{port}", k.service),
                    format!("{svc}:{port}"),
                ]
                .iter()
                .any(|n| n == name)
            })
        })
        .collect()
}

/// The pools `name` means ([`matching`]), or, when none, why: in words
/// for the person who typed it.
pub fn resolve<'a>(pools: &'a [v1::Pool], name: &str) -> Result<Vec<&'a v1::Pool>, String> {
    let found = matching(pools, name);
    if found.is_empty() {
        return Err(format!(
            "no pool or Kubernetes Service {name:?} (evenflow status lists them)"
        ));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kube(service: &str, port: &str, zone: &str) -> v1::Pool {
        v1::Pool {
            name: format!(
                "default/{service}:{port}{}",
                if zone.is_empty() {
                    String::new()
                } else {
                    format!("@{zone}")
                }
            ),
            kubernetes: Some(v1::KubernetesService {
                namespace: "default".into(),
                service: service.into(),
                port_name: port.into(),
                port: 80,
                zone: zone.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_service_name_finds_its_pools() {
        let pools = vec![
            v1::Pool {
                name: "web".into(),
                ..Default::default()
            },
            kube("web", "http", ""),
            kube("api", "http", "z1"),
            kube("api", "http", "z2"),
            kube("api", "admin", ""),
        ];
        let names = |n: &str| -> Vec<String> {
            matching(&pools, n).iter().map(|p| p.name.clone()).collect()
        };
        // An exact pool name wins over a Service of that name.
        assert_eq!(names("web"), ["web"]);
        assert_eq!(names("default/web"), ["default/web:http"]);
        assert_eq!(names("api").len(), 3);
        assert_eq!(
            names("api:http"),
            ["default/api:http@z1", "default/api:http@z2"]
        );
        assert_eq!(names("default/api:http@z2"), ["default/api:http@z2"]);
        assert!(names("nope").is_empty());
        assert!(
            resolve(&pools, "nope").is_err_and(|e| e.contains("\"nope\"")),
            "{:?}",
            resolve(&pools, "nope")
        );
        assert_eq!(resolve(&pools, "api").map(|p| p.len()), Ok(3));
        assert_eq!(
            title(&pools[2]),
            "api · Service default/api port http (80) · zone z1"
        );
        assert_eq!(title(&pools[0]), "web");
    }
}
