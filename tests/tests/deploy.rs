//! The deployment files, validated without a cluster: every manifest
//! parses and has the properties that matter (least privilege, mounts,
//! probes, resources), the alert rules pass `promtool check` and
//! `promtool test`, the dashboard queries metrics that exist, and the
//! images build their binaries with `cargo xtask build`.

use std::{collections::HashMap, path::PathBuf, process::Command};

use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_owned()
}

fn docs(file: &str) -> Vec<Value> {
    let path = root().join("deploy/kubernetes").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
        .collect()
}

fn kind<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == k)
        .unwrap_or_else(|| panic!("no {k}"))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn agent_daemonset_has_least_privilege_and_what_it_needs() {
    let d = docs("agent-daemonset.yaml");
    let ds = kind(&d, "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    let c = &spec["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false, "not privileged");
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strs(&sc["capabilities"]["drop"]), vec!["ALL"]);
    let mut add = strs(&sc["capabilities"]["add"]);
    add.sort();
    assert_eq!(
        add,
        vec!["BPF", "NET_ADMIN", "PERFMON"],
        "exactly the capabilities the capability test proves"
    );
    // Host bpffs and cgroup v2 mounted, and the pods' network namespaces
    // named (adopting their older connections, given SYS_ADMIN).
    let vols = spec["volumes"].as_sequence().expect("volumes");
    let host = |p: &str| vols.iter().any(|v| v["hostPath"]["path"] == p);
    assert!(
        host("/sys/fs/bpf") && host("/sys/fs/cgroup") && host("/run/netns"),
        "{vols:?}"
    );
    // Node name from the downward API; collector URL set.
    let env = c["env"].as_sequence().expect("env");
    let var = |n: &str| {
        env.iter()
            .find(|e| e["name"] == n)
            .unwrap_or_else(|| panic!("no {n}"))
    };
    assert_eq!(
        var("EVENFLOW_NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert!(
        var("EVENFLOW_COLLECTOR")["value"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://"))
    );
    // gRPC health probes on the agent's gRPC port.
    let port = c["ports"]
        .as_sequence()
        .and_then(|p| p.iter().find(|p| p["name"] == "grpc"))
        .expect("grpc port")["containerPort"]
        .clone();
    assert_eq!(c["readinessProbe"]["grpc"]["port"], port);
    assert_eq!(c["livenessProbe"]["grpc"]["port"], port);
    // Requests and limits set.
    for k in ["requests", "limits"] {
        assert!(
            c["resources"][k]["cpu"].is_string() && c["resources"][k]["memory"].is_string(),
            "resources.{k}"
        );
    }
    assert!(
        spec["tolerations"]
            .as_sequence()
            .is_some_and(|t| !t.is_empty()),
        "runs on every node"
    );
    // No labels: the collector forms pools from the Services.
    assert!(
        !format!("{c:?}").contains("--service") && !format!("{c:?}").contains("EVENFLOW_SERVICE"),
        "the DaemonSet needs no --service: {c:?}"
    );
    // The agent never calls the Kubernetes API: no token in the pod.
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(
        kind(&d, "ServiceAccount")["automountServiceAccountToken"],
        false
    );
}

/// Every document of every manifest.
fn all_docs() -> Vec<(String, Value)> {
    let dir = root().join("deploy/kubernetes");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).expect("deploy/kubernetes") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") {
            out.extend(docs(&name).into_iter().map(|d| (name.clone(), d)));
        }
    }
    out
}

#[test]
fn collector_rbac_is_read_only_on_services_endpointslices_and_nodes() {
    let all = all_docs();
    // One role in all the manifests, and it is the collector's.
    let roles: Vec<&(String, Value)> = all
        .iter()
        .filter(|(_, d)| d["kind"] == "Role" || d["kind"] == "ClusterRole")
        .collect();
    assert_eq!(roles.len(), 1, "exactly one role: {roles:?}");
    let (file, role) = roles[0];
    assert_eq!(file, "collector-rbac.yaml");
    assert_eq!(role["kind"], "ClusterRole");
    assert_eq!(role["metadata"]["name"], "evenflow-collector");
    // Exactly get/list/watch on these three, nothing else: no wildcard, no
    // other verb or resource, no named objects, no non-resource URLs.
    let mut granted = Vec::new();
    for r in role["rules"].as_sequence().expect("rules") {
        assert!(
            r["nonResourceURLs"].is_null() && r["resourceNames"].is_null(),
            "{r:?}"
        );
        for g in strs(&r["apiGroups"]) {
            for res in strs(&r["resources"]) {
                for v in strs(&r["verbs"]) {
                    granted.push(format!("{g}/{res}:{v}"));
                }
            }
        }
    }
    granted.sort();
    let mut want: Vec<String> = ["/services", "/nodes", "discovery.k8s.io/endpointslices"]
        .iter()
        .flat_map(|r| ["get", "list", "watch"].map(|v| format!("{r}:{v}")))
        .collect();
    want.sort();
    assert_eq!(
        granted, want,
        "the collector's ClusterRole grants exactly this"
    );
    // Bound to the collector's ServiceAccount only.
    let bindings: Vec<&Value> = all
        .iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
        .collect();
    assert_eq!(bindings.len(), 1, "{bindings:?}");
    let b = bindings[0];
    assert_eq!(b["kind"], "ClusterRoleBinding");
    assert_eq!(b["roleRef"]["kind"], "ClusterRole");
    assert_eq!(b["roleRef"]["name"], "evenflow-collector");
    let subjects = b["subjects"].as_sequence().expect("subjects");
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], "evenflow-collector");
    assert_eq!(subjects[0]["namespace"], "evenflow");
    // The collector runs as that ServiceAccount, with --kubernetes.
    let c = docs("collector.yaml");
    let spec = &kind(&c, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(spec["serviceAccountName"], "evenflow-collector");
    assert!(
        strs(&spec["containers"][0]["args"]).contains(&"--kubernetes".to_owned()),
        "{:?}",
        spec["containers"][0]["args"]
    );
    assert!(
        strs(&docs("kustomization.yaml")[0]["resources"])
            .contains(&"collector-rbac.yaml".to_owned())
    );
}

