//! The chat domain: register, authenticate, send, inbox, who, log out. Both facades (the line
//! protocol and HTTP) call this one place. [`Chat`] is a thin facade over parts with one job
//! each:
//!
//! - [`names`]: what a valid name, password and message text are;
//! - [`auth`]: checking passwords, over [`limits`] (the failed-login table) and [`hashing`]
//!   (the fair hash queue);
//! - [`users`]: which users exist;
//! - [`budget`]: how many bytes a second each user may send;
//! - [`writer`]: the group-commit writer that stores SENDs;
//! - [`live`]: what the IRC door's guests say, delivered live and never stored;
//! - [`tokens`]: the HTTP facade's bearer tokens, and [`sessions`]: ending what a token or a
//!   user opened when it logs out, on every node;
//! - the [`Topology`]: delivery after a commit, the inbox cache and presence.

mod auth;
mod budget;
mod hashing;
mod limits;
pub mod live;
mod names;
pub mod rooms;
mod sessions;
pub mod tokens;
mod users;
mod writer;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::error::{ChatError, ChatResult, Code};
use crate::hub::{Hub, HubLimits, Subscription, TooManySessions};
use crate::store::{Counts, Message, NewMessage, Page, Store, StoreErrorKind, Write};
use crate::supervisor::{Finished, Supervisor};
use crate::topology::Topology;
use auth::Auth;
pub use auth::ConnAuthState;
use budget::SendBudget;
pub use budget::{BURST as SEND_BURST_SECS, DEFAULT_RATE as DEFAULT_SEND_RATE, MESSAGE_OVERHEAD};
pub use hashing::HashLimits;
use limits::AddrKey;
pub use limits::{AuthLimits, REGISTRATIONS_PER_ADDR};
pub use names::{check_client_timestamp, Password, Username, MAX_MESSAGE_BYTES};
pub use tokens::{Issued, Tokens, MAX_TOKENS_PER_USER, RECHECK};
use users::{no_such_user, Users};
use writer::Writer;

/// Most messages one INBOX reply carries.
pub const INBOX_PAGE: u32 = 100;
/// Most names one WHO reply carries (names are at most 32 bytes, so under 40 KB as lines).
pub const WHO_PAGE: usize = 1000;
/// Every command that waits on the store is answered within this long of its start.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(5);

/// Settings of the domain layer.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    pub auth: AuthLimits,
    pub hashing: HashLimits,
    pub hub: HubLimits,
    /// This node's name (in a cluster, what its announcements carry).
    pub node_id: String,
    /// Live tokens one user may have; issuing another ends the oldest.
    pub tokens_per_user: usize,
    /// Bytes of messages one user may send per second on this node (0: no limit).
    pub send_rate: u64,
    /// Members one room may have.
    pub max_room_members: u32,
    /// Rooms one user may be in.
    pub max_rooms_per_user: u32,
}

/// One page of who is online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhoPage {
    /// At most [`WHO_PAGE`] names, in byte order.
    pub users: Vec<Arc<str>>,
    /// There are more after the last one: ask again after it.
    pub more: bool,
}

/// What a "log out everywhere" ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedOut {
    /// The user's tokens, on every node.
    pub tokens: u64,
    /// The user's sessions on this node (other nodes end theirs within seconds).
    pub sessions: usize,
}

/// The cheap, cloneable handle every connection holds.
#[derive(Clone)]
pub struct Chat {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    topology: Arc<Topology>,
    writer: Writer,
    auth: Auth,
    users: Users,
    tokens: Tokens,
    budget: SendBudget,
    connections: AtomicUsize,
    max_room_members: u32,
    max_rooms_per_user: u32,
    /// Stops the task that ends the sessions of ended tokens and logouts.
    stop_sessions: CancellationToken,
    sessions: Finished,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The sessions task lives no longer than the domain it serves.
        self.stop_sessions.cancel();
    }
}

