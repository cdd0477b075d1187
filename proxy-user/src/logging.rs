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

/// An error and its causes as one line, `outer: inner: root`. Our errors' messages never
/// repeat their cause (it is their `source()`), so each level is printed once.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    Chain(error).to_string()
}

/// Displays an error with its causes, `outer: inner: root`, for use in format strings.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("cgroup /x cannot be opened")]
    struct Outer {
        source: std::io::Error,
    }

    #[test]
    fn every_cause_is_printed_once() {
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
