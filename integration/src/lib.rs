//! Privileged test harness: isolated topologies of network namespaces, a cgroup per test,
//! the real `proxy-agent` binary, and the `probe` workload. Everything is removed by a
//! guard's `Drop`, and every name carries the test process id and a counter, so two runs
//! never collide.
//!
//! Network safety: namespaces are connected only to each other (veth pairs created inside
//! them), never to the root namespace, and use 198.18.0.0/15 and 2001:db8::/32. A client
//! namespace has no route to the service ranges (198.19.0.0/16, 2001:db8:19::/64), so a
//! connect the programs do not translate fails with ENETUNREACH instead of leaving the
//! machine.

pub mod bench_addresses;
pub mod bench_profile;
pub mod bench_report;
pub mod bench_skip;
pub mod bench_stats;
pub mod daemonset;
pub mod flows_probe;
pub mod kube_node;
pub mod manifests;
pub mod objects;
pub mod two_nodes;

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde::Deserialize;

/// Lower and upper bounds on a binomial count (n draws, probability p) that a correct
/// implementation leaves with probability below one in a million (5.3 standard deviations).
pub fn binomial_bounds(n: usize, p: f64) -> (f64, f64) {
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (n as f64 * p - 5.3 * sd, n as f64 * p + 5.3 * sd)
}

