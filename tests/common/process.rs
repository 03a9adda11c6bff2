//! A `chatd serve` process, for tests of the binary as people run it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHATD: &str = env!("CARGO_BIN_EXE_chatd");

/// A `chatd serve` process on 127.0.0.1 with an ephemeral port.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    /// The HTTP facade's address, unless it is off.
    pub http: Option<SocketAddr>,
    /// The admin listener (the teacher's view, `/metrics`).
    pub admin: Option<SocketAddr>,
    /// The IRC door's address, unless it is off.
    pub irc: Option<SocketAddr>,
    pub banner: Vec<String>,
}

impl Process {
    pub fn start(db: &str) -> Process {
        Process::start_with(db, &[], None)
    }

    /// Starts chatd with extra flags and, if given, an open-files limit it cannot raise.
    pub fn start_with(db: &str, flags: &[&str], open_files: Option<u64>) -> Process {
        let mut command = serve_command(db);
        command.args(flags).stderr(Stdio::inherit());
        if let Some(limit) = open_files {
            use std::os::unix::process::CommandExt;
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: setrlimit is async-signal-safe and only touches the child about to exec.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        Process::start_command(command)
    }

    /// Starts a `chatd serve` command prepared by the caller (flags, environment, stderr);
    /// returns once its banner names the addresses.
    pub fn start_command(mut command: Command) -> Process {
        command.stdout(Stdio::piped());
        let mut child = command.spawn().expect("chatd starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // The banner: telnet lines, then (with HTTP) http:// lines, then the store line.
        let (mut banner, mut addr, mut http, mut irc, mut admin) = (Vec::new(), None, None, None, None);
        loop {
            let line = lines.next().expect("the banner names the address").unwrap();
            banner.push(line.clone());
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("telnet ") {
                let (ip, port) = rest.split_once(' ').unwrap();
                addr.get_or_insert(SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap()));
            } else if let Some(rest) = line.strip_prefix("http://") {
                http.get_or_insert(rest.trim_end_matches('/').parse().unwrap());
            } else if let Some(rest) = line.strip_prefix("/connect ") {
                let (ip, port) = rest.split_once(' ').unwrap();
                irc.get_or_insert(SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap()));
            } else if let Some(rest) = line.strip_prefix("The teacher's view: http://") {
                let at = rest.split_once("/admin").unwrap().0;
                admin.get_or_insert(at.parse().unwrap());
            } else if line.starts_with("Store:") {
                break;
            }
        }
        // Keep reading, so that the server never writes into a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Process {
            child,
            addr: addr.expect("a telnet line"),
            http,
            irc,
            admin,
            banner,
        }
    }

    /// Starts an HTTP request whose body never comes: it holds a shutdown for its grace period.
    pub async fn stalled_body(&self) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;
        let mut upload = tokio::net::TcpStream::connect(self.http.unwrap()).await.unwrap();
        upload
            .write_all(
                b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                  Content-Length: 100\r\n\r\n{",
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        upload
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, signal) }, 0);
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "chatd did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `chatd serve` on 127.0.0.1, ephemeral ports, `db`, logging at warn; add to it at will.
pub fn serve_command(db: &str) -> Command {
    let mut command = Command::new(CHATD);
    command
        .args([
            "serve",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--http-port",
            "0",
            // Not IRC's well-known port: tests run side by side.
            "--irc-port",
            "0",
            // Nor the admin listener's default port.
            "--admin-addr",
            "127.0.0.1:0",
            "--db",
            db,
        ])
        .env("RUST_LOG", "warn")
        .env_remove("CHATD_BIND")
        .env_remove("CHATD_INTERFACE")
        .env_remove("CHATD_DB");
    command
}

/// Runs a chatd command that is expected to exit by itself within `within` (an error at
/// start-up); fails the test, after killing it, if it is still running.
pub fn run_to_exit(command: &mut Command, within: Duration) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chatd starts");
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "chatd was still running after {within:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}
