//! The generator's side of the host: connecting (spread over source addresses when there are
//! many connections), why a connection failed, the open-files limit, and a server's RSS.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};

/// Above this many connections to a loopback address, source addresses are spread over
/// 127.0.0.2-127.0.0.250: one source address has only ~28k ephemeral ports, and sockets of
/// earlier runs linger in TIME_WAIT on them.
pub const SPREAD_ABOVE: usize = 5_000;

/// The source addresses for `conns` connections to `target`, if they should be spread: the
/// share `part` of `parts` (generator processes each take their own range, so their ports never
/// collide).
pub fn source_addrs(target: SocketAddr, conns: usize, (part, parts): (usize, usize)) -> Option<Vec<IpAddr>> {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() && conns > SPREAD_ABOVE => {
            let all: Vec<u8> = (2..=250).collect();
            let parts = parts.clamp(1, all.len());
            let (from, to) = (all.len() * part / parts, all.len() * (part + 1) / parts);
            Some(
                all[from..to.max(from + 1)]
                    .iter()
                    .map(|&d| IpAddr::V4(Ipv4Addr::new(127, 0, 0, d)))
                    .collect(),
            )
        }
        _ => None,
    }
}

/// Resolves every `--addr`, with a hint for what people type instead of HOST:PORT.
pub async fn resolve(addrs: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for addr in addrs {
        if let Some(rest) = addr
            .strip_prefix("http://")
            .or_else(|| addr.strip_prefix("https://"))
        {
            let hostport = rest.split('/').next().unwrap_or(rest);
            anyhow::bail!(
                "--addr takes HOST:PORT, not a URL: try --addr {hostport} (and --path for the path)"
            );
        }
        if !addr.contains(':') {
            anyhow::bail!(
                "--addr takes HOST:PORT: {addr:?} has no port (chatd's line port is 8000, HTTP 5000)"
            );
        }
        let target = tokio::net::lookup_host(addr)
            .await
            .with_context(|| format!("cannot resolve --addr {addr}"))?
            .next()
            .with_context(|| format!("{addr} has no address"))?;
        out.push(target);
    }
    if out.is_empty() {
        anyhow::bail!("give at least one --addr HOST:PORT");
    }
    Ok(out)
}

/// Connects to `target`, from `source` (with a port the kernel picks) if given.
pub async fn connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        bind_address_no_port(&socket);
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Lets connect(2) pick the port, so the port only has to be unique per destination and not
/// per source address (IP_BIND_ADDRESS_NO_PORT, Linux 4.2+; ignored if refused). Elsewhere
/// bind picks a port per source address, which is enough for fewer connections.
#[cfg(target_os = "linux")]
fn bind_address_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `one` (an int of the size passed) and touches nothing else.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn bind_address_no_port(_socket: &TcpSocket) {}

/// Why a connection could not be opened (and used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Nothing listens there (ECONNREFUSED).
    Refused,
    /// The server said `ERR SERVER_BUSY` instead of its greeting (after every retry).
    ServerBusy,
    /// Connecting, or a reply during setup, took longer than allowed.
    Timeout,
    /// Anything else, with what happened.
    Other(String),
    /// Something else answered than was expected (an HTTP server where a line port was
    /// expected): counted as "other", with a hint for the user.
    Hinted { what: String, hint: String },
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Failure::Refused,
            io::ErrorKind::TimedOut => Failure::Timeout,
            _ => Failure::Other(e.to_string()),
        }
    }
}

/// Failed connections counted by cause.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Failures {
    pub refused: u64,
    pub server_busy: u64,
    pub timeout: u64,
    pub other: u64,
    /// The first "other" failure, to tell what it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_example: Option<String>,
    /// What the failures suggest was wrong, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Failures {
    pub fn add(&mut self, failure: Failure) {
        match failure {
            Failure::Refused => self.refused += 1,
            Failure::ServerBusy => self.server_busy += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::Other(what) => {
                self.other += 1;
                self.other_example.get_or_insert(what);
            }
            Failure::Hinted { what, hint } => {
                self.other += 1;
                self.other_example.get_or_insert(what);
                self.hint.get_or_insert(hint);
            }
        }
        if self.other > 0 && self.hint.is_none() {
            if let Some(e) = &self.other_example {
                if e.contains("Too many open files") {
                    self.hint = Some(
                        "the generator ran out of file descriptors: raise `ulimit -n` or use --procs N"
                            .into(),
                    );
                }
            }
        }
    }

    pub fn merge(&mut self, o: &Failures) {
        self.refused += o.refused;
        self.server_busy += o.server_busy;
        self.timeout += o.timeout;
        self.other += o.other;
        if self.other_example.is_none() {
            self.other_example = o.other_example.clone();
        }
        if self.hint.is_none() {
            self.hint = o.hint.clone();
        }
    }

    pub fn total(&self) -> u64 {
        self.refused + self.server_busy + self.timeout + self.other
    }
}

