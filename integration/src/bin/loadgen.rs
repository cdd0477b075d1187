//! loadgen: new TCP connections per second, with a small request/response per connection.
//!
//! `loadgen serve --listen IP:PORT ...` accepts connections, reads a 16-byte request,
//! writes a 16-byte reply and closes first, so TIME_WAIT lands on the server and never on
//! the client's ephemeral ports. It prints `ready` once every address is listening.
//!
//! `loadgen connect --targets FILE --duration-ms D` makes one connection at a time from a
//! single thread, each to a target picked uniformly at random (a seeded xorshift), and
//! prints one JSON object: successful connections (the whole reply read), failures by
//! errno name (from any step; `bad_reply` for a wrong reply), the rate, and percentiles
//! of the successful connections' connect latency. That latency is taken around connect()
//! alone (from just before the call until the handshake completes), so it shows what the
//! path to the backend (direct, eBPF socket load balancing, iptables DNAT) adds to
//! connection setup.
//!
//! Method: client and server are meant to be pinned to the same CPU (`--cpu`), so any
//! per-connection cost of a mode shows as fewer connections per second rather than being
//! absorbed by an idle second core.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;

/// What the client sends on every connection.
const REQUEST: &[u8; 16] = b"GET /bench 1234\n";
/// What the server answers on every connection.
const REPLY: &[u8; 16] = b"HTTP/1.0 200 OK\n";
/// Listen backlog: std's 128 overflows at tens of thousands of connections per second.
const BACKLOG: libc::c_int = 4096;
/// How long the server waits for a request before dropping the connection.
const SERVER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The failure code of a reply other than [`REPLY`] (errnos are positive).
const BAD_REPLY: i32 = -1;

#[derive(Parser)]
#[command(about = "TCP connection-rate load generator (the server closes first)")]
enum Command {
    /// Answer on every --listen address; prints `ready` once all are listening.
    Serve {
        /// An address to listen on (repeatable).
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        /// Pin the process (all its threads) to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Make sequential connections to random targets and print one JSON object.
    Connect(ConnectArgs),
}

#[derive(clap::Args)]
struct ConnectArgs {
    /// One IP:PORT per line.
    #[arg(long)]
    targets: PathBuf,
    /// Length of the measured run.
    #[arg(long)]
    duration_ms: u64,
    /// Connections made before the measured run, and not counted.
    #[arg(long, default_value_t = 200)]
    warmup_ms: u64,
    /// Seed of the target choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Pin to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Deadline for connect(), and again for the request/reply exchange (ETIMEDOUT).
    #[arg(long, default_value_t = 1000)]
    connect_timeout_ms: u64,
}

/// Bad input (exit code 2), as opposed to a failure while running (exit code 1).
struct InputError(String);

fn main() -> ExitCode {
    let result = match Command::parse() {
        Command::Serve { listen, cpu } => serve(&listen, cpu),
        Command::Connect(args) => match load_targets(&args.targets) {
            Ok(targets) => connect(&args, &targets),
            Err(InputError(e)) => {
                eprintln!("loadgen: {e}");
                return ExitCode::from(2);
            }
        },
    };
    if let Err(e) = result {
        eprintln!("loadgen: {e:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Pins the calling thread to `cpu`; threads spawned afterwards inherit the mask.
fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 8 * size_of::<libc::cpu_set_t>() {
        bail!("--cpu {cpu} is out of range");
    }
    // SAFETY: `cpu` is within the set (checked above), which is passed with its size.
    let rc = unsafe {
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of_val(&set), &set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("pinning to CPU {cpu}"));
    }
    Ok(())
}

/// A listener on `addr` (std sets SO_REUSEADDR) with a [`BACKLOG`]-deep accept queue:
/// listen() again on a listening socket only resizes its queue. Its SO_RCVTIMEO of
/// [`SERVER_READ_TIMEOUT`] is inherited by accepted sockets, which saves a setsockopt
/// per connection (accept() itself then wakes up idle every so often, which is harmless).
fn listen(addr: &SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    // SAFETY: plain listen(2) on a socket we own.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        let err = std::io::Error::last_os_error();
        return Err(err).with_context(|| format!("listening on {addr}"));
    }
    // std sets SO_RCVTIMEO through TcpStream only; the socket is the same.
    let socket = TcpStream::from(OwnedFd::from(listener));
    socket.set_read_timeout(Some(SERVER_READ_TIMEOUT))?;
    Ok(TcpListener::from(OwnedFd::from(socket)))
}

/// `loadgen serve`: one accepting thread per address, forever.
fn serve(addrs: &[SocketAddr], cpu: Option<usize>) -> anyhow::Result<()> {
    if let Some(cpu) = cpu {
        pin_to_cpu(cpu)?;
    }
    let listeners: Vec<_> = addrs.iter().map(listen).collect::<anyhow::Result<_>>()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    std::thread::scope(|s| {
        for listener in &listeners {
            s.spawn(|| accept_loop(listener));
        }
    });
    Ok(())
}

/// Accepts and answers connections one after another. A client that resets or stalls
/// only loses its own connection.
fn accept_loop(listener: &TcpListener) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => drop(answer(stream)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                eprintln!("loadgen: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => {}
        }
    }
}