#[test]
fn collector_runs_without_privilege() {
    let d = docs("collector.yaml");
    let dep = kind(&d, "Deployment");
    let spec = &dep["spec"]["template"]["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let c = &spec["containers"][0];
    assert_eq!(
        strs(&c["securityContext"]["capabilities"]["drop"]),
        vec!["ALL"]
    );
    assert!(
        c["securityContext"]["capabilities"]["add"].is_null(),
        "no added capabilities"
    );
    assert!(spec["hostNetwork"].is_null() || spec["hostNetwork"] == false);
    let svc = kind(&d, "Service");
    let ports: Vec<i64> = svc["spec"]["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|p| p["port"].as_i64())
        .collect();
    assert!(ports.contains(&50052) && ports.contains(&9465), "{ports:?}");
    // The pool file in the ConfigMap is one the collector accepts.
    let cm = docs("pools-example.yaml");
    let toml = kind(&cm, "ConfigMap")["data"]["pools.toml"]
        .as_str()
        .expect("pools.toml")
        .to_owned();
    let parsed = evenflow_collector::service::poolfile::parse(
        std::path::Path::new("pools-example.yaml"),
        &toml,
    )
    .unwrap_or_else(|e| panic!("the example pool file is refused by the collector: {e}"));
    // It refines the Kubernetes pool of the Service web's port http, and
    // declares a pool outside the cluster.
    assert!(parsed.contains_key("default/web:http"), "{parsed:?}");
    assert!(format!("{parsed:?}").contains("10.20.0.12"), "{parsed:?}");
    let k = docs("kustomization.yaml");
    for r in strs(&k[0]["resources"]) {
        assert!(
            root().join("deploy/kubernetes").join(&r).exists(),
            "kustomization lists missing {r}"
        );
    }
}

/// The labels Prometheus's `kubernetes_sd_configs` (role pod) gives a pod
/// made from `template`: its labels and annotations, as
/// `__meta_kubernetes_pod_label_<name>` and `..._annotation_<name>`, every
/// character of the name that is not a letter, digit or `_` made `_`.
fn pod_meta(template: &Value) -> HashMap<String, String> {
    let sanitize = |k: &str| -> String {
        k.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    let mut meta = HashMap::new();
    for (kind, map) in [("label", "labels"), ("annotation", "annotations")] {
        for (k, v) in template["metadata"][map].as_mapping().into_iter().flatten() {
            let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
                continue;
            };
            meta.insert(
                format!("__meta_kubernetes_pod_{kind}_{}", sanitize(k)),
                v.to_owned(),
            );
        }
    }
    meta
}

/// Whether a scrape job's `relabel_configs` keep a target with these
/// labels: its `keep` and `drop` rules applied, their regexes read as
/// alternatives of literals (anything else fails, to be taught here).
fn kept(relabel: &Value, meta: &HashMap<String, String>) -> bool {
    relabel.as_sequence().into_iter().flatten().all(|r| {
        let action = r["action"].as_str().unwrap_or("replace");
        if action != "keep" && action != "drop" {
            return true;
        }
        let value = strs(&r["source_labels"])
            .iter()
            .map(|l| meta.get(l).map_or("", String::as_str))
            .collect::<Vec<_>>()
            .join(r["separator"].as_str().unwrap_or(";"));
        let regex = r["regex"].as_str().expect("keep or drop with a regex");
        assert!(
            !regex.contains(|c| ".*+?()[]{}^$\\".contains(c)),
            "teach kept() regex {regex:?}"
        );
        let matched = regex.split('|').any(|alt| alt == value);
        matched == (action == "keep")
    })
}

/// The pod template of the first `kind` in a manifest.
fn template(file: &str, k: &str) -> Value {
    kind(&docs(file), k)["spec"]["template"].clone()
}

#[test]
fn agent_scrape_job_keeps_the_agents_and_not_the_collector() {
    let path = root().join("deploy/prometheus/scrape.yml");
    let scrape: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).expect("scrape.yml")).expect("YAML");
    let job = |name: &str| {
        scrape["scrape_configs"]
            .as_sequence()
            .and_then(|jobs| jobs.iter().find(|j| j["job_name"] == name))
            .unwrap_or_else(|| panic!("no job {name}"))
            .clone()
    };
    assert!(job("evenflow-collector")["static_configs"].is_sequence());
    let agents = &job("evenflow-agent")["relabel_configs"];
    let agent = pod_meta(&template("agent-daemonset.yaml", "DaemonSet"));
    assert!(kept(agents, &agent), "the agents are scraped: {agent:?}");
    // The collector's pod is in the same namespace and also annotated: its
    // own job scrapes it; a second scrape would double its series (and
    // pair every alert the rules raise on them).
    let collector = pod_meta(&template("collector.yaml", "Deployment"));
    assert!(
        !kept(agents, &collector),
        "the agent job also scrapes the collector: {collector:?}"
    );
}