/// Raises this process's open-files soft limit to the hard limit; returns the limit in force.
#[cfg(unix)]
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

#[cfg(not(unix))]
pub fn raise_open_files_limit() -> u64 {
    u64::MAX
}

/// The resident set size of process `pid` in KiB (VmRSS in /proc/PID/status).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    proc_status_kib(pid, "VmRSS:")
}

/// CPU time (user and system) process `pid` has used, in seconds (Linux: /proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("no CPU times for pid {pid}"));
    // utime and stime are fields 14 and 15, counted after the command name in parentheses.
    let after = stat.get(stat.rfind(')').ok_or_else(bad)? + 2..).ok_or_else(bad)?;
    let mut fields = after.split_whitespace().skip(11);
    let mut ticks = 0.0;
    for _ in 0..2 {
        ticks += fields
            .next()
            .and_then(|t| t.parse::<f64>().ok())
            .ok_or_else(bad)?;
    }
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz.max(1.0))
}

/// A `kB` field of /proc/PID/status (Linux only).
pub fn proc_status_kib(pid: u32, field: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no {field} for pid {pid}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_only_many_loopback_connections() {
        let lo: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        assert!(source_addrs(lo, SPREAD_ABOVE, (0, 1)).is_none());
        let spread = source_addrs(lo, SPREAD_ABOVE + 1, (0, 1)).unwrap();
        assert_eq!(spread.len(), 249);
        assert_eq!(spread[0], IpAddr::from([127, 0, 0, 2]));
        assert_eq!(*spread.last().unwrap(), IpAddr::from([127, 0, 0, 250]));
        let remote: SocketAddr = "[::1]:8000".parse().unwrap();
        assert!(source_addrs(remote, 100_000, (0, 1)).is_none());
    }

    #[test]
    fn processes_take_ranges_of_their_own() {
        let lo: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let parts: Vec<Vec<IpAddr>> = (0..6)
            .map(|p| source_addrs(lo, 20_000, (p, 6)).unwrap())
            .collect();
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 249);
        for (i, a) in parts.iter().enumerate() {
            for b in &parts[i + 1..] {
                assert!(a.iter().all(|ip| !b.contains(ip)));
            }
        }
    }

    #[test]
    fn reads_our_own_rss() {
        let kib = rss_kib(std::process::id()).unwrap();
        assert!(kib > 100, "{kib}");
    }

    #[tokio::test]
    async fn urls_and_missing_ports_get_hints() {
        let e = resolve(&["http://127.0.0.1:5000/info".into()])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("try --addr 127.0.0.1:5000"), "{e}");
        let e = resolve(&["localhost".into()]).await.unwrap_err().to_string();
        assert!(e.contains("no port"), "{e}");
        let two = resolve(&["127.0.0.1:1".into(), "127.0.0.2:2".into()])
            .await
            .unwrap();
        assert_eq!(two.len(), 2);
    }

    #[tokio::test]
    async fn connects_from_a_spread_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let source = IpAddr::from([127, 0, 0, 9]);
        let (client, accepted) = tokio::join!(connect(target, Some(source)), listener.accept());
        assert_eq!(client.unwrap().local_addr().unwrap().ip(), source);
        assert_eq!(accepted.unwrap().1.ip(), source);
    }

    #[test]
    fn counts_failures_by_cause() {
        let mut f = Failures::default();
        f.add(Failure::ServerBusy);
        f.add(io::Error::from(io::ErrorKind::ConnectionRefused).into());
        f.add(Failure::Other("reset".into()));
        f.add(Failure::Other("later".into()));
        assert_eq!((f.refused, f.server_busy, f.timeout, f.other), (1, 1, 0, 2));
        assert_eq!(f.other_example.as_deref(), Some("reset"));
        assert_eq!(f.total(), 4);
    }
}
