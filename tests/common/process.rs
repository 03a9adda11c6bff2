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
    pub banner: Vec<String>,
}

impl Process {
    pub fn start(db: &str) -> Process {
        Process::start_with(db, &[], None)
    }

    /// Starts chatd with extra flags and, if given, an open-files limit it cannot raise.
    pub fn start_with(db: &str, flags: &[&str], open_files: Option<u64>) -> Process {
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
                "--db",
                db,
            ])
            .args(flags)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
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
        let mut child = command.spawn().expect("chatd starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = Vec::new();
        let addr = loop {
            let line = lines.next().expect("the banner names the address").unwrap();
            banner.push(line.clone());
            if let Some(rest) = line.trim().strip_prefix("telnet ") {
                let (ip, port) = rest.split_once(' ').unwrap();
                break SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap());
            }
        };
        // Keep reading the banner's remaining lines so the pipe never fills.
        std::thread::spawn(move || lines.for_each(drop));
        Process { child, addr, banner }
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
