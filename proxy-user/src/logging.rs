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
