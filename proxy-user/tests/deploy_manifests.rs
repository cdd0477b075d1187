//! deploy/: every manifest parses as the Kubernetes object its `kind` names (with
//! k8s-openapi's types, and no field left over, so a misspelt or misplaced field is an
//! error rather than a setting silently lost), and the objects say what an operator replacing kube-proxy expects:
//! the DaemonSet's placement, capabilities, probes and volumes, RBAC that grants exactly
//! what the agent uses, and an iptables overlay that only takes capabilities away.
//!
//! kustomization.yaml files are not Kubernetes objects; they are only checked to list the
//! manifests next to them. Rendering with kustomize is `kubectl kustomize deploy/base`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::Deserialize as _;
use yaml_serde::Value;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
const BASE: &str = "base";
const IPTABLES: &str = "overlays/iptables";

/// One object, typed by its `kind`.
#[derive(Debug)]
enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    ConfigMap(ConfigMap),
    DaemonSet(Box<DaemonSet>),
}

/// An object and the file it came from, relative to deploy/ (`base/daemonset.yaml`).
#[derive(Debug)]
struct Manifest {
    file: String,
    object: Object,
}

/// Every `*.yaml` under `dir`, recursively, in a stable order.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(DEPLOY)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// `value` as a `T`, which must keep every field the file gives: k8s-openapi ignores
/// fields it does not know, and so would the API server (or reject them), so a misspelt or
/// misplaced field is found by serializing the object back and looking for what is gone.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(
    file: &str,
    kind: &str,
    value: Value,
) -> T {
    let object: T = yaml_serde::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{file}: not a valid {kind}: {e}"));
    let back = yaml_serde::to_value(&object)
        .unwrap_or_else(|e| panic!("{file}: {kind} does not serialize back: {e}"));
    if let Some(field) = dropped(&value, &back, "") {
        panic!("{file}: {kind} has no field {field} (misspelt, or in the wrong place?)");
    }
    object
}

