//! probe: the test and demo workload.
//!
//! `probe serve --name web-0 --tcp 0.0.0.0:8080 --udp 0.0.0.0:5353` answers HTTP requests
//! and UDP datagrams with its name, closing TCP connections first (so TIME_WAIT stays on
//! the server side). It prints `ready` once listening. An IPv6 address (`--tcp [::]:8080`)
//! takes IPv6 only, so it sits beside an IPv4 listener on the same port.
//!
//! `probe connect --to 198.19.0.10:80 --count 1000` makes sequential connections (or UDP
//! exchanges) and prints one JSON object: who answered how often, which errors occurred,
//! and which peer (getpeername) and reply source addresses the client saw. IPv6 works the
//! same (`--to [2001:db8:19::a]:80`, addresses reported as `[2001:db8:19::a]:80`), and an
//! IPv4-mapped address (`--to [::ffff:198.19.0.10]:80`) connects an IPv6 socket to an
//! IPv4 address, as a dual-stack application does. `--from 198.18.100.2:40000` makes a
//! TCP connection from that address and port.
//!
//! `probe flows` keeps UDP sockets (or TCP connections) across a change the test makes
//! ([`flows`]); `probe serve --tcp-lines` answers each line of a long-lived connection.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket},
    os::fd::{FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

mod flows;

use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Serve {
        #[arg(long)]
        name: String,
        #[arg(long)]
        tcp: Vec<SocketAddr>,
        #[arg(long)]
        udp: Vec<SocketAddr>,
        /// Long-lived TCP connections: each line received is answered with the name, for
        /// as long as the client keeps the connection (one thread per connection).
        #[arg(long)]
        tcp_lines: Vec<SocketAddr>,
    },
    Connect {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// UDP instead of TCP.
        #[arg(long)]
        udp: bool,
        /// UDP with sendto/recvfrom on an unconnected socket (the sendmsg4/recvmsg4 path).
        #[arg(long)]
        unconnected: bool,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Pause between attempts.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// Also print who answered each attempt, in order.
        #[arg(long)]
        sequence: bool,
        /// Ask the server which source address it saw (TCP): answers read
        /// `web-0 saw 198.18.1.1`.
        #[arg(long)]
        ask_source: bool,
        /// UDP: send every attempt from one unconnected socket (one source port, so one
        /// conntrack entry for the whole run).
        #[arg(long)]
        one_socket: bool,
        /// Connected UDP: after each exchange, connect the same socket to this address
        /// and exchange again (both answers, peers and reply sources are reported).
        #[arg(long)]
        then_to: Option<SocketAddr>,
        /// TCP: connect from this address and port (SO_REUSEADDR), as a test makes two
        /// flows share a source port.
        #[arg(long)]
        from: Option<SocketAddr>,
    },
    Flows(flows::FlowsArgs),
}

#[derive(Default, Serialize)]
struct Report {
    attempts: usize,
    answers: BTreeMap<String, usize>,
    errors: BTreeMap<String, usize>,
    /// getpeername() results on connected sockets.
    peers: BTreeMap<String, usize>,
    /// Source addresses of UDP replies.
    reply_sources: BTreeMap<String, usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    sequence: Vec<String>,
}

fn main() {
    match Args::parse().command {
        Command::Serve {
            name,
            tcp,
            udp,
            tcp_lines,
        } => serve(&name, &tcp, &udp, &tcp_lines),
        Command::Flows(args) => flows::run(&args),
        Command::Connect {
            to,
            count,
            udp,
            unconnected,
            timeout_ms,
            interval_ms,
            sequence,
            ask_source,
            one_socket,
            then_to,
            from,
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            let mut report = Report::default();
            let shared = if one_socket {
                match UdpSocket::bind(any_port_of_family(to)) {
                    Ok(socket) => Some(socket),
                    Err(e) => {
                        eprintln!("probe: binding a UDP socket: {e}");
                        std::process::exit(1);
                    }
                }
            } else {
                None
            };
            for _ in 0..count {
                report.attempts += 1;
                let outcome = if let Some(socket) = &shared {
                    udp_on(socket, to, timeout, &mut report)
                } else if udp || unconnected {
                    udp_exchange(to, unconnected, then_to, timeout, &mut report)
                } else {
                    tcp_exchange(to, from, timeout, ask_source, &mut report)
                };
                let label = match outcome {
                    Ok(name) => {
                        *report.answers.entry(name.clone()).or_default() += 1;
                        name
                    }
                    Err(e) => {
                        let label = error_name(&e);
                        *report.errors.entry(label.clone()).or_default() += 1;
                        label
                    }
                };
                if sequence {
                    report.sequence.push(label);
                }
                if interval_ms > 0 {
                    std::thread::sleep(Duration::from_millis(interval_ms));
                }
            }
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
        }
    }
}

