//! `proxyctl status`: the mode, what is attached where, the pin directory and its map
//! layout, how full each map is against its capacity, and which agent programs it.
//!
//! eBPF mode reads the link pins (each one's kernel link and program ids), the agent
//! record the agent keeps in its own map, and every map's entry count. iptables mode reads
//! the chains under the owner marker and the version the agent wrote on it.

use std::{fmt::Write as _, path::Path};

use aya::programs::links::{FdLink, PinnedLink};
use proxy_common::{AgentInfo, names};
use serde::Serialize;

use super::{
    IptablesFamilies,
    table::{Align, Table},
};
use crate::{
    dataplane::ebpf::{
        loader::{link_pin, tc_link_pin},
        maps::Maps,
    },
    model::Family,
};

#[derive(Debug, Serialize, PartialEq)]
pub struct Status {
    pub mode: &'static str,
    /// Pin directory (eBPF mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_dir: Option<String>,
    /// Map layout version (`V1`), from the map names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// iptables backend (iptables mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<&'static str>,
    pub agent: Option<Agent>,
    /// What the kernel offered the datapath (eBPF mode), as the agent probed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Kernel>,
    pub attachments: Vec<Attachment>,
    pub maps: Vec<MapFill>,
    /// iptables mode: chains and rules per table.
    pub chains: Vec<ChainCount>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Agent {
    pub version: String,
    /// Process id when it last wrote (eBPF mode), and whether that process still runs.
    pub pid: Option<u32>,
    pub running: Option<bool>,
    pub started_unix: Option<u64>,
    /// When it last programmed a change.
    pub synced_unix: Option<u64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Kernel {
    /// `uname -r` where the agent runs.
    pub release: String,
    /// Each feature the agent probed.
    pub features: Vec<FeatureState>,
    /// `tcx`, `netlink`, or `none` when the tc programs did not load.
    pub tc_attach: &'static str,
    /// Programs the kernel refused, and why (the first refusal, in its words).
    pub programs_not_loaded: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_error: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct FeatureState {
    pub name: &'static str,
    pub since: &'static str,
    pub present: bool,
    /// What the node does without it.
    pub without: String,
}

impl Kernel {
    fn from_agent(info: &AgentInfo) -> Self {
        use proxy_common::features::{KernelFeature, TC_ATTACH_NETLINK, TC_ATTACH_TCX, Without};
        let features = KernelFeature::ALL
            .into_iter()
            .filter(|f| info.features_probed & f.bit() != 0)
            .map(|f| FeatureState {
                name: f.name(),
                since: f.since(),
                present: info.features_present & f.bit() != 0,
                without: match f.without() {
                    Without::Fallback(what) => what.to_owned(),
                    Without::Loses(path) => format!("the {} is not loaded", path.name()),
                },
            })
            .collect();
        let programs_not_loaded = names::ALL_PROGRAMS
            .iter()
            .enumerate()
            .filter(|(bit, _)| info.programs_failed & (1 << bit) != 0)
            .map(|(_, p)| (*p).to_owned())
            .collect();
        let load_error = AgentInfo::text(&info.load_error);
        Self {
            release: AgentInfo::text(&info.kernel).to_owned(),
            features,
            tc_attach: match info.tc_attach {
                TC_ATTACH_TCX => "tcx",
                TC_ATTACH_NETLINK => "netlink",
                _ => "none",
            },
            programs_not_loaded,
            load_error: (!load_error.is_empty()).then(|| load_error.to_owned()),
        }
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Attachment {
    /// A BPF program, or in iptables mode the chain jumped to.
    pub program: String,
    /// `cgroup` for the socket programs; `iptables` (IPv4) or `ip6tables` (IPv6) for a
    /// jump from a built-in chain.
    pub hook: &'static str,
    pub target: String,
    /// Kernel ids, when the link pin is there and open.
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    pub attached: bool,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ChainCount {
    /// `IPv4` (iptables) or `IPv6` (ip6tables).
    pub family: &'static str,
    pub table: &'static str,
    pub chains: usize,
    pub rules: usize,
}

/// Status of the eBPF mode from the maps and link pins in `dir`.
pub fn ebpf(maps: &Maps, dir: &Path) -> Status {
    let info = maps.agent_info();
    let cgroup = info
        .as_ref()
        .map(|i| AgentInfo::text(&i.cgroup).to_owned())
        .unwrap_or_else(|| "(unknown: no agent record)".into());
    let attachments = names::ALL_SOCK_PROGRAMS
        .into_iter()
        .map(|program| {
            let ids = PinnedLink::from_pin(link_pin(dir, program))
                .ok()
                .and_then(|link| FdLink::from(link).info().ok())
                .map(|info| (info.id(), info.program_id()));
            Attachment {
                program: program.to_owned(),
                hook: "cgroup",
                target: cgroup.clone(),
                link_id: ids.map(|i| i.0),
                program_id: ids.map(|i| i.1),
                attached: ids.is_some(),
            }
        })
        .collect::<Vec<_>>();
    let mut attachments = attachments;
    attachments.extend(tc_attachments(dir));
    Status {
        mode: "ebpf",
        pin_dir: Some(dir.display().to_string()),
        layout: Some(format!("V{}", proxy_common::LAYOUT_VERSION)),
        backend: None,
        agent: info.map(|i| Agent {
            version: AgentInfo::text(&i.version).to_owned(),
            pid: Some(i.pid),
            running: Some(is_agent(i.pid)),
            started_unix: Some(i.started_unix),
            synced_unix: Some(i.synced_unix).filter(|t| *t != 0),
        }),
        kernel: info.as_ref().map(Kernel::from_agent),
        attachments,
        maps: fill(maps),
        chains: Vec::new(),
    }
}

/// Status of the iptables mode from the installed chains of each family: iptables' and,
/// when the agent wrote there too, ip6tables' hooks and chain counts, each labelled with
/// its family; the agent version from the IPv4 tables' owner marker.
pub fn iptables(families: &IptablesFamilies) -> Status {
    let mut chains = Vec::new();
    let mut attachments = Vec::new();
    for (family, rules) in families.each() {
        let hook = match family {
            Family::Ipv4 => "iptables",
            Family::Ipv6 => "ip6tables",
        };
        chains.extend(
            rules
                .chain_counts()
                .into_iter()
                .map(|(table, chains, rules)| ChainCount {
                    family: family.as_str(),
                    table,
                    chains,
                    rules,
                }),
        );
        attachments.extend(
            rules
                .hooks()
                .into_iter()
                .map(|(table, from, to)| Attachment {
                    program: to,
                    hook,
                    target: format!("{table} {from}"),
                    link_id: None,
                    program_id: None,
                    attached: true,
                }),
        );
    }
    Status {
        mode: "iptables",
        pin_dir: None,
        layout: None,
        backend: Some(families.backend()),
        agent: families.ipv4.agent_version().map(|version| Agent {
            version,
            pid: None,
            running: None,
            started_unix: None,
            synced_unix: None,
        }),
        kernel: None,
        attachments,
        maps: Vec::new(),
        chains,
    }
}

/// The tc programs as the kernel holds them in this network namespace (TCX links and
/// netlink filters), with the link id of a TCX link pinned in `dir`; and any pinned link
/// the kernel no longer runs, as not attached.
fn tc_attachments(dir: &Path) -> Vec<Attachment> {
    use crate::dataplane::ebpf::{tc_attach, tc_filters::Direction};
    let pinned_link = |program: &str, interface: &str| {
        PinnedLink::from_pin(tc_link_pin(dir, program, interface))
            .ok()
            .and_then(|link| FdLink::from(link).info().ok())
            .map(|info| (info.id(), info.program_id()))
    };
    let mut attachments: Vec<Attachment> = tc_attach::attached()
        .into_iter()
        .map(|a| {
            let (program, hook) = match a.direction {
                Direction::Ingress => (names::PROG_TC_INGRESS, "tc-ingress"),
                Direction::Egress => (names::PROG_TC_EGRESS, "tc-egress"),
            };
            let (target, link_id) = match a.mechanism {
                tc_attach::Mechanism::Tcx => (
                    a.interface.clone(),
                    pinned_link(program, &a.interface).map(|ids| ids.0),
                ),
                tc_attach::Mechanism::Netlink => (
                    format!(
                        "{} (netlink filter, prio {} handle {:#x})",
                        a.interface,
                        tc_attach::PRIORITY,
                        tc_attach::HANDLE
                    ),
                    None,
                ),
            };
            Attachment {
                program: program.to_owned(),
                hook,
                target,
                link_id,
                program_id: a.program_id,
                attached: true,
            }
        })
        .collect();
    // Pins whose link the kernel does not run (e.g. an interface deleted under it).
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((program, interface)) = name
            .strip_prefix("link_")
            .and_then(|rest| rest.split_once('@'))
        else {
            continue;
        };
        let interface = interface.replace('~', ".");
        let known = attachments
            .iter()
            .any(|a| a.program == program && a.target == interface);
        if !known {
            let ids = pinned_link(program, &interface);
            attachments.push(Attachment {
                hook: if program.ends_with("egress") {
                    "tc-egress"
                } else {
                    "tc-ingress"
                },
                program: program.to_owned(),
                target: interface,
                link_id: ids.map(|i| i.0),
                program_id: ids.map(|i| i.1),
                attached: false,
            });
        }
    }
    attachments.sort_by(|a, b| (&a.program, &a.target).cmp(&(&b.program, &b.target)));
    attachments
}

/// Whether `pid` is a running proxy-agent (its command name, in this PID namespace).
fn is_agent(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "proxy-agent")
}

/// Entries against capacity for every map, counted by walking its keys; for the two
/// arrays, what the service values use of them (slots in their regions, frontend ids).
/// The socket-local storage map has no entries of its own to count, and the TCP ring is
/// full by design (a record per index, overwritten in turn).
fn fill(maps: &Maps) -> Vec<MapFill> {
    let entry = |map: &'static str, entries: usize| MapFill {
        map,
        entries: entries as u64,
        capacity: u64::from(maps.capacity(map)),
    };
    let services: Vec<(proxy_common::Frontend, proxy_common::Service)> =
        maps.services.iter().filter_map(Result::ok).collect();
    let slots: usize = services.iter().map(|(_, v)| v.slots as usize).sum();
    let ids = services
        .iter()
        .filter(|(fe, _)| fe.scope == proxy_common::SCOPE_SOCKET)
        .count();
    vec![
        entry(names::MAP_SERVICES, services.len()),
        entry(names::MAP_SLOTS, slots),
        entry(names::MAP_MEMBERS, maps.members.keys().count()),
        entry(names::MAP_AFFINITY, maps.affinity.keys().count()),
        entry(names::MAP_REVNAT, maps.revnat.keys().count()),
        entry(names::MAP_STATS, ids),
        entry(names::MAP_NAMES, maps.names.keys().count()),
        entry(names::MAP_NAT, maps.nat.keys().count()),
        entry(names::MAP_NAT6, maps.nat6.keys().count()),
        entry(names::MAP_IFACES, maps.ifaces.keys().count()),
    ]
}

/// `3 s ago`, `5 min ago`, `2 h ago`.
fn ago(then: u64, now: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..120 => format!("{s} s ago"),
        120..7200 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

pub fn render(status: &Status, now_unix: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "mode            {}", status.mode);
    if let Some(dir) = &status.pin_dir {
        let layout = status.layout.as_deref().unwrap_or("?");
        let _ = writeln!(out, "pin directory   {dir} (map layout {layout})");
    }
    if let Some(backend) = status.backend {
        let _ = writeln!(out, "iptables        {backend} backend");
    }
    match &status.agent {
        None => {
            let _ = writeln!(
                out,
                "agent           unknown (no record of the agent that wrote this)"
            );
        }
        Some(agent) => {
            let mut line = format!("agent           {}", agent.version);
            if let (Some(pid), Some(running)) = (agent.pid, agent.running) {
                let state = if running { "running" } else { "not running" };
                let _ = write!(line, ", pid {pid} ({state})");
            }
            if let Some(started) = agent.started_unix {
                let _ = write!(line, ", started {}", ago(started, now_unix));
            }
            if let Some(synced) = agent.synced_unix {
                let _ = write!(line, ", last programmed {}", ago(synced, now_unix));
            }
            let _ = writeln!(out, "{line}");
        }
    }
    if let Some(kernel) = &status.kernel {
        render_kernel(&mut out, kernel);
    }
    if !status.attachments.is_empty() {
        let mut table = Table::new(&[
            ("PROGRAM", Align::Left),
            ("HOOK", Align::Left),
            ("TARGET", Align::Left),
            ("LINK", Align::Left),
            ("PROGRAM-ID", Align::Left),
        ]);
        let id = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
        for a in &status.attachments {
            let target = if a.attached {
                a.target.clone()
            } else {
                "NOT ATTACHED (no link pin)".to_string()
            };
            table.row([
                a.program.clone(),
                a.hook.to_owned(),
                target,
                id(a.link_id),
                id(a.program_id),
            ]);
        }
        let _ = write!(out, "\n{}", table.render());
    }
    if !status.maps.is_empty() {
        let mut table = Table::new(&[
            ("MAP", Align::Left),
            ("ENTRIES", Align::Right),
            ("CAPACITY", Align::Right),
            ("FILL", Align::Right),
        ]);
        for m in &status.maps {
            let percent = if m.capacity == 0 {
                0.0
            } else {
                m.entries as f64 * 100.0 / m.capacity as f64
            };
            table.row([
                m.map.to_owned(),
                m.entries.to_string(),
                m.capacity.to_string(),
                format!("{percent:.1} %"),
            ]);
        }
        let _ = write!(out, "\n{}", table.render());
    }
    if !status.chains.is_empty() {
        let mut table = Table::new(&[
            ("FAMILY", Align::Left),
            ("TABLE", Align::Left),
            ("CHAINS", Align::Right),
            ("RULES", Align::Right),
        ]);
        for c in &status.chains {
            table.row([
                c.family.to_owned(),
                c.table.to_owned(),
                c.chains.to_string(),
                c.rules.to_string(),
            ]);
        }
        let _ = write!(out, "\n{}", table.render());
    }
    out
}

/// The kernel, what it lacks and what that costs, by name.
fn render_kernel(out: &mut String, kernel: &Kernel) {
    let _ = writeln!(out, "kernel          {}", kernel.release);
    let tc = match kernel.tc_attach {
        "none" => "NOT LOADED",
        "tcx" => "loaded, attached as TCX links",
        _ => "loaded, attached as clsact filters through netlink",
    };
    let _ = writeln!(
        out,
        "datapaths       socket load balancer: loaded; traffic from outside the node: {tc}"
    );
    let missing: Vec<&FeatureState> = kernel.features.iter().filter(|f| !f.present).collect();
    if missing.is_empty() {
        let _ = writeln!(
            out,
            "features        all {} probed are present",
            kernel.features.len()
        );
    }
    for (i, f) in missing.iter().enumerate() {
        let label = if i == 0 { "degraded" } else { "" };
        let _ = writeln!(
            out,
            "{label:<15} {} (Linux {}) missing: {}",
            f.name, f.since, f.without
        );
    }
    if !kernel.programs_not_loaded.is_empty() {
        let _ = writeln!(
            out,
            "not loaded      {}: {}",
            kernel.programs_not_loaded.join(", "),
            kernel
                .load_error
                .as_deref()
                .unwrap_or("(no reason recorded)")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::chains::InstalledRules;

    fn sample() -> Status {
        Status {
            mode: "ebpf",
            pin_dir: Some("/sys/fs/bpf/ebpf-proxy".into()),
            layout: Some("V1".into()),
            backend: None,
            agent: Some(Agent {
                version: "0.1.0".into(),
                pid: Some(42),
                running: Some(false),
                started_unix: Some(1_000),
                synced_unix: Some(1_290),
            }),
            kernel: None,
            attachments: vec![
                Attachment {
                    program: "epx_connect4".into(),
                    hook: "cgroup",
                    target: "/sys/fs/cgroup".into(),
                    link_id: Some(7),
                    program_id: Some(31),
                    attached: true,
                },
                Attachment {
                    program: "epx_sendmsg4".into(),
                    hook: "cgroup",
                    target: "/sys/fs/cgroup".into(),
                    link_id: None,
                    program_id: None,
                    attached: false,
                },
            ],
            maps: vec![MapFill {
                map: "EPX_SVC_V1",
                entries: 3,
                capacity: 65_536,
            }],
            chains: Vec::new(),
        }
    }

    #[test]
    fn the_table_names_the_agent_the_attachments_and_the_fill() {
        let text = render(&sample(), 1_300);
        assert_eq!(
            text,
            "mode            ebpf\n\
             pin directory   /sys/fs/bpf/ebpf-proxy (map layout V1)\n\
             agent           0.1.0, pid 42 (not running), started 5 min ago, last programmed 10 s ago\n\
             \n\
             PROGRAM       HOOK    TARGET                      LINK  PROGRAM-ID\n\
             epx_connect4  cgroup  /sys/fs/cgroup              7     31\n\
             epx_sendmsg4  cgroup  NOT ATTACHED (no link pin)  -     -\n\
             \n\
             MAP         ENTRIES  CAPACITY   FILL\n\
             EPX_SVC_V1        3     65536  0.0 %\n"
        );
    }

    #[test]
    fn json_keeps_its_field_names() {
        let json = serde_json::to_value(sample()).expect("serializes");
        assert_eq!(json["mode"], "ebpf");
        assert_eq!(json["layout"], "V1");
        assert_eq!(json["agent"]["running"], false);
        assert_eq!(json["attachments"][0]["link_id"], 7);
        assert_eq!(json["attachments"][1]["attached"], false);
        assert_eq!(json["maps"][0]["capacity"], 65_536);
        assert!(json.get("backend").is_none());
    }

    /// What an agent on Linux 5.10 records: no bpf_set_retval, no TCX, tc on netlink.
    fn agent_on_5_10() -> AgentInfo {
        use proxy_common::features::{KernelFeature, TC_ATTACH_NETLINK};
        let all = KernelFeature::ALL.iter().fold(0, |bits, f| bits | f.bit());
        let mut info: AgentInfo = bytemuck::Zeroable::zeroed();
        info.pid = 1;
        info.kernel = AgentInfo::field("5.10.0-46-amd64");
        info.features_probed = all;
        info.features_present = all & !KernelFeature::SetRetval.bit() & !KernelFeature::Tcx.bit();
        info.tc_attach = TC_ATTACH_NETLINK;
        info
    }

    #[test]
    fn each_missing_feature_is_named_with_its_cost() {
        let kernel = Kernel::from_agent(&agent_on_5_10());
        assert_eq!(kernel.tc_attach, "netlink");
        assert!(kernel.programs_not_loaded.is_empty());
        let mut out = String::new();
        render_kernel(&mut out, &kernel);
        assert_eq!(
            out,
            "kernel          5.10.0-46-amd64\n\
             datapaths       socket load balancer: loaded; traffic from outside the node: loaded, attached as clsact filters through netlink\n\
             degraded        bpf_set_retval (Linux 5.18) missing: a connect or send to a Service without endpoints fails with EPERM instead of ECONNREFUSED\n\
             \x20               tcx_links (Linux 6.6) missing: the tc programs are attached as clsact filters through netlink, replaced in place on restart\n"
        );
        let json = serde_json::to_value(&kernel).expect("serializes");
        assert_eq!(json["features"][0]["name"], "bpf_set_retval");
        assert_eq!(json["features"][0]["present"], false);
    }

    #[test]
    fn a_refused_program_is_listed_with_the_kernels_reason() {
        let mut info = agent_on_5_10();
        info.tc_attach = proxy_common::features::TC_ATTACH_NONE;
        info.programs_failed = 0b11_0000;
        info.load_error =
            AgentInfo::field("epx_tc_ingress: combined stack size of 2 calls is 544. Too large");
        let kernel = Kernel::from_agent(&info);
        assert_eq!(
            kernel.programs_not_loaded,
            ["epx_tc_ingress", "epx_tc_egress"]
        );
        let mut out = String::new();
        render_kernel(&mut out, &kernel);
        assert!(
            out.contains("traffic from outside the node: NOT LOADED"),
            "{out}"
        );
        assert!(
            out.contains(
                "not loaded      epx_tc_ingress, epx_tc_egress: epx_tc_ingress: combined stack size"
            ),
            "{out}"
        );
    }

    /// A family's nat table as iptables-save prints it: the owner marker, the hooks into
    /// KUBE-SERVICES and KUBE-POSTROUTING, and one Service chain with `rules` rules.
    fn saved_nat(rules: usize) -> String {
        let mut nat = String::from(
            "*nat\n\
             :PREROUTING ACCEPT [0:0]\n\
             :OUTPUT ACCEPT [0:0]\n\
             :POSTROUTING ACCEPT [0:0]\n\
             :EBPF-PROXY-OWNED - [0:0]\n\
             :KUBE-SERVICES - [0:0]\n\
             :KUBE-POSTROUTING - [0:0]\n\
             -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
             -A EBPF-PROXY-OWNED -m comment --comment \"ebpf-proxy 0.1.0\" -j RETURN\n\
             -A KUBE-POSTROUTING -j RETURN\n",
        );
        for _ in 0..rules {
            nat.push_str("-A KUBE-SERVICES -j RETURN\n");
        }
        nat.push_str("COMMIT\n");
        nat
    }

    #[test]
    fn iptables_mode_shows_each_familys_hooks_and_chains_labelled() {
        let families = IptablesFamilies {
            ipv4: InstalledRules::parse(&saved_nat(2), "*filter\nCOMMIT\n"),
            ipv6: Some(InstalledRules::parse(&saved_nat(5), "*filter\nCOMMIT\n")),
        };
        let status = iptables(&families);
        let hooks: Vec<String> = status
            .attachments
            .iter()
            .map(|a| format!("{} {} -> {}", a.hook, a.target, a.program))
            .collect();
        assert_eq!(
            hooks,
            [
                "iptables nat PREROUTING -> KUBE-SERVICES",
                "iptables nat OUTPUT -> KUBE-SERVICES",
                "iptables nat POSTROUTING -> KUBE-POSTROUTING",
                "ip6tables nat PREROUTING -> KUBE-SERVICES",
                "ip6tables nat OUTPUT -> KUBE-SERVICES",
                "ip6tables nat POSTROUTING -> KUBE-POSTROUTING",
            ]
        );
        assert_eq!(status.agent.map(|a| a.version).as_deref(), Some("0.1.0"));
        let text = render(&iptables(&families), 0);
        for part in [
            "KUBE-SERVICES     ip6tables  nat PREROUTING   -     -\n",
            "FAMILY  TABLE   CHAINS  RULES\n\
             IPv4    nat          2      3\n\
             IPv4    filter       0      0\n\
             IPv6    nat          2      6\n\
             IPv6    filter       0      0\n",
        ] {
            assert!(text.contains(part), "{part:?} missing:\n{text}");
        }
        let json = serde_json::to_value(iptables(&families)).expect("serializes");
        assert_eq!(json["chains"][2]["family"], "IPv6", "{json}");
        assert_eq!(json["attachments"][3]["hook"], "ip6tables", "{json}");

        // An agent that wrote no ip6tables chains: the IPv4 part alone.
        let ipv4_only = IptablesFamilies {
            ipv6: None,
            ..families
        };
        let status = iptables(&ipv4_only);
        assert!(status.attachments.iter().all(|a| a.hook == "iptables"));
        assert!(status.chains.iter().all(|c| c.family == "IPv4"));
    }
}
