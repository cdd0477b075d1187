//! The filter table: a frontend without a usable endpoint is rejected, as kube-proxy does
//! ("has no endpoints"), so a client sees ECONNREFUSED at once instead of a timeout. A
//! frontend with a Local policy and no local endpoint is dropped ("has no local endpoints").

use std::fmt::Write as _;

use super::names::protocol_name;
use crate::model::DesiredState;

pub fn filter_table(state: &DesiredState) -> String {
    let mut out = String::from("*filter\n:KUBE-SERVICES - [0:0]\n");
    for (addr, spec) in state {
        if spec.usable().next().is_some() {
            continue;
        }
        let proto = protocol_name(addr.protocol);
        let (what, verdict) = if spec.local_only {
            ("has no local endpoints", "DROP")
        } else {
            ("has no endpoints", "REJECT")
        };
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"{} {what}\" -m {proto} -p {proto} -d {} --dport {} -j {verdict}",
            spec.service, addr.ip, addr.port
        );
    }
    out.push_str("COMMIT\n");
    out
}