/// Counts a connection as open for as long as it lives.
pub struct ConnectionGuard(Chat);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.inner.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Chat {
    /// Builds the domain over `store`: the topology's tasks, the group-commit writer and the
    /// session watcher start here, in `supervisor`, and run until [`Chat::close`].
    pub fn start(store: Store, options: ChatOptions, supervisor: &mut Supervisor) -> Chat {
        let topology = Topology::start(&store, &options.node_id, Hub::new(options.hub), supervisor);
        let writer = Writer::start(store.clone(), topology.clone(), supervisor);
        let tokens = Tokens::new(store.clone(), options.tokens_per_user);
        let stop_sessions = CancellationToken::new();
        let sessions = sessions::start(
            &store,
            topology.hub().clone(),
            tokens.clone(),
            stop_sessions.clone(),
            supervisor,
        );
        Chat {
            inner: Arc::new(Inner {
                store,
                topology,
                writer,
                auth: Auth::new(options.auth, options.hashing),
                users: Users::default(),
                tokens,
                budget: SendBudget::new(options.send_rate),
                connections: AtomicUsize::new(0),
                max_room_members: options.max_room_members.max(1),
                max_rooms_per_user: options.max_rooms_per_user.max(1),
                stop_sessions,
                sessions,
            }),
        }
    }

    /// Stops taking SENDs, commits and delivers the queued ones, and stops the topology's
    /// tasks, by `deadline`. Returns false if something did not finish in time.
    pub async fn close(&self, deadline: tokio::time::Instant) -> bool {
        let written = self.inner.writer.close(deadline).await;
        if !written {
            tracing::warn!("the message writer did not finish in time");
        }
        self.inner.stop_sessions.cancel();
        let _ = tokio::time::timeout_at(deadline, self.inner.sessions.wait()).await;
        let stopped = self.inner.topology.close(deadline).await;
        written && stopped
    }

    /// Creates an account. Each address has a bucket of registrations (refused with
    /// `RATE_LIMITED` when empty; loopback's is unlimited unless configured), and the hash
    /// waits its address's turn in the fair queue of [`hashing`] (`SERVER_BUSY` when the queue
    /// has no place for it). A name already taken costs no hash and no registration.
    pub async fn register(&self, user: &str, password: &str, peer: IpAddr) -> ChatResult<Username> {
        let user = Username::parse(user)?;
        let password = Password::parse(password)?;
        let addr = AddrKey::of(peer);
        let auth = &self.inner.auth;
        let taken = || ChatError::new(Code::UserExists, format!("{user} is already registered"));
        if self.inner.store.password_hash(user.as_str()).await?.is_some() {
            return Err(taken());
        }
        auth.begin_registration(addr)?;
        let hash = match auth.hash_password(addr, &password).await {
            Ok(hash) => hash,
            Err(e) => {
                auth.refund_registration(addr);
                return Err(e);
            }
        };
        match self.inner.store.create_user(user.as_str(), &hash).await {
            Ok(()) => {}
            Err(e) if e.kind == StoreErrorKind::Duplicate => return Err(taken()),
            Err(e) => return Err(e.into()),
        }
        self.inner.users.remember(user.as_arc());
        tracing::debug!(%user, "registered");
        Ok(user)
    }

    /// Checks credentials under the limits of [`limits`]: what can be refused without a hash is
    /// refused at once, before the login waits for anything; the attempt then takes its slots
    /// from the address and the account before it is hashed. The caller's per-connection state
    /// (`None` for facades without connections) counts its failures and remembers the account
    /// it logged in to. A malformed name or password needs no hash and counts only against the
    /// connection.
    pub async fn authenticate(
        &self,
        user: &str,
        password: &str,
        peer: IpAddr,
        conn: Option<&mut ConnAuthState>,
    ) -> ChatResult<Username> {
        let checked = self.check_login(user, password, peer, conn).await;
        use crate::metrics::{Login, METRICS};
        match &checked {
            Ok(_) => METRICS.login(Login::Ok),
            Err(e) if e.code == Code::BadCredentials => METRICS.login(Login::BadCredentials),
            Err(e) if e.code == Code::RateLimited => METRICS.login(Login::RateLimited),
            Err(e) if e.code == Code::ServerBusy => METRICS.login(Login::Busy),
            Err(_) => {}
        }
        if let Err(e) = &checked {
            // The activity log names who tried from where, never the password.
            let why = match e.code {
                Code::BadCredentials => Some("wrong name or password"),
                Code::RateLimited => Some("too many tries: rate limited"),
                Code::ServerBusy => Some("the server is busy checking other logins"),
                _ => None,
            };
            if let Some(why) = why {
                let valid = Username::parse(user).is_ok();
                let name = if valid { user } else { "(not a valid name)" };
                crate::activity::login_failed(name, peer, why);
            }
        }
        checked
    }

