//! `--config FILE`: a program's settings as a YAML mapping from its long flag names
//! (without the dashes) to values, as the DaemonSet's ConfigMap holds them:
//!
//! ```yaml
//! mode: auto
//! bpffs: /sys/fs/bpf/ebpf-proxy
//! log-json: true
//! ```
//!
//! The file becomes command-line arguments placed before the real ones, and the command is
//! built with `args_override_self`, so a flag on the command line wins over the file. An
//! argument with an environment variable (`node-name` from `NODE_NAME`) takes the variable
//! when it is set: command line, then environment, then file, then the default.
//!
//! Every key is checked against the program's flags, so a typo is an error naming the key
//! and the file, not a setting silently ignored.

use std::{ffi::OsString, path::Path};

use clap::{Arg, ArgAction, Command};
use yaml_serde::Value;

/// Flags that are actions, not settings: never taken from a file (a DaemonSet whose
/// ConfigMap said `cleanup: true` would remove the datapath on every start).
const NOT_SETTINGS: &[&str] = &["config", "help", "version", "cleanup", "cleanup-kube-proxy"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--config {path}: cannot read: {reason}")]
    Read { path: String, reason: String },
    #[error("--config {path}: not YAML: {reason}")]
    Syntax { path: String, reason: String },
    #[error("--config {path}: expected a mapping of setting: value, found {found}")]
    NotAMapping { path: String, found: &'static str },
    #[error("--config {path}: `{key}` is not a setting (settings: {known})")]
    Unknown {
        path: String,
        key: String,
        known: String,
    },
    #[error("--config {path}: `{key}` {reason}")]
    BadValue {
        path: String,
        key: String,
        reason: String,
    },
}

/// `argv` with the settings of the `--config` file it names (if any) inserted after the
/// program name; `command` names the flags that exist.
pub fn expand(argv: Vec<OsString>, command: &Command) -> Result<Vec<OsString>, ConfigError> {
    let Some(path) = config_path(&argv) else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let settings = settings(&path, &text, command, |name| std::env::var_os(name))?;
    let mut out = Vec::with_capacity(argv.len() + settings.len());
    let mut argv = argv.into_iter();
    out.extend(argv.next());
    out.extend(settings);
    out.extend(argv);
    Ok(out)
}

/// The value of `--config PATH` or `--config=PATH`, the last one if repeated.
fn config_path(argv: &[OsString]) -> Option<std::path::PathBuf> {
    let mut found = None;
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if text == "--config" {
            found = args.next().map(std::path::PathBuf::from);
        } else if let Some(value) = text.strip_prefix("--config=") {
            found = Some(value.into());
        }
    }
    found
}

/// The arguments a config file's text stands for. `env` reads the environment.
pub fn settings(
    path: &Path,
    text: &str,
    command: &Command,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<OsString>, ConfigError> {
    let path_text = path.display().to_string();
    let document: Value = yaml_serde::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path_text.clone(),
        reason: e.to_string(),
    })?;
    let mapping = match document {
        Value::Mapping(mapping) => mapping,
        // An empty file (or only comments) sets nothing.
        Value::Null => return Ok(Vec::new()),
        other => {
            return Err(ConfigError::NotAMapping {
                path: path_text,
                found: kind(&other),
            });
        }
    };
    let mut args = Vec::new();
    for (key, value) in mapping {
        let Value::String(key) = key else {
            return Err(ConfigError::NotAMapping {
                path: path_text,
                found: "a key that is not a string",
            });
        };
        let bad = |reason: String| ConfigError::BadValue {
            path: path_text.clone(),
            key: key.clone(),
            reason,
        };
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .filter(|_| !NOT_SETTINGS.contains(&key.as_str()))
            .ok_or_else(|| ConfigError::Unknown {
                path: path_text.clone(),
                key: key.clone(),
                known: known_settings(command),
            })?;
        if arg
            .get_env()
            .and_then(|name| name.to_str())
            .is_some_and(|name| env(name).is_some_and(|v| !v.is_empty()))
        {
            continue;
        }
        args.extend(arg_values(arg, &key, value).map_err(bad)?);
    }
    Ok(args)
}

