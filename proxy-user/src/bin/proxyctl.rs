//! proxyctl: explains what this node does with connections to Services.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use proxy_user::{
    DEFAULT_BPFFS,
    ctl::{
        self, CtlError, Installed,
        chains::Table,
        services::{ServiceRow, lookup, render_table, rows, rows_from_rules},
    },
};

/// Reads what proxy-agent installed (the pinned maps in eBPF mode, the KUBE-* chains in
/// iptables mode) and explains it. Works whether or not the agent runs.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// bpffs directory where proxy-agent pinned its maps.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS, global = true)]
    bpffs: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The mode, which programs are attached where, the pin directory and map layout,
    /// each map's fill against its capacity, and the agent's version.
    ///
    /// Example: proxyctl status --json | jq '.maps[] | select(.entries * 10 > .capacity * 8)'
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Frontends with their backends, weights, shares, affinity and counters.
    ///
    /// Example: proxyctl services default/web:http --json
    Services {
        /// Only this service port (`namespace/name` or `namespace/name:port`).
        service: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Which service a connection to IP:PORT[/PROTO] reaches, and which backends with what
    /// probability.
    ///
    /// Example: proxyctl lookup 10.96.0.10:53/udp, proxyctl lookup [2001:db8::a]:80
    Lookup {
        /// The destination, `IP:PORT` or `[IPv6]:PORT`, then `/TCP` or `/UDP` (TCP by
        /// default); an address alone (`10.96.0.10`, `2001:db8::a`) for every frontend
        /// at it.
        frontend: String,
        /// Also say which backend this client's affinity entry would pick: a source IP in
        /// iptables mode, `netns:<cookie>` for a socket on the node in eBPF mode, or the
        /// source IP of a client outside the node (see `proxyctl affinity`).
        #[arg(long, value_name = "CLIENT")]
        client: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Every backend with the frontends that send it new connections, and their shares.
    ///
    /// Example: proxyctl backends --json | jq '.[] | select(.address == "10.0.1.7:8080")'
    Backends {
        #[arg(long)]
        json: bool,
    },
    /// Per-frontend counters, and the datapath's events (translated, refused for no
    /// endpoint, dropped for no local endpoint, ...) by name.
    ///
    /// Example: proxyctl stats --json | jq '.reasons'
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Live ClientIP affinity entries: client, backend, age and timeout.
    ///
    /// Example: proxyctl affinity --service demo/web-sticky:http
    Affinity {
        /// Only this service port (`namespace/name` or `namespace/name:port`).
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// eBPF mode: the NAT flow table of traffic from outside the node (NodePort,
    /// ExternalIP, LoadBalancer): client, frontend, backend, source NAT, state, idle time.
    /// The drop and reject reasons are in `proxyctl stats` (external_*).
    ///
    /// Example: proxyctl flows --json | jq '.[] | select(.backend == "10.0.1.7:8080")'
    Flows {
        #[arg(long)]
        json: bool,
    },
    /// eBPF mode: the UDP flows of sockets on the node: each unconnected socket's
    /// backend per Service it sends to, whether replies came back, idle time and timeout
    /// (`--udp-timeout`, `--udp-stream-timeout` of proxy-agent).
    ///
    /// Example: proxyctl udp-flows --json | jq '.[] | select(.service == "kube-system/kube-dns:dns")'
    UdpFlows {
        #[arg(long)]
        json: bool,
    },
    /// Shell completions for proxyctl, on standard output.
    ///
    /// Example: proxyctl completions bash > /etc/bash_completion.d/proxyctl
    Completions { shell: clap_complete::Shell },
    /// iptables mode: the chains of one service port, as iptables-save prints them.
    ///
    /// Example: proxyctl chains default/web:http
    Chains {
        /// `namespace/name` or `namespace/name:port`.
        service: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxyctl: {}", proxy_user::logging::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn service_rows(installed: &Installed) -> anyhow::Result<Vec<ServiceRow>> {
    Ok(match installed {
        Installed::Ebpf(maps) => rows(maps)?,
        Installed::Iptables(families) => families
            .each()
            .flat_map(|(family, rules)| rows_from_rules(rules, family))
            .collect(),
    })
}

/// The live affinity entries, from the maps or from kube-proxy's `recent` lists.
fn affinity_rows(installed: &Installed) -> anyhow::Result<Vec<ctl::affinity::AffinityRow>> {
    Ok(match installed {
        Installed::Ebpf(maps) => ctl::affinity::ebpf_rows(maps, &service_rows(installed)?),
        Installed::Iptables(families) => {
            let timer_list = std::fs::read_to_string("/proc/timer_list").map_err(|e| {
                anyhow::anyhow!("reading /proc/timer_list for the kernel's jiffies: {e}")
            })?;
            let (jiffies, hz) = ctl::affinity::jiffies_clock(&timer_list).ok_or_else(|| {
                anyhow::anyhow!("/proc/timer_list has no jiffies to age the recent lists with")
            })?;
            families
                .each()
                .flat_map(|(_, rules)| {
                    ctl::affinity::iptables_rows(
                        rules,
                        |list| std::fs::read_to_string(format!("/proc/net/xt_recent/{list}")).ok(),
                        jiffies,
                        hz,
                    )
                })
                .collect()
        }
    })
}

fn print_rows(rows: &[ServiceRow], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
    } else {
        print!("{}", render_table(rows));
    }
    Ok(())
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Command::Completions { shell } = args.command {
        use clap::CommandFactory as _;
        clap_complete::generate(
            shell,
            &mut Args::command(),
            "proxyctl",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    let installed = ctl::open(&args.bpffs)?;
    match args.command {
        Command::Status { json } => {
            let status = match &installed {
                Installed::Ebpf(maps) => ctl::status::ebpf(maps, &args.bpffs),
                // Each family's chains and hooks, and the agent version.
                Installed::Iptables(families) => ctl::status::iptables(families),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                print!("{}", ctl::status::render(&status, now));
            }
        }
        Command::Services { service, json } => {
            let mut rows = service_rows(&installed)?;
            if let Some(service) = &service {
                rows.retain(|r| {
                    &r.service == service || r.service.starts_with(&format!("{service}:"))
                });
            }
            print_rows(&rows, json)?;
        }
        Command::Backends { json } => {
            let rows = ctl::backends::rows_from(&service_rows(&installed)?);
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", ctl::backends::render_table(&rows));
            }
        }
        Command::Affinity { service, json } => {
            let mut rows = affinity_rows(&installed)?;
            if let Some(service) = &service {
                rows.retain(|r| {
                    &r.service == service || r.service.starts_with(&format!("{service}:"))
                });
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", ctl::affinity::render_table(&rows));
            }
        }
        Command::Stats { json } => {
            let reasons = match &installed {
                Installed::Ebpf(maps) => maps.events(),
                Installed::Iptables(families) => {
                    let mut reasons: Vec<(&'static str, u64)> = Vec::new();
                    for (_, rules) in families.each() {
                        for (reason, count) in ctl::stats::iptables_reasons(rules) {
                            match reasons.iter_mut().find(|(r, _)| *r == reason) {
                                Some((_, total)) => *total += count,
                                None => reasons.push((reason, count)),
                            }
                        }
                    }
                    reasons
                }
            };
            let stats = ctl::stats::Stats {
                mode: installed.mode(),
                frontends: ctl::stats::frontends(&service_rows(&installed)?),
                reasons,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print!("{}", ctl::stats::render_table(&stats));
            }
        }
        Command::Lookup {
            frontend,
            client,
            json,
        } => {
            let query = ctl::address::parse_frontend(&frontend).map_err(CtlError::Usage)?;
            let protocol = query.protocol;
            let rows = lookup(service_rows(&installed)?, &query);
            if rows.is_empty() && !json {
                println!(
                    "{frontend}: no service on this node ({} mode); connections to it are not translated",
                    installed.mode()
                );
                return Ok(());
            }
            let Some(client) = client else {
                return print_rows(&rows, json);
            };
            let entries: Vec<ctl::affinity::AffinityRow> = affinity_rows(&installed)?
                .into_iter()
                .filter(|a| {
                    ctl::address::same_client(&a.client, &client)
                        && a.protocol == protocol.as_str()
                        && rows.iter().any(|r| r.frontend == a.frontend)
                })
                .collect();
            if json {
                let out = serde_json::json!({ "frontends": rows, "affinity": entries });
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(());
            }
            print_rows(&rows, false)?;
            match entries.iter().find(|a| a.live) {
                Some(a) => println!(
                    "client {client}: its affinity entry picks {} (last used {:.1} s ago, timeout {} s)",
                    a.backend, a.age_seconds, a.timeout_seconds
                ),
                None => println!(
                    "client {client}: no live affinity entry; a new connection picks by the shares above"
                ),
            }
        }
        Command::Flows { json } => {
            let Installed::Ebpf(maps) = &installed else {
                return Err(CtlError::Usage(
                    "proxy-agent runs in iptables mode here: the kernel's conntrack holds the flows (conntrack -L)".into(),
                )
                .into());
            };
            let now = ctl::affinity::monotonic_ns();
            let config = maps.config();
            let v4 = ctl::flows::rows(maps.nat.iter().filter_map(Result::ok), &config, now);
            let v6 = ctl::flows::rows(maps.nat6.iter().filter_map(Result::ok), &config, now);
            let rows = ctl::flows::merge(v4, v6);
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", ctl::flows::render_table(&rows));
            }
        }
        Command::UdpFlows { json } => {
            let Installed::Ebpf(maps) = &installed else {
                return Err(CtlError::Usage(
                    "proxy-agent runs in iptables mode here: the kernel's conntrack holds the UDP flows (conntrack -L -p udp)".into(),
                )
                .into());
            };
            let rows = ctl::udp_flows::rows(
                maps.udp_flows.iter().filter_map(Result::ok),
                &maps.config(),
                &service_rows(&installed)?,
                ctl::affinity::monotonic_ns(),
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", ctl::udp_flows::render_table(&rows));
            }
        }
        // Printed above, before anything was read.
        Command::Completions { .. } => {}
        Command::Chains { service } => {
            let Installed::Iptables(families) = &installed else {
                return Err(CtlError::Usage(format!(
                    "proxy-agent runs in eBPF mode here: there are no chains (see `proxyctl services {service}`)"
                ))
                .into());
            };
            let per_family: Vec<(proxy_user::model::Family, _, Vec<String>)> = families
                .each()
                .map(|(family, rules)| (family, rules, rules.service_chains(&service)))
                .filter(|(_, _, chains)| !chains.is_empty())
                .collect();
            if per_family.is_empty() {
                return Err(CtlError::Usage(format!(
                    "no chains for service {service}: is it a service port name (namespace/name or namespace/name:port)?"
                ))
                .into());
            }
            // The jumps into the service, then each of its chains in the order reached.
            // The jump rules' comments are `<svc>` or `<svc> cluster IP` and the like; a
            // service port name has no space.
            let mentions = |comment: Option<&str>| {
                comment.is_some_and(|c| c == service || c.starts_with(&format!("{service} ")))
            };
            for (family, rules, chains) in per_family {
                // The same chain names in both families: say which tables these are.
                if family == proxy_user::model::Family::Ipv6 {
                    println!("# IPv6 (ip6tables)");
                }
                for (table, chain) in [
                    (Table::Nat, "KUBE-SERVICES"),
                    (Table::Nat, "KUBE-NODEPORTS"),
                    (Table::Filter, "KUBE-SERVICES"),
                    (Table::Filter, "KUBE-EXTERNAL-SERVICES"),
                ] {
                    for rule in rules.rules_in(table, chain) {
                        if mentions(rule.comment()) {
                            println!("[{}:{}] {}", table.as_str(), rule.packets(), rule.text);
                        }
                    }
                }
                for chain in chains {
                    println!(":{chain}");
                    for rule in rules.chain_rules(&chain) {
                        println!("[{}] {}", rule.packets(), rule.text);
                    }
                }
            }
        }
    }
    Ok(())
}