fn tcp_exchange(
    to: SocketAddr,
    from: Option<SocketAddr>,
    timeout: Duration,
    ask_source: bool,
    report: &mut Report,
) -> std::io::Result<String> {
    let mut stream = tcp_connect(to, from, timeout)?;
    if let Ok(peer) = stream.peer_addr() {
        *report.peers.entry(peer.to_string()).or_default() += 1;
    }
    stream.set_read_timeout(Some(timeout))?;
    let path = if ask_source { "/source" } else { "/" };
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: probe\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_owned();
    if body.is_empty() {
        return Err(std::io::Error::other("empty response"));
    }
    Ok(body)
}

fn udp_exchange(
    to: SocketAddr,
    unconnected: bool,
    then_to: Option<SocketAddr>,
    timeout: Duration,
    report: &mut Report,
) -> std::io::Result<String> {
    let socket = UdpSocket::bind(any_port_of_family(to))?;
    socket.set_read_timeout(Some(timeout))?;
    if unconnected {
        let mut buf = [0u8; 512];
        socket.send_to(b"who", to)?;
        let (len, source) = socket.recv_from(&mut buf)?;
        *report.reply_sources.entry(source.to_string()).or_default() += 1;
        return Ok(String::from_utf8_lossy(&buf[..len]).trim().to_owned());
    }
    let first = connected_exchange(&socket, to, report)?;
    match then_to {
        Some(next) => Ok(format!(
            "{first} then {}",
            connected_exchange(&socket, next, report)?
        )),
        None => Ok(first),
    }
}

/// A TCP connection to `to`, from `from` when given (bound first, with SO_REUSEADDR so
/// that a port the last connection left in TIME_WAIT can be bound again).
fn tcp_connect(
    to: SocketAddr,
    from: Option<SocketAddr>,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let Some(from) = from else {
        return TcpStream::connect_timeout(&to, timeout);
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&from.into())?;
    socket.connect_timeout(&to.into(), timeout)?;
    Ok(socket.into())
}

/// The wildcard address of `to`'s family, any port: what a client socket for `to` binds.
/// An IPv4-mapped `to` gets an IPv6 socket, as a dual-stack application has.
fn any_port_of_family(to: SocketAddr) -> SocketAddr {
    match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// Connects `socket` to `to` and exchanges one datagram, recording peer and reply source.
fn connected_exchange(
    socket: &UdpSocket,
    to: SocketAddr,
    report: &mut Report,
) -> std::io::Result<String> {
    let mut buf = [0u8; 512];
    socket.connect(to)?;
    if let Ok(peer) = socket.peer_addr() {
        *report.peers.entry(peer.to_string()).or_default() += 1;
    }
    socket.send(b"who")?;
    let (len, source) = socket.recv_from(&mut buf)?;
    *report.reply_sources.entry(source.to_string()).or_default() += 1;
    Ok(String::from_utf8_lossy(&buf[..len]).trim().to_owned())
}

/// One exchange on a shared unconnected socket.
fn udp_on(
    socket: &UdpSocket,
    to: SocketAddr,
    timeout: Duration,
    report: &mut Report,
) -> std::io::Result<String> {
    socket.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 512];
    socket.send_to(b"who", to)?;
    let (len, source) = socket.recv_from(&mut buf)?;
    *report.reply_sources.entry(source.to_string()).or_default() += 1;
    Ok(String::from_utf8_lossy(&buf[..len]).trim().to_owned())
}