/// `--key=value` for a setting, or `--key` for a switch set to true.
fn arg_values(arg: &Arg, key: &str, value: Value) -> Result<Vec<OsString>, String> {
    let switch = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::Count);
    let flag = format!("--{key}");
    match (switch, value) {
        (true, Value::Bool(true)) => Ok(vec![flag.into()]),
        (true, Value::Bool(false)) => Ok(Vec::new()),
        (true, other) => Err(format!("is a switch: true or false, not {}", kind(&other))),
        (false, Value::String(s)) => Ok(vec![format!("{flag}={s}").into()]),
        (false, Value::Number(n)) => Ok(vec![format!("{flag}={n}").into()]),
        (false, Value::Sequence(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(format!("{flag}={s}").into()),
                Value::Number(n) => Ok(format!("{flag}={n}").into()),
                other => Err(format!("lists strings or numbers, not {}", kind(&other))),
            })
            .collect(),
        (false, other) => Err(format!(
            "needs a value (a string or number), not {}",
            kind(&other)
        )),
    }
}

fn known_settings(command: &Command) -> String {
    command
        .get_arguments()
        .filter_map(Arg::get_long)
        .filter(|l| !NOT_SETTINGS.contains(l))
        .collect::<Vec<_>>()
        .join(", ")
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> Command {
        Command::new("agent")
            .args_override_self(true)
            .arg(Arg::new("config").long("config"))
            .arg(Arg::new("mode").long("mode").default_value("auto"))
            .arg(Arg::new("max").long("max-services"))
            .arg(Arg::new("node").long("node-name").env("NODE_NAME"))
            .arg(Arg::new("json").long("log-json").action(ArgAction::SetTrue))
    }

    fn expand_with(
        text: &str,
        cli: &[&str],
        env: Option<&str>,
    ) -> Result<Vec<String>, ConfigError> {
        let args = settings(Path::new("c.yaml"), text, &command(), |name| {
            (name == "NODE_NAME")
                .then(|| env.map(OsString::from))
                .flatten()
        })?;
        let mut argv = vec![OsString::from("agent")];
        argv.extend(args);
        argv.extend(cli.iter().map(OsString::from));
        Ok(argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect())
    }

    #[test]
    fn settings_become_flags_that_the_command_line_overrides() {
        let text = "mode: iptables\nmax-services: 10\nlog-json: true\nnode-name: a\n";
        let argv = expand_with(text, &["--mode", "ebpf"], None).expect("valid file");
        let matches = command().try_get_matches_from(&argv).expect("parses");
        assert_eq!(
            matches.get_one::<String>("mode").map(String::as_str),
            Some("ebpf")
        );
        assert_eq!(
            matches.get_one::<String>("max").map(String::as_str),
            Some("10")
        );
        assert!(matches.get_flag("json"));
        assert_eq!(
            matches.get_one::<String>("node").map(String::as_str),
            Some("a")
        );
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let argv = expand_with("node-name: from-file\n", &[], Some("from-env")).expect("valid");
        assert_eq!(
            argv,
            ["agent"],
            "the file's node-name must give way to NODE_NAME"
        );
    }

    #[test]
    fn a_false_switch_sets_nothing_and_an_empty_file_is_no_settings() {
        assert_eq!(
            expand_with("log-json: false\n", &[], None).expect("valid"),
            ["agent"]
        );
        assert_eq!(
            expand_with("# nothing\n", &[], None).expect("valid"),
            ["agent"]
        );
    }

    #[test]
    fn mistakes_name_the_file_and_the_key() {
        let err = |text: &str| expand_with(text, &[], None).expect_err(text).to_string();
        assert_eq!(
            err("mod: ebpf\n"),
            "--config c.yaml: `mod` is not a setting \
             (settings: mode, max-services, node-name, log-json)"
        );
        assert_eq!(
            err("log-json: yes please\n"),
            "--config c.yaml: `log-json` is a switch: true or false, not a string"
        );
        assert_eq!(
            err("mode:\n"),
            "--config c.yaml: `mode` needs a value (a string or number), not nothing"
        );
        assert_eq!(
            err("- mode\n"),
            "--config c.yaml: expected a mapping of setting: value, found a list"
        );
        assert_eq!(
            err("config: other.yaml\n"),
            "--config c.yaml: `config` is not a setting \
             (settings: mode, max-services, node-name, log-json)"
        );
        assert!(err("mode: [\n").starts_with("--config c.yaml: not YAML: "));
    }

    #[test]
    fn the_config_path_is_found_in_either_spelling() {
        let argv = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_path(&argv(&["agent", "--config", "a.yaml"])),
            Some("a.yaml".into())
        );
        assert_eq!(
            config_path(&argv(&["agent", "--config=b.yaml", "-v"])),
            Some("b.yaml".into())
        );
        assert_eq!(config_path(&argv(&["agent", "--mode", "ebpf"])), None);
    }
}