    async fn check_login(
        &self,
        user: &str,
        password: &str,
        peer: IpAddr,
        mut conn: Option<&mut ConnAuthState>,
    ) -> ChatResult<Username> {
        let auth = &self.inner.auth;
        let now = Instant::now();
        auth.check_conn(conn.as_deref_mut(), now)?;
        let (Ok(name), Ok(password)) = (Username::parse(user), Password::parse(password)) else {
            auth.conn_failed(conn, now);
            return Err(auth::bad_credentials());
        };
        let admission = auth.admit(AddrKey::of(peer), &name, conn.as_deref(), now)?;
        let verified = auth
            .verify(admission, &name, &password, async {
                Ok(self.inner.store.password_hash(name.as_str()).await?)
            })
            .await?;
        if verified {
            auth.succeeded(conn, &name);
            self.inner.users.remember(name.as_arc());
            Ok(name)
        } else {
            auth.conn_failed(conn, Instant::now());
            Err(auth::bad_credentials())
        }
    }

    /// Stores a message and returns it once it is committed; the topology then pushes it to
    /// the recipient's live sessions. Answered within [`COMMAND_DEADLINE`]. A message that
    /// does not fit the sender's send budget is refused (`RATE_LIMITED`) before it is stored.
    pub async fn send(
        &self,
        from: &Username,
        to: &str,
        body: &str,
        client_timestamp: Option<String>,
    ) -> ChatResult<Arc<Message>> {
        self.send_from(from, to, body, client_timestamp, 0).await
    }

    /// [`Chat::send`] from the live session `origin`, which is not pushed the message (a
    /// message to oneself is shown by the door that sent it, at once).
    pub async fn send_from(
        &self,
        from: &Username,
        to: &str,
        body: &str,
        client_timestamp: Option<String>,
        origin: u64,
    ) -> ChatResult<Arc<Message>> {
        let deadline = tokio::time::Instant::now() + COMMAND_DEADLINE;
        let to = Username::parse(to).map_err(|_| no_such_user(to))?;
        names::check_message_text(body)?;
        if let Some(stamp) = &client_timestamp {
            check_client_timestamp(stamp)?;
        }
        let recipient = tokio::time::timeout_at(
            deadline,
            self.inner.users.existing(&self.inner.store, to.as_str()),
        )
        .await
        .map_err(|_| timed_out("looking up the recipient"))??;
        let budget = &self.inner.budget;
        budget.take(from.as_arc(), body.len(), Instant::now())?;
        let message = NewMessage {
            sender: from.as_arc().clone(),
            recipient,
            body: body.to_owned(),
            client_timestamp,
            origin,
        };
        let stored = self.inner.writer.submit(Write::Direct(message), deadline).await;
        let stored = match stored {
            Ok(Ok(written)) => written
                .message
                .ok_or_else(|| ChatError::internal("storing the message", "no row was written")),
            Ok(Err(refused)) => Err(ChatError::internal("storing the message", format!("{refused:?}"))),
            Err(e) => Err(e),
        };
        if stored.is_err() {
            budget.give_back(from.as_str(), body.len());
        }
        stored
    }

    /// Messages to `user` with id > `after_id`, oldest first, at most `limit` (capped at 1000).
    pub async fn inbox(&self, user: &Username, after_id: i64, limit: u32) -> ChatResult<Vec<Arc<Message>>> {
        let (after, limit) = (after_id.max(0), limit.clamp(1, 1000));
        self.inner
            .topology
            .inbox(&self.inner.store, user.as_arc(), after, limit)
            .await
    }

    /// Messages between `user` and `peer` in both directions with id > `after_id`, oldest
    /// first, at most `limit` (capped at 1000); `NO_SUCH_USER` for an unknown peer.
    pub async fn conversation(
        &self,
        user: &Username,
        peer: &str,
        after_id: i64,
        limit: u32,
    ) -> ChatResult<Vec<Arc<Message>>> {
        self.conversation_page(user, peer, Page::After(after_id.max(0), limit.clamp(1, 1000)))
            .await
    }

