//! Why the benchmark skips an arm the agent does not serve in the measured address family:
//! read from the agent's own log, where a mode that leaves a frontend out says so
//! (`family_not_served`), so that the report shows the arm as skipped with the agent's
//! reason instead of failing the whole run or measuring connections that cannot succeed.

/// The cause the agent gives, in its JSON log, for the first frontend it leaves out
/// (`frontend [2001:db8:19::1]:80 is not served: CAUSE`), prefixed with the warning's code;
/// None when it serves everything it was given.
pub fn family_not_served(log: &str) -> Option<String> {
    let line = log
        .lines()
        .find(|l| l.contains("family_not_served") || l.contains(" is not served: "))?;
    let message = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v["fields"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| line.to_owned());
    let cause = message
        .split_once(" is not served: ")
        .map_or(message.as_str(), |(_, cause)| cause);
    Some(format!("family_not_served: {cause}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_cause_is_the_reason() {
        let log = concat!(
            r#"{"level":"INFO","fields":{"message":"proxy-agent starting"}}"#,
            "\n",
            r#"{"level":"WARN","fields":{"message":"Service bench/svc-0: frontend [2001:db8:19::1]:80 is not served: IPv6 frontends are not served in iptables mode yet: ip6tables rules are not written"}}"#,
            "\n",
            r#"{"level":"WARN","fields":{"message":"Service bench/svc-1: frontend [2001:db8:19::2]:80 is not served: other"}}"#,
            "\n",
        );
        assert_eq!(
            family_not_served(log).as_deref(),
            Some(
                "family_not_served: IPv6 frontends are not served in iptables mode yet: ip6tables rules are not written"
            )
        );
    }

    #[test]
    fn a_log_that_serves_everything_gives_no_reason() {
        let log = r#"{"level":"INFO","fields":{"message":"synced","elapsed_us":640}}"#;
        assert_eq!(family_not_served(log), None);
    }
}