/// Reads the request (16 bytes or up to EOF; the read timeout comes from the listener),
/// replies, and closes first (on drop).
fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(REQUEST.len());
    (&mut stream)
        .take(REQUEST.len() as u64)
        .read_to_end(&mut request)?;
    stream.write_all(REPLY)
}

/// Reads the targets file: one IP:PORT per line; blank lines and `#` comments are skipped.
fn load_targets(path: &Path) -> Result<Vec<SocketAddr>, InputError> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| InputError(format!("{name}: {e}")))?;
    let mut targets = Vec::new();
    for (i, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if !line.is_empty() && !line.starts_with('#') {
            let bad = |e| InputError(format!("{name}:{i}: bad address {line:?}: {e}"));
            targets.push(line.parse().map_err(bad)?);
        }
    }
    if targets.is_empty() {
        return Err(InputError(format!("{name}: no targets")));
    }
    Ok(targets)
}

/// xorshift64*, seeded through splitmix64 so that small seeds (0, 1, 2) start well mixed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)).max(1))
    }

    /// Uniform in `0..n` (multiply-shift; the bias is negligible for n far below 2^64).
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((u128::from(x) * n as u128) >> 64) as usize
    }
}

/// The key a failure is counted under in the report.
fn failure_name(code: i32) -> String {
    let name = match code {
        BAD_REPLY => "bad_reply",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNRESET => "ECONNRESET",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EPIPE => "EPIPE",
        libc::EMFILE => "EMFILE",
        _ => return format!("errno {code}"),
    };
    name.to_owned()
}

/// The errno of an I/O error (0 if it has none).
fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// The errno of the last failed libc call.
fn last_errno() -> i32 {
    errno(&std::io::Error::last_os_error())
}

/// Waits until `fd` is ready for `events`, or fails with ETIMEDOUT at `deadline`.
fn wait_for(fd: &TcpStream, events: libc::c_short, deadline: Instant) -> Result<(), i32> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(libc::ETIMEDOUT);
        }
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&raw mut pfd, 1, ms) } {
            0 => {} // The deadline is rechecked above.
            n if n > 0 => return Ok(()),
            _ => match last_errno() {
                libc::EINTR => {}
                e => return Err(e),
            },
        }
    }
}

/// A non-blocking TCP socket for `addr`'s family.
fn tcp_socket(addr: &SocketAddr) -> Result<TcpStream, i32> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let kind = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(family, kind, 0) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Starts connect(2) on the non-blocking `sock`: the instant just before the call, and
/// whether the handshake is still in progress.
fn start_connect(sock: &TcpStream, addr: &SocketAddr) -> Result<(Instant, bool), i32> {
    // SAFETY: all-zero socket addresses are valid.
    let (mut v4, mut v6): (libc::sockaddr_in, libc::sockaddr_in6) = unsafe { std::mem::zeroed() };
    let (ptr, len) = match addr {
        SocketAddr::V4(a) => {
            v4.sin_family = libc::AF_INET as libc::sa_family_t;
            v4.sin_port = a.port().to_be();
            v4.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            ((&raw const v4).cast(), size_of_val(&v4))
        }
        SocketAddr::V6(a) => {
            v6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            v6.sin6_port = a.port().to_be();
            v6.sin6_flowinfo = a.flowinfo();
            v6.sin6_addr.s6_addr = a.ip().octets();
            v6.sin6_scope_id = a.scope_id();
            ((&raw const v6).cast(), size_of_val(&v6))
        }
    };
    let start = Instant::now();
    // SAFETY: `ptr` points to a live socket address of `len` bytes.
    if unsafe { libc::connect(sock.as_raw_fd(), ptr, len as libc::socklen_t) } == 0 {
        return Ok((start, false));
    }
    match last_errno() {
        libc::EINPROGRESS => Ok((start, true)),
        e => Err(e),
    }
}

