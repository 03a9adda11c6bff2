//! The RFC 862 echo service: every byte received is sent back, unchanged.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const CHUNK: usize = 16 * 1024;

/// Echoes until the client closes, goes idle for `idle_timeout`, or the server shuts down.
/// Nothing is allocated while waiting: bytes are read into the stack and written straight
/// back; only what the client does not take at once is kept on the heap until it does.
pub async fn serve(mut stream: TcpStream, idle_timeout: Option<Duration>, shutdown: CancellationToken) {
    let idle = idle_timeout.unwrap_or(Duration::from_secs(86400 * 365));
    loop {
        let ready = tokio::select! {
            _ = shutdown.cancelled() => break,
            ready = tokio::time::timeout(idle, stream.readable()) => ready,
        };
        if !matches!(ready, Ok(Ok(()))) {
            break;
        }
        let backlog = {
            let mut chunk = [0u8; CHUNK];
            let n = match stream.try_read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => break,
            };
            match stream.try_write(&chunk[..n]) {
                Ok(written) if written == n => continue,
                Ok(written) => chunk[written..n].to_vec(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => chunk[..n].to_vec(),
                Err(_) => break,
            }
        };
        let written = tokio::select! {
            _ = shutdown.cancelled() => break,
            written = stream.write_all(&backlog) => written,
        };
        if written.is_err() {
            break;
        }
    }
    let _ = stream.shutdown().await;
}