/// The path of the first field of `original` that `parsed` lacks.
fn dropped(original: &Value, parsed: &Value, path: &str) -> Option<String> {
    match (original, parsed) {
        (Value::Mapping(original), Value::Mapping(parsed)) => {
            original.iter().find_map(|(key, value)| {
                let here = format!("{path}.{}", key.as_str().unwrap_or("?"));
                match parsed.get(key) {
                    None => Some(here),
                    Some(kept) => dropped(value, kept, &here),
                }
            })
        }
        (Value::Sequence(original), Value::Sequence(parsed)) => original
            .iter()
            .zip(parsed)
            .enumerate()
            .find_map(|(i, (value, kept))| dropped(value, kept, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Every object in every manifest under deploy/ (kustomization.yaml files excepted).
fn manifests() -> Vec<Manifest> {
    let mut out = Vec::new();
    for path in yaml_files(Path::new(DEPLOY)) {
        if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
            continue;
        }
        let file = relative(&path);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        for document in yaml_serde::Deserializer::from_str(&text) {
            let value =
                Value::deserialize(document).unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
            if value.is_null() {
                continue; // an empty document, e.g. after a trailing `---`
            }
            let kind = value
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{file}: a document without a `kind`"))
                .to_owned();
            let object = match kind.as_str() {
                "Namespace" => Object::Namespace(typed(&file, &kind, value)),
                "ServiceAccount" => Object::ServiceAccount(typed(&file, &kind, value)),
                "ClusterRole" => Object::ClusterRole(typed(&file, &kind, value)),
                "ClusterRoleBinding" => Object::ClusterRoleBinding(typed(&file, &kind, value)),
                "ConfigMap" => Object::ConfigMap(typed(&file, &kind, value)),
                "DaemonSet" => Object::DaemonSet(Box::new(typed(&file, &kind, value))),
                other => panic!("{file}: kind {other} is not one this test knows how to check"),
            };
            out.push(Manifest {
                file: file.clone(),
                object,
            });
        }
    }
    out
}

/// The objects in one kustomization directory (`base`, `overlays/iptables`).
fn objects_in(dir: &str) -> Vec<Manifest> {
    let prefix = format!("{dir}/");
    manifests()
        .into_iter()
        .filter(|m| m.file.starts_with(&prefix))
        .collect()
}

/// The only object of one kind in `dir`, with its file.
fn one<T>(dir: &str, what: &str, pick: impl Fn(Object) -> Option<T>) -> (String, T) {
    let mut found: Vec<(String, T)> = objects_in(dir)
        .into_iter()
        .filter_map(|m| pick(m.object).map(|o| (m.file, o)))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "deploy/{dir}: expected exactly one {what}, found it in {:?}",
        found.iter().map(|(f, _)| f).collect::<Vec<_>>()
    );
    found.remove(0)
}

fn daemonset(dir: &str) -> (String, DaemonSet) {
    one(dir, "DaemonSet", |o| match o {
        Object::DaemonSet(d) => Some(*d),
        _ => None,
    })
}

fn configmap(dir: &str) -> (String, ConfigMap) {
    one(dir, "ConfigMap", |o| match o {
        Object::ConfigMap(c) => Some(c),
        _ => None,
    })
}

fn pod_spec(file: &str, daemonset: &DaemonSet) -> PodSpec {
    daemonset
        .spec
        .template
        .spec
        .clone()
        .unwrap_or_else(|| panic!("{file}: no pod template spec"))
}

fn agent_container(file: &str, pod: &PodSpec) -> Container {
    assert_eq!(
        pod.containers.len(),
        1,
        "{file}: expected one container, the agent"
    );
    pod.containers[0].clone()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn set(items: Option<&Vec<String>>) -> BTreeSet<&str> {
    items.into_iter().flatten().map(String::as_str).collect()
}

/// The settings file in a ConfigMap, as a YAML mapping.
fn settings(file: &str, configmap: &ConfigMap) -> yaml_serde::Mapping {
    let text = configmap
        .data
        .as_ref()
        .and_then(|d| d.get("config.yaml"))
        .unwrap_or_else(|| panic!("{file}: no config.yaml key"));
    match yaml_serde::from_str(text) {
        Ok(Value::Mapping(mapping)) => mapping,
        Ok(other) => panic!("{file}: config.yaml is not a mapping: {other:?}"),
        Err(e) => panic!("{file}: config.yaml is not YAML: {e}"),
    }
}

#[test]
fn every_manifest_parses_as_its_kind() {
    let all = manifests();
    let kinds = |dir: &str| -> BTreeSet<&'static str> {
        all.iter()
            .filter(|m| m.file.starts_with(&format!("{dir}/")))
            .map(|m| match m.object {
                Object::Namespace(_) => "Namespace",
                Object::ServiceAccount(_) => "ServiceAccount",
                Object::ClusterRole(_) => "ClusterRole",
                Object::ClusterRoleBinding(_) => "ClusterRoleBinding",
                Object::ConfigMap(_) => "ConfigMap",
                Object::DaemonSet(_) => "DaemonSet",
            })
            .collect()
    };
    assert_eq!(
        kinds(BASE),
        BTreeSet::from([
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet"
        ]),
        "deploy/base: the objects a deployment needs"
    );
    assert_eq!(
        kinds(IPTABLES),
        BTreeSet::from(["ConfigMap", "DaemonSet"]),
        "deploy/overlays/iptables: patches of the ConfigMap and the DaemonSet"
    );
}

#[test]
fn kustomizations_list_every_manifest_beside_them() {
    for (dir, field) in [(BASE, "resources"), (IPTABLES, "patchesStrategicMerge")] {
        let path = Path::new(DEPLOY).join(dir).join("kustomization.yaml");
        let file = relative(&path);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        let kustomization: Value =
            yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
        let listed: BTreeSet<String> = kustomization
            .get(field)
            .and_then(Value::as_sequence)
            .unwrap_or_else(|| panic!("{file}: no `{field}` list"))
            .iter()
            .map(|v| {
                v.as_str()
                    .unwrap_or_else(|| panic!("{file}: `{field}` holds a non-string"))
                    .to_owned()
            })
            .collect();
        let beside: BTreeSet<String> = fs::read_dir(Path::new(DEPLOY).join(dir))
            .unwrap_or_else(|e| panic!("deploy/{dir}: {e}"))
            .map(|e| {
                e.unwrap_or_else(|e| panic!("deploy/{dir}: {e}"))
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
            .collect();
        assert_eq!(
            listed, beside,
            "{file}: `{field}` should list exactly the manifests in deploy/{dir}"
        );
    }
}

#[test]
fn daemonset_runs_the_agent_as_an_operator_expects() {
    let (file, ds) = daemonset(BASE);
    let file = file.as_str();
    let spec = &ds.spec;
    let pod = pod_spec(file, &ds);

    assert_eq!(pod.host_network, Some(true), "{file}: hostNetwork");
    assert_eq!(
        pod.host_pid,
        Some(true),
        "{file}: hostPID (the socket reaper finds pods' network namespaces in /proc)"
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical"),
        "{file}: priorityClassName"
    );
    assert!(
        pod.tolerations.iter().flatten().any(|t| {
            t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()
        }),
        "{file}: a toleration with operator Exists and no key (every taint): {:?}",
        pod.tolerations
    );
    let strategy = spec
        .update_strategy
        .as_ref()
        .unwrap_or_else(|| panic!("{file}: no updateStrategy"));
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{file}");
    assert_eq!(
        strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.clone()),
        Some(IntOrString::Int(1)),
        "{file}: rollingUpdate.maxUnavailable"
    );
    assert_eq!(
        pod.node_selector
            .as_ref()
            .and_then(|s| s.get("kubernetes.io/os"))
            .map(String::as_str),
        Some("linux"),
        "{file}: nodeSelector kubernetes.io/os"
    );

    let agent = agent_container(file, &pod);
    assert_eq!(
        agent.command,
        Some(strings(&["/usr/local/bin/proxy-agent"])),
        "{file}: command (where the Dockerfile installs the agent)"
    );
    assert_eq!(
        agent.args,
        Some(strings(&["--config", "/etc/ebpf-proxy/config.yaml"])),
        "{file}: args: the settings are in the ConfigMap"
    );
    let node_name = agent
        .env
        .iter()
        .flatten()
        .find(|v| v.name == "NODE_NAME")
        .unwrap_or_else(|| panic!("{file}: no NODE_NAME environment variable"));
    assert_eq!(
        node_name
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName"),
        "{file}: NODE_NAME from the downward API"
    );

    let security = agent
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{file}: no securityContext"));
    assert_ne!(security.privileged, Some(true), "{file}: privileged");
    assert_eq!(
        security.allow_privilege_escalation,
        Some(false),
        "{file}: allowPrivilegeEscalation"
    );
    let capabilities = security
        .capabilities
        .as_ref()
        .unwrap_or_else(|| panic!("{file}: no capabilities"));
    assert_eq!(
        set(capabilities.add.as_ref()),
        BTreeSet::from([
            "BPF",
            "NET_ADMIN",
            "NET_RAW",
            "PERFMON",
            "SYS_ADMIN",
            "SYS_PTRACE"
        ]),
        "{file}: capabilities.add"
    );
    assert_eq!(
        capabilities.drop,
        Some(strings(&["ALL"])),
        "{file}: capabilities.drop"
    );

    for (name, probe, path) in [
        ("livenessProbe", &agent.liveness_probe, "/livez"),
        ("readinessProbe", &agent.readiness_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{file}: {name} is not an httpGet"));
        assert_eq!(get.path.as_deref(), Some(path), "{file}: {name} path");
        assert_eq!(get.port, IntOrString::Int(10256), "{file}: {name} port");
        assert_eq!(
            get.host, None,
            "{file}: {name}: hostNetwork probes the node"
        );
    }

    // Volume name -> where the container mounts it.
    let mounts: BTreeMap<&str, &str> = agent
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    let volumes = pod.volumes.clone().unwrap_or_default();
    for host_path in ["/sys/fs/bpf", "/sys/fs/cgroup", "/run/xtables.lock"] {
        let volume = volumes
            .iter()
            .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == host_path))
            .unwrap_or_else(|| panic!("{file}: no hostPath volume for {host_path}"));
        assert_eq!(
            mounts.get(volume.name.as_str()).copied(),
            Some(host_path),
            "{file}: hostPath {host_path} (volume {}) mounted at the same path",
            volume.name
        );
    }
    let (_, config) = configmap(BASE);
    let config_name = config
        .metadata
        .name
        .as_deref()
        .expect("base ConfigMap name");
    let config_volume = volumes
        .iter()
        .find(|v| v.config_map.as_ref().is_some_and(|c| c.name == config_name))
        .unwrap_or_else(|| panic!("{file}: ConfigMap {config_name} is not a volume"));
    assert_eq!(
        mounts.get(config_volume.name.as_str()).copied(),
        Some("/etc/ebpf-proxy"),
        "{file}: where ConfigMap {config_name} is mounted"
    );
}

#[test]
fn cluster_role_grants_exactly_what_the_agent_uses() {
    let (file, role) = one(BASE, "ClusterRole", |o| match o {
        Object::ClusterRole(r) => Some(r),
        _ => None,
    });
    // (apiGroup, resource, verbs), one per group and resource a rule names.
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{file}: unexpected resourceNames or nonResourceURLs in {rule:?}"
        );
        let mut verbs = rule.verbs.clone();
        verbs.sort();
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                granted.insert((group.clone(), resource.clone(), verbs.clone()));
            }
        }
    }
    let expected: BTreeSet<(String, String, Vec<String>)> = [
        ("", "services", &["list", "watch"][..]),
        ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
        ("", "nodes", &["get", "list", "watch"]),
        ("", "events", &["create", "patch"]),
        ("events.k8s.io", "events", &["create", "patch"]),
    ]
    .into_iter()
    .map(|(g, r, v)| (g.to_owned(), r.to_owned(), strings(v)))
    .collect();
    assert_eq!(granted, expected, "{file}: the rules, as a set");
}

