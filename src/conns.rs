//! The open connections, as the operator sees them: every door registers each connection it
//! serves here, for as long as it is open. The admin listener lists them (`/admin`,
//! `/admin/connections`), watches one's trace live, and disconnects one; `/metrics` counts
//! bytes and connections per door from here.
//!
//! A connection's entry is small and cheap to keep current: its byte counts are relaxed
//! atomics of its own (no cache line shared between connections on the hot path), its last
//! line is copied only when a read ends a line, and it is masked only when it is shown.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::trace::Door;

/// The most of a connection's last line that is kept to be shown.
const LAST_LINE: usize = 160;
/// Trace lines waiting for a slow watcher of one connection; past it the watcher skips.
const WATCH_QUEUE: usize = 1024;

/// Every door, in the order the operator's view lists them.
pub const DOORS: [Door; 4] = [Door::Line, Door::Http, Door::Irc, Door::Echo];

/// The table of open connections.
pub struct Conns {
    open: Mutex<HashMap<u64, Arc<ConnInfo>>>,
    next_id: AtomicU64,
    /// Bytes of connections that have closed, per door (in, out): with the open ones', the
    /// totals `/metrics` shows.
    closed_bytes: [(AtomicU64, AtomicU64); 4],
    /// Connections ever opened per door.
    opened: [AtomicU64; 4],
    /// Bumped whenever a connection opens, closes or logs in: the live view redraws.
    changed: watch::Sender<u64>,
}

/// A door's connections and bytes ([`Conns::per_door`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoorTotals {
    pub open: u64,
    pub opened: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// One open connection.
pub struct ConnInfo {
    pub id: u64,
    pub door: Door,
    /// Whether it came in by a TLS door.
    pub tls: bool,
    pub peer: SocketAddr,
    pub since: SystemTime,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    user: Mutex<Option<Arc<str>>>,
    /// The last line the client sent, raw (masked when shown).
    last: Mutex<Vec<u8>>,
    /// Cancelled on shutdown, or when the operator disconnects it.
    pub stop: CancellationToken,
    by_operator: AtomicBool,
    watched: AtomicBool,
    watchers: Mutex<Option<broadcast::Sender<Arc<str>>>>,
    table: Arc<Conns>,
}

/// What the operator's view shows of a connection at one moment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnView {
    pub id: u64,
    pub door: &'static str,
    pub tls: bool,
    pub addr: String,
    pub user: Option<String>,
    /// Seconds since the Unix epoch.
    pub since: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub last_line: String,
}

impl Conns {
    pub fn new() -> Arc<Conns> {
        Arc::new(Conns {
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed_bytes: Default::default(),
            opened: Default::default(),
            changed: watch::channel(0).0,
        })
    }