    /// A page of the messages between `user` and `peer` in both directions, oldest first (at
    /// most 1000); `NO_SUCH_USER` for an unknown peer.
    pub async fn conversation_page(
        &self,
        user: &Username,
        peer: &str,
        page: Page,
    ) -> ChatResult<Vec<Arc<Message>>> {
        let peer = Username::parse(peer).map_err(|_| no_such_user(peer))?;
        let peer = self
            .inner
            .users
            .existing(&self.inner.store, peer.as_str())
            .await?;
        let page = self
            .inner
            .store
            .conversation(user.as_str(), &peer, rooms::bounded(page, 1000))
            .await?;
        Ok(page.into_iter().map(Arc::new).collect())
    }

    /// Who is online on any node: up to [`WHO_PAGE`] names after `after`, in byte order.
    pub async fn who(&self, after: &str) -> ChatResult<WhoPage> {
        let mut users = self.inner.topology.who(after, WHO_PAGE + 1).await?;
        let more = users.len() > WHO_PAGE;
        users.truncate(WHO_PAGE);
        Ok(WhoPage { users, more })
    }

    /// Which of `users` are online on any node.
    pub async fn online_among(&self, users: &[&str]) -> ChatResult<std::collections::HashSet<String>> {
        self.inner.topology.online_among(users).await
    }

    /// The account `name` stands for: the one of that exact name, else the only one equal
    /// to it without case (`ALICE` is `alice` when there is no `ALICE` and no `Alice`);
    /// `None` if there is none, or several. For finding someone only: acting as an account
    /// always takes its exact name.
    pub async fn resolve_user(&self, name: &str) -> ChatResult<Option<Arc<str>>> {
        if Username::parse(name).is_err() {
            return Ok(None);
        }
        match self.inner.users.existing(&self.inner.store, name).await {
            Ok(found) => return Ok(Some(found)),
            Err(e) if e.code == Code::NoSuchUser => {}
            Err(e) => return Err(e),
        }
        let found = self.inner.store.users_any_case(name).await?;
        Ok(match found.as_slice() {
            [one] => Some(Arc::from(one.as_str())),
            _ => None,
        })
    }

