//! `probe flows` driven by a test: UDP sockets that live across a change of the
//! Service. Started with [`FlowsProbe::start`], the probe does its round 0 and waits; the
//! test changes the Service, then [`FlowsProbe::resume`]s it and reads every round's
//! answers with [`FlowsProbe::finish`].

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::PathBuf,
    process::{ChildStdout, Command, Stdio},
};

use crate::{ChildGuard, bin_dir, unique};

pub struct FlowsProbe {
    child: ChildGuard,
    stdout: BufReader<ChildStdout>,
    wait_file: PathBuf,
    /// What the probe was asked, for assertion messages.
    pub label: String,
}

impl FlowsProbe {
    /// `probe flows --to TO ARGS` on `command` (the `probe` binary in a namespace and
    /// cgroup, as `Netns::command` makes it), returned after its round 0.
    pub fn start(mut command: Command, to: &str, args: &[&str]) -> Self {
        let wait_file = std::env::temp_dir().join(format!("{}-go", unique("epxflows")));
        let mut child = ChildGuard(
            command
                .args(["flows", "--to", to, "--wait-file"])
                .arg(&wait_file)
                .args(args)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("probe flows: {e}")),
        );
        let mut stdout = BufReader::new(child.0.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("probe output");
        assert_eq!(line.trim(), "round 0", "probe flows {args:?}");
        Self {
            child,
            stdout,
            wait_file,
            label: format!("{to} {args:?}"),
        }
    }

    /// The `probe` binary, for [`FlowsProbe::start`]'s command.
    pub fn program() -> PathBuf {
        bin_dir().join("probe")
    }

    /// Lets the probe go on with round 1.
    pub fn resume(&self) {
        std::fs::write(&self.wait_file, b"go").expect("wait file");
    }

    /// Every round's answers (an answer or an error name per socket).
    pub fn finish(mut self) -> (String, Vec<Vec<String>>) {
        let mut out = String::new();
        self.stdout.read_to_string(&mut out).expect("probe output");
        let _ = self.child.0.wait();
        let _ = std::fs::remove_file(&self.wait_file);
        let report: serde_json::Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out:?}: {e}"));
        let rounds = report["rounds"]
            .as_array()
            .map(|rounds| {
                rounds
                    .iter()
                    .map(|r| {
                        r.as_array()
                            .map(|answers| {
                                answers
                                    .iter()
                                    .map(|a| a.as_str().unwrap_or_default().to_owned())
                                    .collect()
                            })
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        (std::mem::take(&mut self.label), rounds)
    }
}

impl Drop for FlowsProbe {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.wait_file);
    }
}
