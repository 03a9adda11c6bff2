//! The RFC 862 echo service: every byte received is sent back, unchanged.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const CHUNK: usize = 16 * 1024;

/// Echoes until the client closes, goes idle for `idle_timeout`, or the server shuts down.
pub async fn serve(mut stream: TcpStream, idle_timeout: Option<Duration>, shutdown: CancellationToken) {
    let idle = idle_timeout.unwrap_or(Duration::from_secs(86400 * 365));
    let mut buf = Vec::new();
    loop {
        // Hold no buffer while waiting: allocate only once bytes are there.
        let ready = tokio::select! {
            _ = shutdown.cancelled() => break,
            ready = tokio::time::timeout(idle, stream.readable()) => ready,
        };
        match ready {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => break,
        }
        buf.resize(CHUNK, 0);
        let n = match stream.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        };
        let written = tokio::select! {
            _ = shutdown.cancelled() => break,
            written = stream.write_all(&buf[..n]) => written,
        };
        if written.is_err() {
            break;
        }
        // Keep the buffer only while bytes keep coming.
        if n < CHUNK {
            buf = Vec::new();
        }
    }
    let _ = stream.shutdown().await;
}
