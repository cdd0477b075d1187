//! Starting proxy-agent the way deploy/'s DaemonSet starts it, so that the privileged
//! tests can run against exactly that (`EBPF_PROXY_AGENT_LAUNCH=daemonset`): the
//! container's command and arguments, its environment (the downward API's node name), its
//! capabilities (the bounding set is cut to the `add` list, as the container runtime does
//! for a root process that drops ALL), no-new-privileges, and the ConfigMap's files at the
//! path the DaemonSet mounts them. Only what a test needs for isolation (manifest
//! directory, cgroup, pin directory) is added as flags, which override the config file.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::ConfigMap};

use crate::{bin_dir, command_in};

/// The environment variable that asks for this launch.
pub const ENV: &str = "EBPF_PROXY_AGENT_LAUNCH";

/// The node name the downward API gives the pod in tests.
pub const NODE_NAME: &str = "daemonset-node";

pub fn requested() -> bool {
    std::env::var(ENV).is_ok_and(|v| v == "daemonset")
}

/// deploy/base, from the workspace root.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base")
}

/// What the DaemonSet's agent container is started with.
#[derive(Debug)]
pub struct Launch {
    /// Command and arguments.
    pub argv: Vec<String>,
    /// Literal environment, and the downward API's node name.
    pub env: Vec<(String, String)>,
    /// Capabilities added after dropping ALL (`BPF`, `NET_ADMIN`, ...).
    pub capabilities: Vec<String>,
    pub no_new_privs: bool,
    /// Where the ConfigMap is mounted, and its files.
    pub config_mount: String,
    pub config_files: BTreeMap<String, String>,
}

impl Launch {
    /// Read from deploy/base/daemonset.yaml and configmap.yaml; panics naming what is
    /// missing, since a DaemonSet without it would not start either.
    pub fn from_deploy() -> Self {
        let dir = deploy_dir();
        let read = |file: &str| {
            let path = dir.join(file);
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let daemonset: DaemonSet =
            yaml_serde::from_str(&read("daemonset.yaml")).expect("daemonset.yaml: a DaemonSet");
        let configmap: ConfigMap =
            yaml_serde::from_str(&read("configmap.yaml")).expect("configmap.yaml: a ConfigMap");
        let pod = daemonset
            .spec
            .template
            .spec
            .expect("daemonset.yaml: no pod spec");
        let container = pod
            .containers
            .first()
            .expect("daemonset.yaml: no container");
        let mut argv = container.command.clone().unwrap_or_default();
        argv.extend(container.args.clone().unwrap_or_default());
        let env = container
            .env
            .iter()
            .flatten()
            .map(|var| {
                let value = match (&var.value, &var.value_from) {
                    (Some(value), _) => value.clone(),
                    (None, Some(from))
                        if from
                            .field_ref
                            .as_ref()
                            .is_some_and(|f| f.field_path == "spec.nodeName") =>
                    {
                        NODE_NAME.to_string()
                    }
                    _ => panic!(
                        "daemonset.yaml: env {} has a source tests cannot give",
                        var.name
                    ),
                };
                (var.name.clone(), value)
            })
            .collect();
        let security = container
            .security_context
            .clone()
            .expect("daemonset.yaml: no securityContext");
        let capabilities = security.capabilities.unwrap_or_default();
        assert_eq!(
            capabilities.drop,
            Some(vec!["ALL".to_string()]),
            "daemonset.yaml: capabilities must drop ALL"
        );
        // The volume the ConfigMap is mounted from, and where.
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| {
                v.config_map
                    .as_ref()
                    .is_some_and(|c| Some(c.name.clone()) == configmap.metadata.name)
            })
            .expect("daemonset.yaml: the ConfigMap is not a volume");
        let config_mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume.name)
            .expect("daemonset.yaml: the ConfigMap volume is not mounted")
            .mount_path
            .clone();
        Self {
            argv,
            env,
            capabilities: capabilities.add.unwrap_or_default(),
            no_new_privs: security.allow_privilege_escalation == Some(false),
            config_mount,
            config_files: configmap.data.unwrap_or_default(),
        }
    }

    /// The command, in network namespace `netns`, with the ConfigMap's files written
    /// under `work` and the arguments pointing there instead of the mount path.
    pub fn command(&self, netns: &str, work: &Path) -> Command {
        let config_dir = work.join("configmap");
        fs::create_dir_all(&config_dir).expect("configmap dir");
        for (name, text) in &self.config_files {
            fs::write(config_dir.join(name), text).expect("write configmap file");
        }
        let (program, args) = self.argv.split_first().expect("daemonset.yaml: no command");
        let program = Path::new(program)
            .file_name()
            .expect("daemonset.yaml: command is not a path");
        let mut command = command_in(netns, None, "setpriv");
        let bounding: Vec<String> = self
            .capabilities
            .iter()
            .map(|c| format!("+{}", c.to_lowercase()))
            .collect();
        command
            .arg(format!("--bounding-set=-all,{}", bounding.join(",")))
            .arg("--inh-caps=-all");
        if self.no_new_privs {
            command.arg("--no-new-privs");
        }
        command.arg("--").arg(bin_dir().join(program));
        for arg in args {
            match arg.strip_prefix(&self.config_mount) {
                Some(rest) => command.arg(format!("{}{rest}", config_dir.display())),
                None => command.arg(arg),
            };
        }
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }
}