/// Connects `sock` to `addr`; returns the connect() latency in nanoseconds.
fn timed_connect(sock: &TcpStream, addr: &SocketAddr, timeout: Duration) -> Result<u64, i32> {
    let (start, in_progress) = start_connect(sock, addr)?;
    if in_progress {
        wait_for(sock, libc::POLLOUT, start + timeout)?;
        if let Some(e) = sock.take_error().map_err(|e| errno(&e))? {
            return Err(errno(&e));
        }
    }
    Ok(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// Sends [`REQUEST`] and reads until EOF; succeeds only if exactly [`REPLY`] came back.
fn exchange(mut sock: &TcpStream, deadline: Instant) -> Result<(), i32> {
    // A fresh socket's send buffer takes 16 bytes at once (std sends with MSG_NOSIGNAL).
    if sock.write(REQUEST).map_err(|e| errno(&e))? != REQUEST.len() {
        return Err(BAD_REPLY);
    }
    let mut buf = [0u8; 2 * REPLY.len()];
    let mut got = 0;
    while got < buf.len() {
        match sock.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                wait_for(sock, libc::POLLIN, deadline)?;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(errno(&e)),
        }
    }
    (&buf[..got] == REPLY).then_some(()).ok_or(BAD_REPLY)
}

/// One whole connection: socket, connect, request, reply, close. Returns connect ns.
fn one_connection(addr: &SocketAddr, timeout: Duration) -> Result<u64, i32> {
    let sock = tcp_socket(addr)?;
    let connect_ns = timed_connect(&sock, addr, timeout)?;
    exchange(&sock, Instant::now() + timeout)?;
    Ok(connect_ns)
}

/// Connections back to back for `length`: successes' connect latencies, failure counts
/// by code, and the time taken.
fn run(
    targets: &[SocketAddr],
    rng: &mut Rng,
    length: Duration,
    timeout: Duration,
) -> (Vec<u64>, BTreeMap<i32, u64>, Duration) {
    let (mut latencies, mut failures) = (Vec::with_capacity(1 << 20), BTreeMap::new());
    let start = Instant::now();
    while start.elapsed() < length {
        match one_connection(&targets[rng.below(targets.len())], timeout) {
            Ok(ns) => latencies.push(ns),
            Err(code) => *failures.entry(code).or_insert(0) += 1,
        }
    }
    (latencies, failures, start.elapsed())
}

/// p50, p99, p999, mean and max of `ns` (nearest rank); all 0 if empty.
fn latency_summary(mut ns: Vec<u64>) -> serde_json::Value {
    ns.sort_unstable();
    let n = ns.len();
    let rank = |permille: usize| match n {
        0 => 0,
        _ => ns[(permille * n).div_ceil(1000).clamp(1, n) - 1],
    };
    let mean = ns.iter().map(|&x| u128::from(x)).sum::<u128>() as f64 / n.max(1) as f64;
    let max = ns.last().copied().unwrap_or(0);
    serde_json::json!({
        "p50": rank(500),
        "p99": rank(990),
        "p999": rank(999),
        "mean": mean,
        "max": max,
    })
}

/// `loadgen connect`: warm up, measure, print the JSON report.
fn connect(args: &ConnectArgs, targets: &[SocketAddr]) -> anyhow::Result<()> {
    if let Some(cpu) = args.cpu {
        pin_to_cpu(cpu)?;
    }
    let (mut rng, ms) = (Rng::new(args.seed), Duration::from_millis);
    let timeout = ms(args.connect_timeout_ms);
    run(targets, &mut rng, ms(args.warmup_ms), timeout);
    let (latencies, failures, elapsed) = run(targets, &mut rng, ms(args.duration_ms), timeout);
    let connections = latencies.len();
    let elapsed_s = elapsed.as_secs_f64();
    let errors: BTreeMap<String, u64> = failures
        .into_iter()
        .map(|(code, n)| (failure_name(code), n))
        .collect();
    let report = serde_json::json!({
        "connections": connections,
        "errors": errors,
        "elapsed_s": elapsed_s,
        "rate_per_s": if elapsed_s > 0.0 { connections as f64 / elapsed_s } else { 0.0 },
        "connect_ns": latency_summary(latencies),
        "targets": targets.len(),
    });
    println!("{report}");
    Ok(())
}