    /// Registers a connection; it leaves the table when the returned guard is dropped.
    /// `stop` is the server's shutdown: the connection's own token is a child of it.
    pub fn open(
        self: &Arc<Conns>,
        door: Door,
        tls: bool,
        peer: SocketAddr,
        stop: &CancellationToken,
    ) -> Registered {
        let info = Arc::new(ConnInfo {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            door,
            tls,
            peer,
            since: SystemTime::now(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            user: Mutex::new(None),
            last: Mutex::new(Vec::new()),
            stop: stop.child_token(),
            by_operator: AtomicBool::new(false),
            watched: AtomicBool::new(false),
            watchers: Mutex::new(None),
            table: self.clone(),
        });
        self.opened[slot(door)].fetch_add(1, Ordering::Relaxed);
        lock(&self.open).insert(info.id, info.clone());
        self.bump();
        Registered(info)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Resolves at the next change of the table (a connection opened, closed, logged in).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn get(&self, id: u64) -> Option<Arc<ConnInfo>> {
        lock(&self.open).get(&id).cloned()
    }

    /// Every open connection, in no particular order.
    pub fn all(&self) -> Vec<Arc<ConnInfo>> {
        lock(&self.open).values().cloned().collect()
    }

    /// Per door, in the order of [`DOORS`]: connections open now, ever opened, and bytes in
    /// and out since the start, open connections' included. One pass over the table.
    pub fn per_door(&self) -> [DoorTotals; 4] {
        let mut totals: [DoorTotals; 4] = std::array::from_fn(|i| DoorTotals {
            open: 0,
            opened: self.opened[i].load(Ordering::Relaxed),
            bytes_in: self.closed_bytes[i].0.load(Ordering::Relaxed),
            bytes_out: self.closed_bytes[i].1.load(Ordering::Relaxed),
        });
        for info in lock(&self.open).values() {
            let door = &mut totals[slot(info.door)];
            door.open += 1;
            door.bytes_in += info.bytes_in.load(Ordering::Relaxed);
            door.bytes_out += info.bytes_out.load(Ordering::Relaxed);
        }
        totals
    }

    /// Ends every open connection of `user` on any door, as the operator: they are told
    /// they were disconnected. How many there were.
    pub fn disconnect_user(&self, user: &str) -> usize {
        let mine: Vec<_> = lock(&self.open)
            .values()
            .filter(|info| info.user().as_deref() == Some(user))
            .cloned()
            .collect();
        mine.iter().for_each(|info| info.disconnect());
        mine.len()
    }
}

/// Where a door goes in per-door arrays.
pub fn slot(door: Door) -> usize {
    DOORS.iter().position(|d| *d == door).unwrap_or(0)
}

/// A registered connection: dropping it takes it out of the table.
pub struct Registered(pub Arc<ConnInfo>);

impl Drop for Registered {
    fn drop(&mut self) {
        let info = &self.0;
        let table = &info.table;
        lock(&table.open).remove(&info.id);
        let (bytes_in, bytes_out) = &table.closed_bytes[slot(info.door)];
        bytes_in.fetch_add(info.bytes_in.load(Ordering::Relaxed), Ordering::Relaxed);
        bytes_out.fetch_add(info.bytes_out.load(Ordering::Relaxed), Ordering::Relaxed);
        // Its watchers see the stream end.
        lock(&info.watchers).take();
        table.bump();
    }
}

impl std::ops::Deref for Registered {
    type Target = Arc<ConnInfo>;
    fn deref(&self) -> &Arc<ConnInfo> {
        &self.0
    }
}

impl ConnInfo {
    /// `bytes` arrived; `unframed` is what is buffered and not yet read as lines, ending with
    /// them: its last complete line becomes the connection's last line.
    pub fn received(&self, bytes: usize, unframed: &[u8]) {
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
        let new = &unframed[unframed.len().saturating_sub(bytes)..];
        if !new.contains(&b'\n') {
            return;
        }
        let end = unframed.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        let line = &unframed[..end];
        let start = line.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let line = &line[start..];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() {
            self.set_last(line);
        }
    }

    /// The last line the client sent is `line` (raw; it is masked when shown).
    pub fn set_last(&self, line: &[u8]) {
        let mut last = lock(&self.last);
        last.clear();
        last.extend_from_slice(&line[..line.len().min(LAST_LINE)]);
    }

    pub fn sent(&self, bytes: usize) {
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn user(&self) -> Option<Arc<str>> {
        lock(&self.user).clone()
    }

    /// Whether the connection is `user`'s already.
    pub fn user_is(&self, user: Option<&str>) -> bool {
        lock(&self.user).as_deref() == user
    }

    /// The connection is now `user`'s (logged in), or no one's.
    pub fn set_user(&self, user: Option<&str>) {
        let mut current = lock(&self.user);
        if current.as_deref() != user {
            *current = user.map(Arc::from);
            drop(current);
            self.table.bump();
        }
    }

    /// Ends the connection as the operator: its door says so to the client.
    pub fn disconnect(&self) {
        self.by_operator.store(true, Ordering::Relaxed);
        self.stop.cancel();
    }

    /// Whether the operator ended it (rather than a shutdown).
    pub fn by_operator(&self) -> bool {
        self.by_operator.load(Ordering::Relaxed)
    }

    /// Whether someone watches its trace live.
    pub fn is_watched(&self) -> bool {
        self.watched.load(Ordering::Relaxed)
    }

    /// Watches its trace live: each line as the trace shows it, until the connection closes.
    pub fn watch(&self) -> broadcast::Receiver<Arc<str>> {
        let mut watchers = lock(&self.watchers);
        let sender = watchers.get_or_insert_with(|| broadcast::channel(WATCH_QUEUE).0);
        self.watched.store(true, Ordering::Relaxed);
        sender.subscribe()
    }

    /// Hands a trace line to its watchers, if any are left.
    pub fn to_watchers(&self, line: &str) {
        let mut watchers = lock(&self.watchers);
        let gone = match watchers.as_ref() {
            Some(sender) => sender.send(Arc::from(line)).is_err(),
            None => true,
        };
        if gone {
            watchers.take();
            self.watched.store(false, Ordering::Relaxed);
        }
    }

    pub fn view(&self) -> ConnView {
        let last = lock(&self.last);
        let last_line = crate::trace::mask(self.door, &crate::trace::escape(&last));
        drop(last);
        ConnView {
            id: self.id,
            door: door_name(self.door),
            tls: self.tls,
            addr: self.peer.to_string(),
            user: self.user().map(|u| u.to_string()),
            since: self
                .since
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            last_line,
        }
    }
}

/// The door's name, as the operator's view and `/metrics` show it.
pub fn door_name(door: Door) -> &'static str {
    match door {
        Door::Line => "line",
        Door::Http => "http",
        Door::Irc => "irc",
        Door::Echo => "echo",
    }
}

/// A stream whose bytes count as `conn`'s: for doors served by a library (HTTP) rather than
/// through [`crate::socket::Socket`].
pub struct Counted<S> {
    inner: S,
    conn: Arc<ConnInfo>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, conn: Arc<ConnInfo>) -> Counted<S> {
        Counted { inner, conn }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        this.conn.bytes_in.fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            this.conn.sent(*n);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &polled {
            this.conn.sent(*n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "192.168.1.31:50000".parse().unwrap()
    }

    #[test]
    fn a_connection_is_listed_while_open_and_its_bytes_stay_counted() {
        let conns = Conns::new();
        let stop = CancellationToken::new();
        let conn = conns.open(Door::Line, false, peer(), &stop);
        conn.received(12, b"AUTH bob pw\n");
        conn.sent(7);
        assert_eq!(conns.per_door()[0].open, 1);
        let view = conns.get(conn.id).unwrap().view();
        assert_eq!(view.last_line, "AUTH bob ****");
        assert_eq!((view.bytes_in, view.bytes_out), (12, 7));
        drop(conn);
        assert!(conns.all().is_empty());
        let line = conns.per_door()[0];
        assert_eq!(
            (line.open, line.opened, line.bytes_in, line.bytes_out),
            (0, 1, 12, 7)
        );
    }

    #[test]
    fn the_last_line_is_the_last_complete_one() {
        let conns = Conns::new();
        let conn = conns.open(Door::Line, false, peer(), &CancellationToken::new());
        conn.received(4, b"SEND");
        assert_eq!(conn.view().last_line, "");
        conn.received(21, b"SEND bob hi\r\nWHO\r\nSEN");
        assert_eq!(conn.view().last_line, "WHO");
    }

    #[test]
    fn the_operator_disconnects_without_ending_the_server() {
        let conns = Conns::new();
        let stop = CancellationToken::new();
        let (a, b) = (
            conns.open(Door::Irc, false, peer(), &stop),
            conns.open(Door::Line, false, peer(), &stop),
        );
        a.set_user(Some("alice"));
        assert_eq!(conns.disconnect_user("alice"), 1);
        assert!(a.stop.is_cancelled() && a.by_operator());
        assert!(!b.stop.is_cancelled() && !stop.is_cancelled());
        stop.cancel();
        assert!(b.stop.is_cancelled() && !b.by_operator());
    }

    #[tokio::test]
    async fn watchers_get_trace_lines_until_they_leave() {
        let conns = Conns::new();
        let conn = conns.open(Door::Line, false, peer(), &CancellationToken::new());
        assert!(!conn.is_watched());
        let mut watcher = conn.watch();
        assert!(conn.is_watched());
        conn.to_watchers("one");
        assert_eq!(&*watcher.recv().await.unwrap(), "one");
        drop(watcher);
        conn.to_watchers("two");
        assert!(!conn.is_watched());
    }
}
