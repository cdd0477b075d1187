//! What `proxyctl` reads in iptables mode: the chains ebpf-proxy's iptables mode installed,
//! through the dataplane's one iptables-save parser (`saved`) and its reading of kube-proxy's
//! chains (`installed`), which the agent's own read-back uses too.

pub use crate::dataplane::iptables::{
    installed::{EndpointView, FrontendView, InstalledRules, Verdict},
    saved::{Chain, Counters, LineError, Rule, SkippedLine, Table},
};