#[test]
fn binding_gives_the_role_to_the_agents_service_account() {
    let (_, namespace) = one(BASE, "Namespace", |o| match o {
        Object::Namespace(n) => Some(n),
        _ => None,
    });
    let namespace = namespace.metadata.name.expect("base Namespace name");
    let (sa_file, account) = one(BASE, "ServiceAccount", |o| match o {
        Object::ServiceAccount(s) => Some(s),
        _ => None,
    });
    let account_name = account.metadata.name.clone().expect("ServiceAccount name");
    assert_eq!(
        account.metadata.namespace.as_deref(),
        Some(namespace.as_str()),
        "{sa_file}: namespace"
    );
    let (_, role) = one(BASE, "ClusterRole", |o| match o {
        Object::ClusterRole(r) => Some(r),
        _ => None,
    });
    let (file, binding) = one(BASE, "ClusterRoleBinding", |o| match o {
        Object::ClusterRoleBinding(b) => Some(b),
        _ => None,
    });
    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io"),
        "{file}"
    );
    assert_eq!(binding.role_ref.kind, "ClusterRole", "{file}");
    assert_eq!(
        Some(binding.role_ref.name.as_str()),
        role.metadata.name.as_deref(),
        "{file}: roleRef names the ClusterRole"
    );
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{file}: one subject");
    assert_eq!(subjects[0].kind, "ServiceAccount", "{file}");
    assert_eq!(subjects[0].name, account_name, "{file}: subject name");
    assert_eq!(
        subjects[0].namespace.as_deref(),
        Some(namespace.as_str()),
        "{file}: subject namespace"
    );

    let (ds_file, ds) = daemonset(BASE);
    assert_eq!(
        ds.metadata.namespace.as_deref(),
        Some(namespace.as_str()),
        "{ds_file}: namespace"
    );
    assert_eq!(
        pod_spec(&ds_file, &ds).service_account_name.as_deref(),
        Some(account_name.as_str()),
        "{ds_file}: serviceAccountName"
    );
}