/// The port of an address the container sets by its environment variable
/// `env` or its flag `flag` (`--flag=ADDR`).
fn addr_port(c: &Value, env: &str, flag: &str) -> Option<i64> {
    let from_env = c["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == env)
        .and_then(|e| e["value"].as_str().map(str::to_owned));
    let from_args = strs(&c["args"])
        .iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")).map(str::to_owned));
    let addr: std::net::SocketAddr = from_args.or(from_env)?.parse().ok()?;
    Some(i64::from(addr.port()))
}

#[test]
fn collector_probes_the_plaintext_query_listener() {
    let t = template("collector.yaml", "Deployment");
    let c = &t["spec"]["containers"][0];
    let grpc = addr_port(c, "EVENFLOW_GRPC_ADDR", "--grpc-addr").expect("gRPC address");
    // The main listener takes --tls-cert (and --tls-client-ca): the
    // kubelet's gRPC probes speak plaintext, so they go to the query
    // listener, which serves health and is never TLS.
    let query =
        addr_port(c, "EVENFLOW_QUERY_ADDR", "--query-addr").expect("a --query-addr listener");
    assert_ne!(query, grpc);
    let port = c["ports"]
        .as_sequence()
        .and_then(|p| p.iter().find(|p| p["name"] == "query"))
        .expect("query port")["containerPort"]
        .as_i64();
    assert_eq!(port, Some(query));
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["grpc"]["port"].as_i64(), Some(query), "{probe}");
    }
}

#[test]
fn alert_rules_pass_promtool() {
    let dir = root().join("deploy/prometheus");
    let check = Command::new("promtool")
        .args(["check", "rules", "evenflow-rules.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool is installed (Debian's prometheus package; cargo xtask setup)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = Command::new("promtool")
        .args(["test", "rules", "evenflow-rules.test.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool");
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

/// Metric names the agent and collector export (from their sources).
fn exported() -> Vec<String> {
    let mut names = Vec::new();
    for f in [
        "agent/src/metrics.rs",
        "collector/src/service/api/metrics.rs",
    ] {
        let text = std::fs::read_to_string(root().join(f)).expect(f);
        for (i, _) in text.match_indices("evenflow_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.push(name);
        }
    }
    names
}

#[test]
fn dashboard_and_rules_query_metrics_that_exist() {
    let names = exported();
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/evenflow.json")).expect("dashboard"),
    )
    .expect("valid JSON");
    let mut exprs: Vec<String> = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap_or_default().to_owned());
        }
    }
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/evenflow-rules.yml"))
        .expect("rules");
    exprs.extend(
        rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr:"))
            .map(str::to_owned),
    );
    assert!(exprs.len() >= 8);
    for e in &exprs {
        for (i, _) in e.match_indices("evenflow_") {
            let name: String = e[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                names.contains(&name),
                "`{name}` (in `{e}`) is not exported by the agent or collector"
            );
        }
    }
    assert!(
        dash["templating"]["list"]
            .as_array()
            .is_some_and(|l| l.iter().any(|v| v["name"] == "pool"))
    );
}

#[test]
fn images_build_with_cargo_xtask_build() {
    for f in ["Dockerfile.agent", "Dockerfile.collector"] {
        let text = std::fs::read_to_string(root().join("deploy/docker").join(f)).expect(f);
        assert!(
            text.contains("cargo xtask build") && text.contains("target/release/"),
            "{f}"
        );
        assert!(text.matches("FROM ").count() >= 2, "{f} is multi-stage");
    }
    // The node image's agent carries no collector (see agent/Cargo.toml).
    let agent = std::fs::read_to_string(root().join("deploy/docker/Dockerfile.agent"))
        .expect("Dockerfile.agent");
    assert!(
        agent.contains("cargo xtask build --node-agent"),
        "the node image builds the agent without the embedded collector"
    );
    let unit = std::fs::read_to_string(root().join("deploy/systemd/evenflow-agent.service"))
        .expect("unit");
    assert!(unit.contains("AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON"));
    assert!(unit.contains("CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON"));
}