fn error_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ENETUNREACH) => "ENETUNREACH".into(),
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH".into(),
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::ETIMEDOUT) | Some(libc::EAGAIN) => "ETIMEDOUT".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(libc::ECONNABORTED) => "ECONNABORTED".into(),
        Some(libc::EDESTADDRREQ) => "EDESTADDRREQ".into(),
        Some(n) => format!("errno {n}"),
        None if e.kind() == std::io::ErrorKind::TimedOut => "ETIMEDOUT".into(),
        None => e.to_string(),
    }
}

fn serve(name: &str, tcp: &[SocketAddr], udp: &[SocketAddr], tcp_lines: &[SocketAddr]) {
    let mut threads = Vec::new();
    for addr in tcp_lines {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
        let name = name.to_owned();
        threads.push(std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || answer_lines(stream, &name));
            }
        }));
    }
    for addr in tcp {
        let listener = match addr {
            SocketAddr::V4(_) => TcpListener::bind(addr),
            SocketAddr::V6(v6) => ipv6_only_socket(v6, libc::SOCK_STREAM).map(TcpListener::from),
        }
        .unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
        let name = name.to_owned();
        threads.push(std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                answer_http(stream, &name);
            }
        }));
    }
    for addr in udp {
        let socket = match addr {
            SocketAddr::V4(_) => UdpSocket::bind(addr),
            SocketAddr::V6(v6) => ipv6_only_socket(v6, libc::SOCK_DGRAM).map(UdpSocket::from),
        }
        .unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
        let name = name.to_owned();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((_, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(format!("{name}\n").as_bytes(), from);
            }
        }));
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
}

/// An IPv6 socket of `kind` (`SOCK_STREAM`, listening, or `SOCK_DGRAM`) bound to `addr`
/// with IPV6_V6ONLY set: it takes IPv6 only, so an IPv4 socket can hold the same port
/// (std's `bind` leaves the flag to the `net.ipv6.bindv6only` default, which is off).
fn ipv6_only_socket(addr: &SocketAddrV6, kind: libc::c_int) -> std::io::Result<OwnedFd> {
    let check = |rc: libc::c_int| match rc {
        -1 => Err(std::io::Error::last_os_error()),
        _ => Ok(()),
    };
    // SAFETY: plain syscalls on a descriptor this function owns; every pointer passed
    // points at a live local of the size given with it.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, kind | libc::SOCK_CLOEXEC, 0);
        check(fd)?;
        let fd = OwnedFd::from_raw_fd(fd);
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let one: libc::c_int = 1;
        for (level, option) in [
            (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
            (libc::SOL_SOCKET, libc::SO_REUSEADDR),
        ] {
            check(libc::setsockopt(
                raw,
                level,
                option,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            ))?;
        }
        let sockaddr = libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: addr.port().to_be(),
            sin6_flowinfo: addr.flowinfo(),
            sin6_addr: libc::in6_addr {
                s6_addr: addr.ip().octets(),
            },
            sin6_scope_id: addr.scope_id(),
        };
        check(libc::bind(
            raw,
            (&sockaddr as *const libc::sockaddr_in6).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        ))?;
        if kind == libc::SOCK_STREAM {
            check(libc::listen(raw, 1024))?;
        }
        Ok(fd)
    }
}

/// Reads the request head (whatever arrives within a moment), answers with the name, and
/// closes first.
/// Answers every line with `name` until the client closes (or a minute passes).
fn answer_lines(stream: TcpStream, name: &str) {
    use std::io::BufRead as _;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    for line in std::io::BufReader::new(stream).lines() {
        if line.is_err() || writer.write_all(format!("{name}\n").as_bytes()).is_err() {
            break;
        }
    }
}

fn answer_http(mut stream: TcpStream, name: &str) {
    let started = Instant::now();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n")
        && started.elapsed() < Duration::from_secs(1)
    {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    // `GET /source`: also say which client address this connection came from.
    let body = match stream.peer_addr() {
        Ok(peer) if request.starts_with(b"GET /source ") => format!("{name} saw {}\n", peer.ip()),
        _ => format!("{name}\n"),
    };
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}