#[test]
fn configmap_holds_the_settings_the_daemonset_points_at() {
    let (file, config) = configmap(BASE);
    let base = settings(&file, &config);
    let get = |key: &str| base.get(key).and_then(Value::as_str);
    assert_eq!(get("mode"), Some("auto"), "{file}: mode");
    assert_eq!(get("source"), Some("kubernetes"), "{file}: source");
    // The probes' port is where the agent serves them.
    assert_eq!(
        get("healthz-addr"),
        Some("0.0.0.0:10256"),
        "{file}: healthz-addr (the probes use port 10256)"
    );
    for key in base.keys() {
        let key = key
            .as_str()
            .unwrap_or_else(|| panic!("{file}: config.yaml has a non-string key {key:?}"));
        assert!(
            !key.starts_with('-'),
            "{file}: config.yaml key {key} is a flag name without its dashes"
        );
    }

    // The overlay repeats the whole file (a strategic merge replaces the string): the same
    // settings, only the mode differs.
    let (overlay_file, overlay_config) = configmap(IPTABLES);
    assert_eq!(
        overlay_config.metadata.name, config.metadata.name,
        "{overlay_file}: patches the base's ConfigMap"
    );
    let mut overlay = settings(&overlay_file, &overlay_config);
    assert_eq!(
        overlay.get("mode").and_then(Value::as_str),
        Some("iptables"),
        "{overlay_file}: mode"
    );
    overlay.insert("mode".into(), "auto".into());
    assert_eq!(
        overlay, base,
        "{overlay_file}: config.yaml should be the base's with only `mode` changed"
    );
}

#[test]
fn iptables_overlay_only_takes_the_ebpf_capabilities_away() {
    let (base_file, base) = daemonset(BASE);
    let (file, patch) = daemonset(IPTABLES);
    let file = file.as_str();
    assert_eq!(
        (&patch.metadata.name, &patch.metadata.namespace),
        (&base.metadata.name, &base.metadata.namespace),
        "{file}: patches the base's DaemonSet"
    );
    assert_eq!(
        patch.spec.selector, base.spec.selector,
        "{file}: the selector is immutable; the patch must repeat the base's"
    );
    let container = agent_container(file, &pod_spec(file, &patch));
    // Containers merge by name: another name would add a second container.
    assert_eq!(
        container.name,
        agent_container(&base_file, &pod_spec(&base_file, &base)).name,
        "{file}: the container is the base's"
    );
    let capabilities = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .unwrap_or_else(|| panic!("{file}: no capabilities"));
    assert_eq!(
        set(capabilities.add.as_ref()),
        BTreeSet::from(["NET_ADMIN", "NET_RAW"]),
        "{file}: capabilities.add in iptables mode"
    );
    assert_eq!(
        pod_spec(file, &patch).host_pid,
        Some(false),
        "{file}: iptables mode destroys no sockets: no hostPID"
    );
    assert!(
        capabilities.drop.is_none() || capabilities.drop == Some(strings(&["ALL"])),
        "{file}: capabilities.drop stays ALL: {:?}",
        capabilities.drop
    );
}
