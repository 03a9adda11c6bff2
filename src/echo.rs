//! The RFC 862 echo service: every byte received is sent back, unchanged. For the classic
//! first exercise it can also greet each client (`--echo-greeting`) and close after echoing
//! one line (`--echo-once`).

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::conns::ConnInfo;
use crate::trace::{ConnTrace, Tracer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const CHUNK: usize = 16 * 1024;
/// How long the greeting and the last echoed bytes may take to write.
const LAST_WRITE: Duration = Duration::from_secs(5);

/// What every echo connection shares.
#[derive(Debug, Clone, Default)]
pub struct EchoSettings {
    pub idle_timeout: Option<Duration>,
    /// Sent on connect, with CR LF after it.
    pub greeting: Option<Vec<u8>>,
    /// Close after the first line end (LF, CR LF, CR NUL or a bare CR) has been echoed.
    pub once: bool,
}

impl EchoSettings {
    pub fn from_config(config: &Config) -> EchoSettings {
        EchoSettings {
            idle_timeout: config.idle_timeout(),
            greeting: config.echo_greeting.as_ref().map(|text| {
                let mut line = text.as_bytes().to_vec();
                line.extend_from_slice(b"\r\n");
                line
            }),
            once: config.echo_once,
        }
    }
}

/// Echoes until the client closes, goes idle for the idle timeout, the server shuts down, or
/// (with `once`) the first line has been echoed. Nothing is allocated while waiting: bytes are
/// read into the stack and written straight back; only what the client does not take at once
/// is kept on the heap until it does.
pub async fn serve(
    mut stream: TcpStream,
    settings: Arc<EchoSettings>,
    conn: Arc<ConnInfo>,
    tracer: Option<Arc<Tracer>>,
) {
    // Shutdown, or the operator's disconnect.
    let shutdown = conn.stop.clone();
    let mut trace = Tracer::of(tracer.as_ref(), &conn);
    let idle = settings.idle_timeout.unwrap_or(Duration::from_secs(86400 * 365));
    if let Some(greeting) = &settings.greeting {
        if let Some(trace) = trace.as_deref_mut() {
            trace.output(greeting);
        }
        let greet = tokio::time::timeout(LAST_WRITE, stream.write_all(greeting));
        if !matches!(greet.await, Ok(Ok(()))) {
            return;
        }
    }
    loop {
        let ready = tokio::select! {
            _ = shutdown.cancelled() => break,
            ready = tokio::time::timeout(idle, stream.readable()) => ready,
        };
        if !matches!(ready, Ok(Ok(()))) {
            break;
        }
        let (backlog, last) = {
            let mut chunk = [0u8; CHUNK];
            let mut n = match stream.try_read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => break,
            };
            conn.received(n, &chunk[..n]);
            if trace.is_none() && conn.is_watched() {
                trace = Some(ConnTrace::watching(&conn));
            }
            if let Some(trace) = trace.as_deref_mut() {
                trace.input(&chunk[..n]);
            }
            let last = settings.once
                && match first_line_end(&chunk[..n]) {
                    Some(end) => {
                        n = end;
                        true
                    }
                    None => false,
                };
            // What is echoed is traced as it is handed over (the rest, later, is the same).
            if let Some(trace) = trace.as_deref_mut() {
                trace.output(&chunk[..n]);
            }
            conn.sent(n);
            match stream.try_write(&chunk[..n]) {
                Ok(written) if written == n && !last => continue,
                Ok(written) => (chunk[written..n].to_vec(), last),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => (chunk[..n].to_vec(), last),
                Err(_) => break,
            }
        };
        let written = tokio::select! {
            _ = shutdown.cancelled() => break,
            written = tokio::time::timeout(LAST_WRITE.max(idle), stream.write_all(&backlog)) => written,
        };
        if last || !matches!(written, Ok(Ok(()))) {
            break;
        }
    }
    let _ = tokio::time::timeout(LAST_WRITE, stream.shutdown()).await;
}

/// The length of `bytes` up to and including its first line end (LF; CR, with the LF or NUL
/// right after it), if it has one.
fn first_line_end(bytes: &[u8]) -> Option<usize> {
    let at = bytes.iter().position(|&b| b == b'\n' || b == b'\r')?;
    if bytes[at] == b'\r' && matches!(bytes.get(at + 1), Some(b'\n' | 0)) {
        Some(at + 2)
    } else {
        Some(at + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::first_line_end;

    #[test]
    fn line_ends() {
        assert_eq!(first_line_end(b"hi\r\nmore"), Some(4));
        assert_eq!(first_line_end(b"hi\nmore"), Some(3));
        assert_eq!(first_line_end(b"hi\r\0x"), Some(4));
        assert_eq!(first_line_end(b"hi\rx"), Some(3));
        assert_eq!(first_line_end(b"hi"), None);
    }
}
