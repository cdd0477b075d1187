use tracing_subscriber::{EnvFilter, fmt};

/// `tracing` to stderr: human format, or JSON lines with `json`. RUST_LOG overrides the level.
pub fn init(json: bool, verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// An error and its causes as one line, `outer: inner: root`, skipping a cause whose text
/// the line already holds (many errors, ours and aya's, print their cause in their own
/// message as well as returning it from `source()`).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("cgroup /x cannot be opened: {source}")]
    struct Outer {
        source: std::io::Error,
    }

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let e = anyhow::Error::new(Outer {
            source: std::io::Error::from_raw_os_error(2),
        })
        .context("starting the eBPF dataplane");
        assert_eq!(
            error_chain(e.as_ref()),
            "starting the eBPF dataplane: cgroup /x cannot be opened: No such file or directory (os error 2)"
        );
    }
}
