//! `probe flows`: UDP sockets that live across a change. `--sockets N` sockets (connected
//! with `--connected`, else unconnected ones using sendto) each exchange one datagram
//! with `--to` per round. After round 0 the probe prints `round 0` and, with
//! `--wait-file`, waits for that file to exist (the test changes the Service meanwhile);
//! from round 2 on each round waits `--interval-ms` first. A connected socket that fails
//! (destroyed by the agent: ECONNABORTED, or EDESTADDRREQ once disconnected) is replaced
//! by a new one connected to `--to` for the next round, as an application reconnects.
//! `--tcp`: TCP connections instead, to a `probe serve --tcp-lines` server; round 0 only
//! connects (`connected`), later rounds exchange a line. Prints one JSON object:
//! `{"rounds": [[answer or error per socket], ...]}`.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::Serialize;

#[derive(clap::Args)]
pub struct FlowsArgs {
    #[arg(long)]
    to: SocketAddr,
    #[arg(long, default_value_t = 1)]
    sockets: usize,
    #[arg(long)]
    connected: bool,
    #[arg(long, conflicts_with = "connected")]
    tcp: bool,
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    #[arg(long)]
    wait_file: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// `--tcp`: connect from this address and port (one socket only).
    #[arg(long, requires = "tcp")]
    from: Option<SocketAddr>,
}

#[derive(Serialize)]
struct FlowsReport {
    rounds: Vec<Vec<String>>,
}

pub fn run(args: &FlowsArgs) {
    let timeout = Duration::from_millis(args.timeout_ms);
    if args.tcp {
        return run_tcp(args, timeout);
    }
    let mut sockets: Vec<Option<UdpSocket>> = (0..args.sockets).map(|_| None).collect();
    let mut report = FlowsReport { rounds: Vec::new() };
    for round in 0..args.rounds {
        if round == 1 {
            println!("round 0");
            let _ = std::io::stdout().flush();
            if let Some(file) = &args.wait_file {
                wait_for(file);
            }
        } else if round > 1 {
            std::thread::sleep(Duration::from_millis(args.interval_ms));
        }
        let answers = sockets
            .iter_mut()
            .map(
                |slot| match exchange(slot, args.to, args.connected, timeout) {
                    Ok(name) => name,
                    Err(e) => {
                        if args.connected {
                            *slot = None;
                        }
                        super::error_name(&e)
                    }
                },
            )
            .collect();
        report.rounds.push(answers);
    }
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
}

/// `--tcp`: connections made in round 0, used in the later ones (a failed one is not
/// made again: its error is what the test looks at).
fn run_tcp(args: &FlowsArgs, timeout: Duration) {
    let mut report = FlowsReport { rounds: Vec::new() };
    let mut streams: Vec<Option<TcpStream>> = Vec::new();
    let mut first = Vec::new();
    for _ in 0..args.sockets {
        match super::tcp_connect(args.to, args.from, timeout) {
            Ok(stream) => {
                let _ = stream.set_read_timeout(Some(timeout));
                streams.push(Some(stream));
                first.push("connected".to_owned());
            }
            Err(e) => {
                streams.push(None);
                first.push(super::error_name(&e));
            }
        }
    }
    report.rounds.push(first);
    for round in 1..args.rounds {
        if round == 1 {
            println!("round 0");
            let _ = std::io::stdout().flush();
            if let Some(file) = &args.wait_file {
                wait_for(file);
            }
        } else {
            std::thread::sleep(Duration::from_millis(args.interval_ms));
        }
        let answers = streams
            .iter_mut()
            .map(|slot| {
                let Some(stream) = slot else {
                    return "not connected".to_owned();
                };
                match line_exchange(stream) {
                    Ok(answer) => answer,
                    Err(e) => {
                        *slot = None;
                        super::error_name(&e)
                    }
                }
            })
            .collect();
        report.rounds.push(answers);
    }
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
}

/// One line out, one line back.
fn line_exchange(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.write_all(b"who\n")?;
    let mut line = String::new();
    if BufReader::new(&*stream).read_line(&mut line)? == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
    }
    Ok(line.trim().to_owned())
}

/// Waits (up to a minute) for the test to create `file`.
fn wait_for(file: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One datagram out and its answer, on the socket in `slot` (made first if empty).
fn exchange(
    slot: &mut Option<UdpSocket>,
    to: SocketAddr,
    connected: bool,
    timeout: Duration,
) -> std::io::Result<String> {
    let socket = match slot {
        Some(socket) => socket,
        None => {
            let socket = UdpSocket::bind(super::any_port_of_family(to))?;
            socket.set_read_timeout(Some(timeout))?;
            if connected {
                socket.connect(to)?;
            }
            slot.insert(socket)
        }
    };
    let mut buf = [0u8; 512];
    if connected {
        socket.send(b"who")?;
        let len = socket.recv(&mut buf)?;
        return Ok(String::from_utf8_lossy(&buf[..len]).trim().to_owned());
    }
    socket.send_to(b"who", to)?;
    let (len, _) = socket.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..len]).trim().to_owned())
}