    /// Whether `name` is an account.
    pub async fn user_exists(&self, name: &str) -> ChatResult<bool> {
        if Username::parse(name).is_err() {
            return Ok(false);
        }
        match self.inner.users.existing(&self.inner.store, name).await {
            Ok(_) => Ok(true),
            Err(e) if e.code == Code::NoSuchUser => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// How many users are online on any node.
    pub async fn online_count(&self) -> ChatResult<usize> {
        self.inner.topology.online_count().await
    }

    /// Puts an authenticated session online, following its user's inbox and rooms, and
    /// returns its live feed; `kick` is cancelled if the session falls too far behind or is
    /// ended by a logout. A session opened with a bearer `token` ends with the token.
    /// `SERVER_BUSY` when the user, or the token, already has as many live sessions as allowed.
    pub async fn go_online(
        &self,
        user: &Username,
        kick: CancellationToken,
        token: Option<&str>,
    ) -> ChatResult<Subscription> {
        // Online first, then the rooms: a join committed in between reaches the hub as an
        // event and is followed from there; the list read after it has it too.
        let feed = self.subscribe(user, kick, token)?;
        let rooms = self.inner.store.followed(user.as_str()).await?;
        self.hub().follow(user.as_str(), &rooms);
        Ok(feed)
    }

    fn subscribe(
        &self,
        user: &Username,
        kick: CancellationToken,
        token: Option<&str>,
    ) -> ChatResult<Subscription> {
        self.hub()
            .subscribe(user.as_arc().clone(), kick, token.map(Tokens::id_of))
            .map_err(|refused| match refused {
                TooManySessions::User(most) => ChatError::new(
                    Code::ServerBusy,
                    format!("{user} already has {most} live sessions, the most allowed; close one first"),
                ),
                TooManySessions::Token(most) => ChatError::new(
                    Code::ServerBusy,
                    format!(
                        "this token already has {most} live event streams, the most allowed; \
                         close one, or log in again for a token of its own"
                    ),
                ),
            })
    }

    /// The bearer tokens, shared with the HTTP facade.
    pub fn tokens(&self) -> &Tokens {
        &self.inner.tokens
    }

    /// A new bearer token for `user`. Beyond the cap per user the oldest tokens end, and
    /// what they opened with them.
    pub async fn issue_token(&self, user: &Username) -> ChatResult<Issued> {
        let issued = self.inner.tokens.issue(user).await?;
        for token in &issued.ended {
            self.hub().end_token(token);
        }
        Ok(issued)
    }

    /// Ends `token` on every node, and its event streams: at once here, within seconds
    /// elsewhere. The user it belonged to.
    pub async fn log_out_token(&self, token: &str) -> ChatResult<Username> {
        let (user, id) = self.inner.tokens.revoke(token).await?;
        self.hub().end_token(&id);
        Ok(user)
    }

    /// Logs `user` out everywhere: every token and every session (logged-in line connections,
    /// event streams), at once on this node, within seconds on the others. A connection that
    /// asks for it leaves its own session first if it is to stay open.
    pub async fn log_out_everywhere(&self, user: &Username) -> ChatResult<LoggedOut> {
        // This node's sessions end whatever the store says: the user asked to be logged out.
        let sessions = self.hub().end_user(user.as_str(), None);
        let tokens = self.inner.tokens.revoke_all(user).await?;
        tracing::info!(%user, tokens, sessions, "logged out everywhere");
        Ok(LoggedOut { tokens, sessions })
    }

    /// The operator sets `user`'s password: every session and token of theirs ends, on
    /// every node (as a logout everywhere does). `NO_SUCH_USER` if there is none.
    pub async fn reset_password(&self, user: &str, password: &str) -> ChatResult<LoggedOut> {
        let user = Username::parse(user)?;
        let password = Password::parse(password)?;
        if self.inner.store.password_hash(user.as_str()).await?.is_none() {
            return Err(users::no_such_user(user.as_str()));
        }
        let admin = AddrKey::of(IpAddr::from([127, 0, 0, 1]));
        let hash = self.inner.auth.hash_password(admin, &password).await?;
        if !self.inner.store.set_password_hash(user.as_str(), &hash).await? {
            return Err(users::no_such_user(user.as_str()));
        }
        self.log_out_everywhere(&user).await
    }

    /// The operator removes `user`: their sessions and tokens end, they leave each room
    /// (its members see them go), and the account, its tokens, memberships, invitations and
    /// the direct messages sent to it are deleted (see [`Store::delete_user`]). The rooms it
    /// left, and what it said, stay. The rooms it was in.
    pub async fn remove_user(&self, user: &str) -> ChatResult<Vec<Arc<str>>> {
        let user = Username::parse(user)?;
        if self.inner.store.password_hash(user.as_str()).await?.is_none() {
            return Err(users::no_such_user(user.as_str()));
        }
        self.log_out_everywhere(&user).await?;
        let rooms = self.inner.store.rooms_of(user.as_str()).await?;
        let mut left = Vec::new();
        for room in rooms {
            // Origin 0: no session of theirs is left to spare the notice.
            match self.leave(&user, &room.name, 0).await {
                Ok(name) => left.push(name),
                Err(e) => {
                    tracing::warn!(%user, room = %room.name, error = %e, "removing a user: could not leave the room")
                }
            }
        }
        self.inner.store.delete_user(user.as_str()).await?;
        self.inner.users.forget(user.as_str());
        self.inner.topology.forget_inbox(user.as_str());
        self.inner.tokens.forget_user(user.as_str());
        Ok(left)
    }

    fn hub(&self) -> &Hub {
        self.inner.topology.hub()
    }

    pub async fn counts(&self) -> ChatResult<Counts> {
        Ok(self.inner.store.counts().await?)
    }

    /// Marks a connection open until the guard is dropped.
    pub fn connection_opened(&self) -> ConnectionGuard {
        self.inner.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }

    /// Connections open now (line protocol and live event streams).
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// Bytes of live messages queued for this node's sessions, not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.hub().queued_bytes()
    }

    /// Password hashes waiting or running now.
    pub fn hash_queue_depth(&self) -> usize {
        self.inner.auth.hash_queue_depth()
    }

    /// How many users have a live session on this node.
    pub fn online_here(&self) -> usize {
        self.hub().online_count()
    }
}

fn timed_out(context: &str) -> ChatError {
    ChatError::unavailable(
        context,
        crate::error::Outcome::Unchanged,
        format!("no answer within {COMMAND_DEADLINE:?}"),
    )
}