/// How many times slower than this machine the tests run: `EBPF_PROXY_TIME_SCALE`, set
/// by the kernel tier (qemu without KVM is 10-30x slower). Every wait of the harness is
/// multiplied by it; no test asserts a duration.
pub fn time_scale() -> u32 {
    std::env::var("EBPF_PROXY_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s| *s >= 1)
        .unwrap_or(1)
}

/// `d` scaled by [`time_scale`].
pub fn scaled(d: Duration) -> Duration {
    d * time_scale()
}

/// Set by CI: a privileged test that cannot run fails instead of skipping.
pub const REQUIRE_ENV: &str = "EBPF_PROXY_REQUIRE_PRIVILEGED";

/// How many socket programs the agent attaches (connect, sendmsg, recvmsg and
/// getpeername, for each family).
pub const SOCKET_PROGRAMS: usize = proxy_common::names::ALL_SOCK_PROGRAMS.len();

/// True when the test can run. When it cannot, it skips with a message, or panics if
/// [`REQUIRE_ENV`] is set.
pub fn privileged() -> bool {
    let missing = if unsafe { libc::geteuid() } != 0 {
        Some("not running as root".to_string())
    } else if !Path::new("/sys/fs/bpf").exists()
        || !proxy_user::dataplane::ebpf::loader::is_bpffs(Path::new("/sys/fs/bpf"))
    {
        Some("/sys/fs/bpf is not a mounted bpffs (run `cargo xtask setup`)".to_string())
    } else if !bin_dir().join("proxy-agent").exists() {
        Some(format!(
            "{} is missing (run `cargo xtask build`)",
            bin_dir().join("proxy-agent").display()
        ))
    } else {
        None
    };
    match missing {
        None => true,
        Some(reason) if std::env::var_os(REQUIRE_ENV).is_some() => {
            panic!("privileged test cannot run: {reason} ({REQUIRE_ENV} is set)")
        }
        Some(reason) => {
            eprintln!("skipped: {reason}");
            false
        }
    }
}

#[macro_export]
macro_rules! require_privileges {
    () => {
        if !$crate::privileged() {
            return;
        }
    };
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `epx<pid><n>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Where cargo put the binaries: next to the test executable's `deps` directory.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EBPF_PROXY_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("deps dir");
    if dir.ends_with("deps") {
        dir.parent().expect("target dir").to_owned()
    } else {
        dir.to_owned()
    }
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Self {
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A veth pair from this namespace (`local_if`, `local_ip`/24) to `peer` (`peer_if`,
    /// `peer_ip`/24), both ends up.
    pub fn link_to(
        &self,
        local_if: &str,
        local_ip: &str,
        peer: &Netns,
        peer_if: &str,
        peer_ip: &str,
    ) {
        self.ip(&[
            "link", "add", local_if, "type", "veth", "peer", "name", peer_if, "netns", &peer.name,
        ]);
        self.ip(&["addr", "add", &format!("{local_ip}/24"), "dev", local_if]);
        peer.ip(&["addr", "add", &format!("{peer_ip}/24"), "dev", peer_if]);
        self.ip(&["link", "set", local_if, "up"]);
        peer.ip(&["link", "set", peer_if, "up"]);
    }

    /// Adds IPv6 `addr` (with its prefix length) to `dev`, usable at once: duplicate
    /// address detection is skipped (`nodad`), as no other host can hold a test address.
    pub fn add_addr6(&self, dev: &str, addr: &str) {
        self.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"]);
    }

    /// `sysctl -w SETTING` inside the namespace (`net.ipv4.ip_forward=1`).
    pub fn sysctl(&self, setting: &str) {
        run(self.command("sysctl", None).args(["-qw", setting]));
    }

    /// A command that runs inside this namespace and, if given, inside `cgroup`.
    pub fn command(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        cgroup: Option<&Cgroup>,
    ) -> Command {
        command_in(&self.name, cgroup.map(|c| c.path.as_path()), program)
    }
}

/// A command that joins network namespace `netns` (setns only: unlike `ip netns exec`,
/// /sys is not remounted, so bpffs and the cgroup tree stay visible) and, if given, the
/// cgroup directory `cgroup`.
pub fn command_in(
    netns: &str,
    cgroup: Option<&Path>,
    program: impl AsRef<std::ffi::OsStr>,
) -> Command {
    let netns = fs::File::open(format!("/run/netns/{netns}")).expect("open netns");
    let procs = cgroup.map(|c| {
        fs::OpenOptions::new()
            .write(true)
            .open(c.join("cgroup.procs"))
            .expect("open cgroup.procs")
    });
    let mut cmd = Command::new(program);
    // SAFETY: only async-signal-safe syscalls (write, setns) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Die with the test thread that started us, even if it never gets to Drop
            // (a test runner killed from outside): no helper outlives its test.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Join the cgroup first: after setns, /sys may be another view.
            if let Some(procs) = &procs {
                let zero = b"0";
                if libc::write(procs.as_raw_fd(), zero.as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A cgroup v2 directory for one test's clients; the socket programs attach here.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(name: &str) -> Self {
        let root = proxy_user::cgroup::find_cgroup2().expect("cgroup2 mount");
        let path = root.join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Its processes are children of this test, stopped by their own guards first.
        for _ in 0..50 {
            if fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove cgroup {}", self.path.display());
    }
}

/// A child process, killed (by its PID) and reaped on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct BackendHost {
    pub name: String,
    pub ip: String,
    /// Its IPv6 address, beside `ip`.
    pub ip6: String,
    _server: ChildGuard,
    pub netns: Netns,
}

/// One client namespace joined by a veth pair to each backend namespace:
/// backend i is 198.18.(i+1).2 and 2001:db8:18:(i+1)::2 (the client's end .1 and ::1) and
/// serves HTTP on 8080 and UDP on 5353, over both families, as `web-i`.
pub struct Topology {
    pub id: String,
    pub backends: Vec<BackendHost>,
    pub client: Netns,
    pub cgroup: Cgroup,
}

impl Topology {
    pub fn new(backends: usize) -> Self {
        let id = unique("epx");
        let cgroup = Cgroup::new(&id);
        let client = Netns::new(format!("{id}-c"));
        let mut hosts = Vec::new();
        for i in 0..backends {
            let netns = Netns::new(format!("{id}-b{i}"));
            let net = i + 1;
            let ip = format!("198.18.{net}.2");
            let ip6 = format!("2001:db8:18:{net}::2");
            let link = format!("vb{i}");
            client.link_to(&link, &format!("198.18.{net}.1"), &netns, "eth0", &ip);
            client.add_addr6(&link, &format!("2001:db8:18:{net}::1/64"));
            netns.add_addr6("eth0", &format!("{ip6}/64"));
            let name = format!("web-{i}");
            let server = spawn_ready(netns.command(bin_dir().join("probe"), None).args([
                "serve",
                "--name",
                &name,
                "--tcp",
                "0.0.0.0:8080",
                "--tcp",
                "[::]:8080",
                "--udp",
                "0.0.0.0:5353",
                "--udp",
                "[::]:5353",
            ]));
            hosts.push(BackendHost {
                name,
                ip,
                ip6,
                _server: server,
                netns,
            });
        }
        Self {
            id,
            backends: hosts,
            client,
            cgroup,
        }
    }

    /// Runs `probe connect` in the client namespace and cgroup.
    pub fn probe(&self, args: &[&str]) -> Report {
        let out = run(self
            .client
            .command(bin_dir().join("probe"), Some(&self.cgroup))
            .arg("connect")
            .args(args));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("probe output {out:?}: {e}"))
    }

    /// Every backend as a ready endpoint (pod name = backend name).
    pub fn ready_endpoints(&self) -> Vec<manifests::Endpoint<'_>> {
        self.backends
            .iter()
            .map(|b| manifests::Endpoint::ready(&b.ip, &b.name))
            .collect()
    }

    /// Every backend as a ready endpoint by its IPv6 address (for a slice of
    /// `addressType: IPv6`).
    pub fn ready_endpoints6(&self) -> Vec<manifests::Endpoint<'_>> {
        self.backends
            .iter()
            .map(|b| manifests::Endpoint::ready(&b.ip6, &b.name))
            .collect()
    }

    /// Routes the service range to the first backend link in the client namespace. The
    /// iptables mode needs a route before OUTPUT's DNAT picks the real backend; the eBPF
    /// mode does not (it rewrites the address before routing), and its tests keep the
    /// range unroutable so an untranslated connect fails with ENETUNREACH.
    pub fn route_service_range(&self) {
        self.client
            .ip(&["route", "add", "198.19.0.0/16", "dev", "vb0"]);
        self.client
            .ip(&["-6", "route", "add", "2001:db8:19::/64", "dev", "vb0"]);
        // After DNAT, a packet keeps the source address of vb0; each backend routes its
        // replies back to the client namespace (and nowhere else).
        for (i, backend) in self.backends.iter().enumerate() {
            backend.netns.ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("198.18.{}.1", i + 1),
            ]);
            backend.netns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("2001:db8:18:{}::1", i + 1),
            ]);
        }
    }

    /// A command in the client namespace and cgroup (for curl, socat...).
    pub fn client_command(&self, program: &str) -> Command {
        self.client.command(program, Some(&self.cgroup))
    }
}

/// Spawns a `probe serve` (or any server that prints `ready` once listening) and waits
/// for that line.
pub fn spawn_ready(cmd: &mut Command) -> ChildGuard {
    let mut child = ChildGuard(
        cmd.stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}")),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read ready");
    assert_eq!(line.trim(), "ready", "server did not start");
    child
}

/// What `probe connect` reports.
#[derive(Debug, Default, Deserialize)]
pub struct Report {
    pub attempts: usize,
    pub answers: BTreeMap<String, usize>,
    pub errors: BTreeMap<String, usize>,
    pub peers: BTreeMap<String, usize>,
    pub reply_sources: BTreeMap<String, usize>,
    #[serde(default)]
    pub sequence: Vec<String>,
}

impl Report {
    pub fn count(&self, name: &str) -> usize {
        self.answers.get(name).copied().unwrap_or(0)
    }
}

/// The agent, started as a user would start it, on a manifest directory of its own.
pub struct Agent {
    child: Option<ChildGuard>,
    /// Extra arguments for proxy-agent (capacities, say).
    pub extra_args: Vec<String>,
    /// Extra environment variables for proxy-agent.
    pub env: Vec<(String, std::ffi::OsString)>,
    /// `--mode`: `ebpf` unless a test says otherwise.
    pub mode: &'static str,
    pub bpffs: PathBuf,
    pub manifests: PathBuf,
    pub cgroup: PathBuf,
    /// The agent runs in this network namespace (the client's), so its /metrics and
    /// /healthz listeners are private to the test and reached from inside it only.
    pub netns: String,
    /// Start it as deploy/'s DaemonSet does (see [`daemonset`]); default: when
    /// `EBPF_PROXY_AGENT_LAUNCH=daemonset`.
    pub as_daemonset: bool,
    /// Start it in a mount namespace of its own where /proc/sys is read-only, as a
    /// container runtime gives a container that is not privileged.
    pub read_only_proc_sys: bool,
    work: PathBuf,
}

impl Agent {
    pub fn new(topology: &Topology) -> Self {
        Self::in_namespace(&topology.id, &topology.client, &topology.cgroup)
    }

    /// An agent named `id` (its pin directory and work directory) running in `netns` and
    /// attaching to `cgroup`.
    pub fn in_namespace(id: &str, netns: &Netns, cgroup: &Cgroup) -> Self {
        let work = std::env::temp_dir().join(id);
        let manifests = work.join("manifests");
        fs::create_dir_all(&manifests).expect("manifest dir");
        Self {
            child: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            mode: "ebpf",
            bpffs: PathBuf::from("/sys/fs/bpf").join(id),
            manifests,
            cgroup: cgroup.path.clone(),
            netns: netns.name.clone(),
            as_daemonset: daemonset::requested(),
            read_only_proc_sys: false,
            work,
        }
    }

    /// The agent's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.0.id())
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("agent log");
        let mut command = match self.as_daemonset {
            // As deploy/'s DaemonSet starts it: its command, arguments, environment,
            // capabilities and ConfigMap; the test's own settings are flags on top.
            true => {
                let mut command = daemonset::Launch::from_deploy().command(&self.netns, &self.work);
                if self.mode != "ebpf" {
                    command.args(["--mode", self.mode]);
                }
                command
            }
            false if self.read_only_proc_sys => {
                // The bind mount stays in the new mount namespace; the test's is untouched.
                let mut command = command_in(&self.netns, None, "unshare");
                command
                    .args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(
                        "mount --bind /proc/sys /proc/sys \
                         && mount -o remount,bind,ro /proc/sys && exec \"$0\" \"$@\"",
                    )
                    .arg(bin_dir().join("proxy-agent"))
                    .args(["--mode", self.mode, "--log-json"]);
                command
            }
            false => {
                let mut command = command_in(&self.netns, None, bin_dir().join("proxy-agent"));
                command.args(["--mode", self.mode, "--log-json"]);
                command
            }
        };
        let child = command
            .args(["--poll-ms", "100"])
            .arg("--source")
            .arg(&self.manifests)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stderr(log)
            .spawn()
            .expect("spawn proxy-agent");
        self.child = Some(ChildGuard(child));
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log_path(&self) -> PathBuf {
        self.work.join("agent.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGTERM, then wait: the agent's graceful stop.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent not running");
        unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
        child.0.wait().expect("wait agent")
    }

    pub fn kill(&mut self) {
        drop(self.child.take());
    }

    /// Writes a manifest file atomically (write, then rename), as editors and kubectl do.
    pub fn write(&self, file: &str, text: &str) {
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        fs::write(&tmp, text).expect("write manifest");
        fs::rename(&tmp, self.manifests.join(file)).expect("rename manifest");
    }

    pub fn remove(&self, file: &str) {
        fs::remove_file(self.manifests.join(file)).expect("remove manifest");
    }

    /// proxyctl inside the agent's namespace, where its iptables rules (if any) are.
    pub fn proxyctl(&self, args: &[&str]) -> std::process::Output {
        command_in(&self.netns, None, bin_dir().join("proxyctl"))
            .arg("--bpffs")
            .arg(&self.bpffs)
            .args(args)
            .output()
            .expect("run proxyctl")
    }

    /// `proxyctl services --json`, parsed.
    pub fn services(&self) -> serde_json::Value {
        let out = self.proxyctl(&["services", "--json"]);
        if !out.status.success() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Waits until `ready(services)` holds; panics with the agent log after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) {
        let start = Instant::now();
        let timeout = scaled(timeout);
        while start.elapsed() < timeout {
            if ready(&self.services()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out waiting for {what}; proxyctl says {}\nagent log:\n{}",
            self.services(),
            self.log()
        );
    }

    /// Waits until frontend `frontend` (as proxyctl prints it: `198.19.0.10:80`,
    /// `[2001:db8:19::a]:80`) lists `backends` backends: a dual-stack Service has one
    /// frontend per family under one service name.
    pub fn wait_frontend(&self, frontend: &str, backends: usize) {
        self.wait_for(
            &format!("frontend {frontend} with {backends} backends"),
            Duration::from_secs(10),
            |s| {
                self.socket_programs_attached()
                    && s.as_array().is_some_and(|rows| {
                        rows.iter().any(|r| {
                            r["frontend"] == frontend
                                && r["backends"]
                                    .as_array()
                                    .is_some_and(|b| b.len() == backends)
                        })
                    })
            },
        );
    }

    /// In eBPF mode, whether the agent's latest start has attached (or adopted) every
    /// socket program. It attaches them after its first full sync, so a frontend already
    /// in the maps is not yet one that connects are translated to: a wait on the maps
    /// alone let a test's first connects race the attachment (ENETUNREACH).
    fn socket_programs_attached(&self) -> bool {
        if self.mode != "ebpf" {
            return true;
        }
        let log = self.log();
        let latest = log
            .rsplit_once("proxy-agent starting")
            .map_or(log.as_str(), |(_, tail)| tail);
        latest.matches("\"message\":\"socket program\"").count() >= SOCKET_PROGRAMS
    }

    /// Waits until the frontend for `service` lists `backends` backends (and, in eBPF
    /// mode, the socket programs are attached).
    pub fn wait_backends(&self, service: &str, backends: usize) {
        self.wait_for(
            &format!("{service} with {backends} backends"),
            Duration::from_secs(10),
            |s| {
                self.socket_programs_attached()
                    && s.as_array().is_some_and(|rows| {
                        rows.iter().any(|r| {
                            r["service"] == service
                                && r["backends"]
                                    .as_array()
                                    .is_some_and(|b| b.len() == backends)
                        })
                    })
            },
        );
    }
}

impl Agent {
    /// `proxy-agent --cleanup` as the agent ran: inside its namespace, so that the iptables
    /// chains it removes are the test's, never the machine's.
    pub fn cleanup_command(&self) -> Command {
        let mut cmd = command_in(&self.netns, None, bin_dir().join("proxy-agent"));
        cmd.arg("--cleanup").arg("--bpffs").arg(&self.bpffs);
        cmd
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.child.take());
        // Its namespace may be gone already (a Topology dropped first): then there are
        // no iptables chains left to remove, and panicking here, maybe while unwinding,
        // would abort the test binary and leak every other test's namespaces.
        if Path::new("/run/netns").join(&self.netns).exists() {
            let _ = self.cleanup_command().output();
        } else {
            // Unpinning the links detaches the programs; no iptables outside a test netns.
            let _ = fs::remove_dir_all(&self.bpffs);
        }
        let _ = fs::remove_dir_all(&self.work);
    }
}

/// IDs and names of the BPF programs attached to a cgroup at the socket hooks we use,
/// asked of the kernel itself (BPF_PROG_QUERY), not of the agent: independent of any
/// bpftool release (Debian 12's cannot list a 5.10 kernel's cgroups).
pub fn attached_programs(cgroup: &Path) -> Vec<(u64, String)> {
    use std::os::fd::AsRawFd as _;
    // BPF_CGROUP_INET4_CONNECT, UDP4_SENDMSG, UDP4_RECVMSG, INET4_GETPEERNAME, then
    // their IPv6 counterparts (INET6_CONNECT, UDP6_SENDMSG, UDP6_RECVMSG,
    // INET6_GETPEERNAME).
    const ATTACH_TYPES: [u32; 8] = [10, 14, 19, 29, 11, 15, 20, 30];
    const BPF_PROG_QUERY: libc::c_long = 16;
    #[repr(C)]
    #[derive(Default)]
    struct QueryAttr {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        _rest: [u64; 4],
    }
    let dir = fs::File::open(cgroup).unwrap_or_else(|e| panic!("{}: {e}", cgroup.display()));
    let mut ids = Vec::new();
    for attach_type in ATTACH_TYPES {
        let mut found = [0u32; 64];
        let mut attr = QueryAttr {
            target_fd: dir.as_raw_fd() as u32,
            attach_type,
            prog_ids: found.as_mut_ptr() as u64,
            prog_cnt: found.len() as u32,
            ..Default::default()
        };
        // SAFETY: attr is a zero-padded bpf_attr prefix; prog_ids points at `found`,
        // whose length prog_cnt gives.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &mut attr as *mut QueryAttr,
                size_of::<QueryAttr>(),
            )
        };
        assert!(
            rc == 0,
            "BPF_PROG_QUERY {} type {attach_type}: {}",
            cgroup.display(),
            std::io::Error::last_os_error()
        );
        ids.extend_from_slice(&found[..attr.prog_cnt as usize]);
    }
    let names: BTreeMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_owned()))
        .collect();
    ids.iter()
        .map(|id| (u64::from(*id), names.get(id).cloned().unwrap_or_default()))
        .collect()
}

impl Agent {
    /// GET `path` from the agent's HTTP endpoints (`127.0.0.1:10249` for /metrics,
    /// `127.0.0.1:10256` for health), from inside its namespace. Returns (status, body).
    pub fn http_get(&self, port: u16, path: &str) -> (u16, String) {
        let out = command_in(&self.netns, None, "curl")
            .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// The value of one /metrics sample, by its full name with labels as printed.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.http_get(10249, "/metrics");
        body.lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Connects in a loop from another thread until stopped, keeping every report: traffic
/// that must not fail while the agent is killed, restarted or upgraded.
pub struct ClientLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reports: std::sync::Arc<std::sync::Mutex<Vec<Report>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ClientLoop {
    /// Also on a failed assertion: the thread may hold a topology, which must be dropped.
    fn drop(&mut self) {
        self.halt();
    }
}

impl ClientLoop {
    /// Runs `probe` (one batch of connections) again and again.
    pub fn start(probe: impl Fn() -> Report + Send + 'static) -> Self {
        use std::sync::{Arc, Mutex, atomic::AtomicBool};
        let stop = Arc::new(AtomicBool::new(false));
        let reports = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, reports) = (stop.clone(), reports.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let report = probe();
                    reports.lock().expect("reports").push(report);
                }
            })
        };
        Self {
            stop,
            reports,
            thread: Some(thread),
        }
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Stops the loop: the connections answered, and every error with its count.
    pub fn finish(mut self) -> (usize, Vec<String>) {
        self.halt();
        let reports = self.reports.lock().expect("reports");
        let answered = reports
            .iter()
            .map(|r| r.answers.values().sum::<usize>())
            .sum();
        let errors = reports
            .iter()
            .flat_map(|r| r.errors.iter().map(|(e, n)| format!("{e} x{n}")))
            .collect();
        (answered, errors)
    }
}
