//! One IRC connection from its first line to its `ERROR`: registration (CAP, PASS, NICK,
//! USER, SASL), the welcome, logging in to an account, the live feed of the account's inbox
//! and rooms, and the timers (registration, PING, identify-or-be-renamed).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::stream::Stream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::caps::{Caps, Sasl};
use super::numeric::*;
use super::wire::{self, Frame, Framer, Msg};
use super::{commands, render, IrcSettings, HOST, NETWORK};
use crate::chat::{Chat, ConnAuthState, Username};
use crate::conns::ConnInfo;
use crate::error::ChatError;
use crate::hub::{Ended, Subscription};
use crate::socket::{Socket, FLUSH_AT};
use crate::store::Message;

/// Pushes written in one go before the session looks at its socket again.
const PUSH_BATCH: usize = 256;

/// A logged-in connection: its account and live feed.
pub struct LoggedIn {
    pub user: Username,
    pub feed: Subscription,
    /// Cancelled by the hub when the session falls too far behind (its SendQ is full).
    pub kick: CancellationToken,
}

/// A guest's connection (`--irc-guests`): its live feed.
pub struct Guest {
    pub feed: Subscription,
    /// Cancelled by the hub when the guest falls too far behind (its SendQ is full).
    pub kick: CancellationToken,
}

/// Why a connection ends, and what it is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Quit(String),
    Eof,
    Shutdown,
    PingTimeout,
    RegistrationTimeout,
    SendQ,
    LoggedOut,
    BadPassword,
    /// By an operator's KILL: `Killed (<oper> (<reason>))`.
    Killed(String),
}

impl End {
    /// What the others in its channels see: `QUIT :<this>`.
    pub fn quit_reason(&self) -> String {
        match self {
            End::Quit(reason) => format!("Quit: {reason}"),
            End::Eof => "Connection closed".to_string(),
            End::Shutdown => "Server shutting down".to_string(),
            End::PingTimeout => "Ping timeout".to_string(),
            End::RegistrationTimeout => "Registration timed out".to_string(),
            End::SendQ => "SendQ exceeded".to_string(),
            End::LoggedOut => "Logged out".to_string(),
            End::BadPassword => "Bad password".to_string(),
            End::Killed(why) => why.clone(),
        }
    }
}

/// Everything the door knows about one client.
pub struct Client {
    pub chat: Chat,
    pub peer: SocketAddr,
    pub settings: Arc<IrcSettings>,
    socket: Socket,
    framer: Framer,
    /// `*` until NICK.
    pub nick: String,
    /// USER's user name, once given.
    pub username: Option<String>,
    pub realname: String,
    /// PASS, kept until registration completes.
    pub pass: Option<String>,
    pub caps: Caps,
    /// CAP LS or REQ before registration holds it until CAP END.
    pub cap_negotiating: bool,
    pub cap_302: bool,
    pub registered: bool,
    pub sasl: Sasl,
    pub auth: ConnAuthState,
    /// Logged in before registration completed: online once it does.
    pending: Option<Username>,
    pub session: Option<Box<LoggedIn>>,
    /// Without an account, with `--irc-guests`: the guest's live feed.
    pub guest: Option<Box<Guest>>,
    /// The rooms this client was told it is in, by lower-case name, with the name shown.
    pub channels: BTreeMap<String, Arc<str>>,
    /// Set by QUIT, or by a refusal that ends the connection.
    pub end: Option<End>,
    /// A client on an account's nick without having logged in is renamed at this time.
    identify_by: Option<Instant>,
    /// When the client last sent anything, and whether it was sent a PING since.
    last_heard: Instant,
    pinged: bool,
    connected: Instant,
    /// Batches this connection was sent (labeled-response), for their references.
    batches: u32,
    /// The login was already announced (`900`, by SASL): the welcome does not repeat it.
    pub login_announced: bool,
    /// Its user modes and kill switch, which other connections reach through `idents`.
    pub handle: Arc<super::Handle>,
    /// Messages the command being answered delivered to this client itself, written after
    /// its reply.
    pub delivered_here: Vec<Arc<Message>>,
    /// The connection as the operator sees it.
    conn: Arc<ConnInfo>,
}

/// Serves one accepted connection until the client quits, leaves, times out, or the server
/// shuts down.
pub fn serve(
    stream: Stream,
    conn: Arc<ConnInfo>,
    chat: Chat,
    settings: Arc<IrcSettings>,
) -> impl Future<Output = ()> + Send {
    let peer = conn.peer;
    // Shutdown, or the operator's disconnect.
    let shutdown = conn.stop.clone();
    let open = chat.connection_opened();
    let visit = crate::activity::Visit::start(peer);
    let now = Instant::now();
    let mut socket = Socket::new(stream, settings.write_stall);
    socket.register(&conn, settings.tracer.as_ref());
    settings
        .counts
        .unregistered
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut client = Client {
        chat,
        peer,
        settings,
        socket,
        framer: Framer::default(),
        nick: "*".into(),
        username: None,
        realname: String::new(),
        pass: None,
        caps: Caps::default(),
        cap_negotiating: false,
        cap_302: false,
        registered: false,
        sasl: Sasl::default(),
        auth: ConnAuthState::default(),
        pending: None,
        session: None,
        guest: None,
        channels: BTreeMap::new(),
        end: None,
        identify_by: None,
        last_heard: now,
        pinged: false,
        connected: now,
        batches: 0,
        login_announced: false,
        handle: Arc::default(),
        delivered_here: Vec::new(),
        conn,
    };
    async move {
        let _open = &open;
        let end = match run(&mut client, &shutdown).await {
            Ok(end) => end,
            // The client stopped reading: its pushes filled the hub's queue, or it took none
            // of our bytes for the write stall.
            Err(e) if e.kind() == io::ErrorKind::TimedOut => End::SendQ,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted && client.kicked() => End::SendQ,
            Err(e) => {
                tracing::debug!(error = %e, "IRC connection ended");
                End::Eof
            }
        };
        client.finish(&end).await;
        super::local_commands::quit(&mut client, &end.quit_reason());
        client.end_guest();
        if !client.registered {
            let unregistered = &client.settings.counts.unregistered;
            unregistered.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        if client.registered {
            client.settings.idents.gone(&client.nick, client.peer);
            client.settings.whowas.left(super::Departed {
                nick: client.nick.clone(),
                username: client.username.clone().unwrap_or_default(),
                realname: client.realname.clone(),
            });
        }
        if let Some(session) = &client.session {
            client
                .settings
                .away
                .session_ended(session.user.as_str(), session.feed.id());
        }
        visit.end(client.account().map(Username::as_str));
    }
}

async fn run(c: &mut Client, shutdown: &CancellationToken) -> io::Result<End> {
    let mut scratch = Vec::new();
    let mut timer = Box::pin(tokio::time::sleep_until(c.next_timer()));
    loop {
        if c.socket.has_work() {
            if let Some(end) = Box::pin(answer_buffered(c, &mut scratch, shutdown)).await? {
                return Ok(end);
            }
            timer.as_mut().reset(c.next_timer());
        }
        c.socket.release_idle_buffers();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(End::Shutdown),
            _ = c.handle.kill.cancelled() => {
                let why = c.handle.killed.lock().unwrap_or_else(|e| e.into_inner()).clone();
                return Ok(End::Killed(why));
            }
            pushed = next_push(&c.session, &c.guest) => {
                let Some(first) = pushed else {
                    let ended = c.feed().and_then(Subscription::ended);
                    return Ok(if ended == Some(Ended::LoggedOut) { End::LoggedOut } else { End::SendQ });
                };
                Box::pin(c.write_pushes(&first)).await;
            }
            read = c.socket.read_more() => {
                if read? == 0 {
                    return Ok(End::Eof);
                }
                c.last_heard = Instant::now();
                c.pinged = false;
            }
            _ = &mut timer => {
                if let Some(end) = Box::pin(c.on_timer()).await {
                    return Ok(end);
                }
                timer.as_mut().reset(c.next_timer());
            }
        }
    }
}

/// Answers every complete line already buffered, in order, then writes the answers (and
/// pushes gathered with them) in one go. `Some` once the connection is to end.
async fn answer_buffered(
    c: &mut Client,
    scratch: &mut Vec<u8>,
    shutdown: &CancellationToken,
) -> io::Result<Option<End>> {
    while let Some(frame) = c.framer.next(&mut c.socket.rbuf, scratch) {
        match frame {
            Frame::Line(line) => {
                if let Some(msg) = Msg::parse(line) {
                    commands::dispatch(c, &msg).await;
                }
            }
            Frame::TooLong => c.numeric(ERR_INPUTTOOLONG, &[], "Input line was too long"),
            Frame::BadEncoding(raw) => Box::pin(bad_encoding(c, raw)).await,
        }
        if !c.registered && c.ready_to_register() {
            Box::pin(c.register()).await;
        }
        if let Some(end) = c.end.clone() {
            return Ok(Some(end));
        }
        if c.socket.wants_flush() {
            c.flush(shutdown).await?;
        }
    }
    c.flush(shutdown).await?;
    Ok(None)
}

/// A line that is not UTF-8, or that holds a NUL (`UTF8ONLY`): `FAIL <command> INVALID_UTF8`
/// (IRCv3 standard replies), and it is dropped. A USER line is the exception before
/// registration: a user or real name in another encoding still registers, its stray bytes
/// shown as U+FFFD.
async fn bad_encoding(c: &mut Client, raw: &[u8]) {
    let text = String::from_utf8_lossy(raw).replace('\0', "\u{fffd}");
    let msg = Msg::parse(&text);
    if let Some(m) = msg
        .as_ref()
        .filter(|m| m.command.eq_ignore_ascii_case("USER") && !c.registered)
    {
        return commands::dispatch(c, m).await;
    }
    let command: String = msg
        .map_or("*", |m| m.command)
        .chars()
        .take(32)
        .collect::<String>()
        .to_ascii_uppercase();
    c.raw(
        "FAIL",
        &[&command, "INVALID_UTF8"],
        Some("Lines must be UTF-8 (UTF8ONLY), without NUL bytes; that one was discarded"),
    );
}

/// The next live message for this session or guest; `None` if the hub ended it. Never
/// resolves while the connection is neither.
async fn next_push(session: &Option<Box<LoggedIn>>, guest: &Option<Box<Guest>>) -> Option<Arc<Message>> {
    let Some((feed, _)) = live(session, guest) else {
        return std::future::pending().await;
    };
    std::future::poll_fn(|cx| feed.poll_recv(cx)).await
}

/// The live feed and its kick token: the account's session's, or the guest's.
fn live<'a>(
    session: &'a Option<Box<LoggedIn>>,
    guest: &'a Option<Box<Guest>>,
) -> Option<(&'a Subscription, &'a CancellationToken)> {
    match (session, guest) {
        (Some(session), _) => Some((&session.feed, &session.kick)),
        (None, Some(guest)) => Some((&guest.feed, &guest.kick)),
        (None, None) => None,
    }
}

impl Client {
    /// The account this connection is logged in to, if any.
    pub fn account(&self) -> Option<&Username> {
        match &self.session {
            Some(s) if s.feed.ended() != Some(Ended::LoggedOut) => Some(&s.user),
            Some(_) => None,
            None => self.pending.as_ref(),
        }
    }

    /// The live session, which what this connection sends carries so that it is not pushed
    /// back its own changes; 0 before login.
    pub fn origin(&self) -> u64 {
        self.feed().map_or(0, Subscription::id)
    }

    /// The live feed: the account's session, or the guest's.
    pub fn feed(&self) -> Option<&Subscription> {
        live(&self.session, &self.guest).map(|(feed, _)| feed)
    }

    /// Whether the hub ended this session for falling behind.
    fn kicked(&self) -> bool {
        live(&self.session, &self.guest).is_some_and(|(_, kick)| kick.is_cancelled())
    }

    /// Whether this connection is a guest (`--irc-guests`, no account).
    pub fn is_guest(&self) -> bool {
        self.session.is_none() && self.guest.is_some()
    }

    /// `nick!user@host` for this client.
    pub fn mask(&self) -> String {
        render::mask(&self.nick)
    }

    /// A numeric reply: `:server <code> <nick> <middle...> :<text>`.
    pub fn numeric(&mut self, code: &str, middle: &[&str], text: &str) {
        let mut params: Vec<&str> = Vec::with_capacity(middle.len() + 1);
        params.push(&self.nick);
        params.extend_from_slice(middle);
        let server = &self.settings.server_name;
        wire::put(self.socket.out(), "", server, code, &params, Some(text));
    }

    /// A numeric reply whose parameters are all given, the last one written as the trailing
    /// one: `numeric_params(RPL_LUSEROP, &["0", "operator(s) online"])`.
    pub fn numeric_params(&mut self, code: &str, params: &[&str]) {
        let (last, middle) = params.split_last().expect("at least one parameter");
        self.numeric(code, middle, last);
    }

    /// `:server PONG server :<token>`, the answer to a PING.
    pub fn pong(&mut self, token: &str) {
        let server = &self.settings.server_name;
        wire::put(self.socket.out(), "", server, "PONG", &[server], Some(token));
    }

    /// A line from the server: `:server <command> <middle...> [:<trailing>]`.
    pub fn raw(&mut self, command: &str, middle: &[&str], trailing: Option<&str>) {
        let server = &self.settings.server_name;
        wire::put(self.socket.out(), "", server, command, middle, trailing);
    }

    /// A line from a user (or from this client itself), with the tags its capabilities ask
    /// for.
    pub fn relay(
        &mut self,
        tags: &str,
        source: &str,
        command: &str,
        middle: &[&str],
        trailing: Option<&str>,
    ) {
        wire::put(self.socket.out(), tags, source, command, middle, trailing);
    }

    /// A registered client's new nick (WHOIS and WHO find it under it).
    pub fn set_nick(&mut self, new: &str) {
        self.settings.idents.renamed(&self.nick, new, self.peer);
        self.nick = new.to_string();
    }

    /// Bytes gathered for the client and not written yet: where a command's response starts.
    pub fn written(&self) -> usize {
        self.socket.pending()
    }

    /// Labels what was gathered from `from` on as the response to a labeled command.
    pub fn label_response(&mut self, from: usize, label: &str) {
        self.batches += 1;
        let batch = format!("l{}", self.batches);
        let server = &self.settings.server_name;
        super::labeled::label(self.socket.out(), from, label, server, &batch);
    }

    /// `:server CAP <nick> <sub> :<list>`.
    pub fn cap_reply(&mut self, sub: &str, list: &str) {
        let nick = self.nick.clone();
        self.raw("CAP", &[&nick, sub], Some(list));
    }

    /// A notice from NickServ.
    pub fn nickserv(&mut self, text: &str) {
        let nick = self.nick.clone();
        wire::put(
            self.socket.out(),
            "",
            super::nickserv::MASK,
            "NOTICE",
            &[&nick],
            Some(text),
        );
    }

    /// An error of the domain that has no numeric of its own: 400 with its words.
    pub fn failed(&mut self, command: &str, error: &ChatError) {
        error.log();
        let text = format!("{}: {}", error.code, error.message);
        self.numeric(ERR_UNKNOWNERROR, &[command], &text);
    }

    async fn flush(&mut self, shutdown: &CancellationToken) -> io::Result<()> {
        // The trace and the operator's view name the account, or a guest by its nick.
        let who = match (self.account(), self.is_guest()) {
            (Some(account), _) => Some(account.as_str()),
            (None, true) => Some(self.nick.as_str()),
            (None, false) => None,
        };
        if !self.conn.user_is(who) {
            let who = who.map(str::to_owned);
            self.socket.trace_user(who.as_deref());
        }
        let kick = live(&self.session, &self.guest).map(|(_, kick)| kick);
        match self.socket.flush(shutdown, kick).await {
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted && shutdown.is_cancelled() => Ok(()),
            other => other,
        }
    }

    /// Whether NICK and USER are in, and no CAP negotiation or SASL exchange holds
    /// registration back.
    fn ready_to_register(&self) -> bool {
        self.nick != "*"
            && self.username.is_some()
            && !self.cap_negotiating
            && matches!(self.sasl, Sasl::Idle)
            && self.end.is_none()
    }

    /// Completes registration: the connection password, a PASS login, the welcome, and for
    /// an account, its feed and rooms.
    async fn register(&mut self) {
        let pass = self.pass.take();
        if let Some(required) = self.settings.password.clone() {
            let given = pass.as_deref().unwrap_or("");
            if !constant_time_eq(given.as_bytes(), required.as_bytes()) {
                self.numeric(
                    ERR_PASSWDMISMATCH,
                    &[],
                    "Password incorrect: this server needs its connection password (PASS)",
                );
                self.end = Some(End::BadPassword);
                return;
            }
        } else if let (Some(pass), None) = (pass, self.account()) {
            // PASS <password> logs in to the nick's account; PASS <account>:<password> to
            // that account.
            let (account, password) = match pass.split_once(':') {
                Some((account, password)) => (account.to_string(), password.to_string()),
                None => (self.nick.clone(), pass),
            };
            match self.check_password(&account, &password).await {
                Ok(user) => self.pending = Some(user),
                Err(e) => {
                    self.numeric(
                        ERR_PASSWDMISMATCH,
                        &[],
                        &format!("Password incorrect: {}", e.message),
                    );
                    self.end = Some(End::BadPassword);
                    return;
                }
            }
        }
        if let Some(account) = self.pending.clone() {
            // On chatd a nick is its account's name: the welcome says so, and clients take
            // their nick from it.
            self.nick = account.to_string();
        } else if self.settings.guests.is_some() && !self.is_reserved(&self.nick.clone()).await {
            let nick = self.nick.clone();
            if !self.become_guest(&nick) {
                // Another guest took it since NICK: the client picks another (RFC 2812
                // §3.1.2), and registers with it.
                self.nick = "*".into();
                self.numeric(ERR_NICKNAMEINUSE, &[&nick], "Nickname is already in use");
                return;
            }
        }
        self.registered = true;
        let unregistered = &self.settings.counts.unregistered;
        unregistered.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let username = self.username.clone().unwrap_or_default();
        let settings = self.settings.clone();
        settings
            .idents
            .set(&self.nick, &username, &self.realname, self.peer, &self.handle);
        self.welcome().await;
        match self.pending.take() {
            Some(account) => {
                self.go_online(account).await;
            }
            None if self.is_guest() => self.welcome_guest(),
            None => self.ask_to_identify().await,
        }
    }

    /// Whether `nick` is an account's (when the store cannot tell, it counts as one).
    pub async fn is_reserved(&self, nick: &str) -> bool {
        self.chat.user_exists(nick).await.unwrap_or(true)
    }

    /// Makes this connection a guest on `nick`; false if another guest here has it.
    fn become_guest(&mut self, nick: &str) -> bool {
        let Some(guests) = &self.settings.guests else {
            return false;
        };
        let kick = CancellationToken::new();
        let feed = self.chat.guest_feed(kick.clone());
        if !guests.claim(nick, feed.id()) {
            return false;
        }
        self.guest = Some(Box::new(Guest { feed, kick }));
        self.feed_changed();
        true
    }

    /// Where other connections' lines to this one (WALLOPS) go now.
    pub fn feed_changed(&self) {
        let feed = super::local_commands::my_feed(self);
        *self.handle.feed.lock().unwrap_or_else(|e| e.into_inner()) = feed;
    }

    fn welcome_guest(&mut self) {
        self.nickserv(&format!(
            "Welcome, guest {}. You may join public channels (/list) or make your own, and talk live; nothing you say is kept, and messages sent while you are away are lost. Keep your nick and your messages: /msg NickServ REGISTER <password>",
            self.nick
        ));
    }

    /// Ends this connection's guest, if it is one: it leaves its channels, and its nick is
    /// free again.
    pub fn end_guest(&mut self) {
        let Some(guest) = self.guest.take() else {
            return;
        };
        for room in self.channels.values() {
            self.chat.guest_leave(&guest.feed, &self.nick, room);
        }
        if self.session.is_none() {
            self.channels.clear();
        }
        if let Some(guests) = &self.settings.guests {
            guests.release(&self.nick, guest.feed.id());
        }
        self.settings.marks.forget(&format!("~{}", guest.feed.id()));
        self.settings.conversations.forget(&self.nick);
        self.settings.away.session_ended(&self.nick, guest.feed.id());
    }

    /// 001-005, LUSERS and the MOTD.
    async fn welcome(&mut self) {
        let (server, nick) = (self.settings.server_name.clone(), self.nick.clone());
        let version = concat!("chatd-", env!("CARGO_PKG_VERSION"));
        self.numeric(
            RPL_WELCOME,
            &[],
            &format!("Welcome to the {NETWORK} IRC Network {nick}!{nick}@{HOST}"),
        );
        self.numeric(
            RPL_YOURHOST,
            &[],
            &format!("Your host is {server}, running version {version}"),
        );
        let created = format!("This server was created {}", self.settings.created);
        self.numeric(RPL_CREATED, &[], &created);
        let server_name = server.clone();
        // The user modes, the channel modes, and those of them that take a parameter.
        let (channel_modes, with_parameter) = if self.settings.guests.is_some() {
            ("CIbeiklmnostv", "Ibeklov")
        } else {
            ("imnot", "o")
        };
        let myinfo = [&server_name, version, "iow", channel_modes, with_parameter];
        self.numeric_params(RPL_MYINFO, &myinfo);
        for line in isupport(&self.settings) {
            let mut params: Vec<&str> = line.iter().map(String::as_str).collect();
            params.push("are supported by this server");
            self.numeric_params(RPL_ISUPPORT, &params);
        }
        commands::lusers(self).await;
        commands::motd(self);
    }

    /// For a connection without an account: what NickServ says to do.
    async fn ask_to_identify(&mut self) {
        let nick = self.nick.clone();
        match self.chat.user_exists(&nick).await {
            Ok(true) => {
                self.identify_by = Some(Instant::now() + self.settings.identify_within);
                self.nickserv(&format!(
                    "{nick} is a registered account. Log in with: /msg NickServ IDENTIFY <password> \
                     (within {} s, or you will be renamed)",
                    self.settings.identify_within.as_secs()
                ));
            }
            Ok(false) => self.nickserv(&format!(
                "You are not logged in. Create the account {nick} with: /msg NickServ REGISTER <password>, \
                 or log in to yours with: /msg NickServ IDENTIFY <account> <password>"
            )),
            Err(e) => self.failed("NICK", &e),
        }
    }

    /// Checks an account's password under the same limits as the line protocol's AUTH.
    pub async fn check_password(&mut self, account: &str, password: &str) -> Result<Username, ChatError> {
        let (chat, peer) = (self.chat.clone(), self.peer.ip());
        chat.authenticate(account, password, peer, Some(&mut self.auth))
            .await
    }

    /// Logs the connection in to `account` (SASL, PASS or NickServ): before registration it
    /// waits for the welcome; after it, the nick becomes the account's and the account's
    /// rooms are joined.
    pub async fn logged_in(&mut self, account: Username) {
        crate::activity::logged_in(account.as_str(), self.peer.ip());
        if !self.registered {
            self.pending = Some(account);
            return;
        }
        self.identify_by = None;
        // A guest that logs in leaves its channels as a guest; it is shown the account's.
        if self.is_guest() {
            // Its live session changes: it leaves its local channels too.
            super::local_commands::part_all(self, "logging in");
            let channels: Vec<Arc<str>> = self.channels.values().cloned().collect();
            self.end_guest();
            let mask = self.mask();
            for room in channels {
                self.relay("", &mask, "PART", &[&room], Some("logging in"));
            }
            self.channels.clear();
        }
        if self.nick != account.as_str() {
            let mask = self.mask();
            self.relay("", &mask, "NICK", &[], Some(account.as_str()));
            self.set_nick(account.as_str());
        }
        self.go_online(account).await;
    }

    /// Says the login (`900`), follows the account's inbox and rooms, and tells the client which
    /// channels it is in.
    async fn go_online(&mut self, account: Username) {
        // 900, unless SASL said it already.
        if !std::mem::take(&mut self.login_announced) {
            let mask = self.mask();
            self.numeric(
                RPL_LOGGEDIN,
                &[&mask, account.as_str()],
                &format!("You are now logged in as {account}"),
            );
        }
        self.session = None;
        self.channels.clear();
        let kick = CancellationToken::new();
        let feed = match self.chat.go_online(&account, kick.clone(), None).await {
            Ok(feed) => feed,
            Err(e) => {
                self.failed("LOGIN", &e);
                return;
            }
        };
        self.chat.show_live(&account, &feed);
        self.session = Some(Box::new(LoggedIn {
            user: account.clone(),
            feed,
            kick,
        }));
        self.feed_changed();
        match self.chat.followed(&account).await {
            Ok(rooms) => {
                for room in rooms {
                    commands::show_joined(self, &room).await;
                }
            }
            Err(e) => self.failed("JOIN", &e),
        }
    }

    /// Writes live messages: `first` and whatever else is queued, up to a batch.
    async fn write_pushes(&mut self, first: &Message) {
        let mut next = Some(render::push(self, first));
        let mut batch = 1;
        while let Some(followup) = next.take() {
            if let render::Followup::Joined(room) = followup {
                commands::show_joined(self, &room).await;
            }
            if batch >= PUSH_BATCH || self.socket.pending() >= FLUSH_AT {
                break;
            }
            let Some(message) = self.feed().and_then(Subscription::try_recv) else {
                break;
            };
            next = Some(render::push(self, &message));
            batch += 1;
        }
    }

    /// When the next timer is due: the registration deadline, the identify deadline, or
    /// the next PING check.
    fn next_timer(&self) -> Instant {
        let mut at = if self.registered {
            self.last_heard + self.settings.ping_every
        } else {
            self.connected + self.settings.registration_timeout
        };
        if self.registered && self.pinged {
            at = self.last_heard + self.settings.ping_every * 2;
        }
        if let Some(by) = self.identify_by {
            at = at.min(by);
        }
        at
    }

    async fn on_timer(&mut self) -> Option<End> {
        let now = Instant::now();
        if !self.registered {
            return (now >= self.connected + self.settings.registration_timeout)
                .then_some(End::RegistrationTimeout);
        }
        if self.identify_by.is_some_and(|by| now >= by) {
            self.identify_by = None;
            if self.account().is_none() {
                self.rename_to_guest().await;
            }
        }
        if self.is_guest() && !self.pinged && now >= self.last_heard + self.settings.ping_every {
            // Once a ping interval: a nick that became an account's is given up.
            self.guest_still_free().await;
        }
        if self.pinged && now >= self.last_heard + self.settings.ping_every * 2 {
            return Some(End::PingTimeout);
        }
        if !self.pinged && now >= self.last_heard + self.settings.ping_every {
            self.pinged = true;
            let server = self.settings.server_name.clone();
            // Written by the main loop, which flushes whatever is gathered.
            self.raw("PING", &[], Some(&server));
        }
        None
    }

    /// Frees an account's nick that was used without logging in; with `--irc-guests` the
    /// connection goes on as a guest.
    async fn rename_to_guest(&mut self) {
        let guest = self.free_guest_nick().await;
        self.nickserv(&format!(
            "You did not log in to {} in time; you are now {guest}. /msg NickServ IDENTIFY {} <password> still logs you in",
            self.nick, self.nick
        ));
        let mask = self.mask();
        self.relay("", &mask, "NICK", &[], Some(&guest));
        self.set_nick(&guest);
        if self.settings.guests.is_some() && self.become_guest(&guest) {
            self.welcome_guest();
        }
    }

    /// A guest whose nick became an account's (registered at another door) is renamed: a
    /// guest never goes by an account's name.
    pub async fn guest_still_free(&mut self) -> bool {
        let nick = self.nick.clone();
        if !self.is_reserved(&nick).await {
            return true;
        }
        let new = self.free_guest_nick().await;
        let Some(feed) = self.guest.as_ref().map(|g| g.feed.id()) else {
            return false;
        };
        if let Some(guests) = &self.settings.guests {
            guests.claim(&new, feed);
        }
        self.nickserv(&format!(
            "{nick} is now a registered account, so you are {new}. /msg NickServ IDENTIFY {nick} <password> if it is yours"
        ));
        self.change_guest_nick(&new);
        false
    }

    /// Moves this guest to `new` (already claimed): the client and its channels are told.
    pub fn change_guest_nick(&mut self, new: &str) {
        let old = self.nick.clone();
        let mask = self.mask();
        self.relay("", &mask, "NICK", &[], Some(new));
        self.set_nick(new);
        let (Some(guest), Some(guests)) = (&self.guest, &self.settings.guests) else {
            return;
        };
        guests.renamed(&old, new, guest.feed.id());
        self.settings.conversations.forget(&old);
        super::local_commands::renamed(self, &old, new);
        let local = &self.settings.local;
        let rooms = self
            .channels
            .values()
            .filter(|r| !local.is_member(r, guest.feed.id()));
        for room in rooms {
            self.chat.guest_renamed(&guest.feed, &old, new, room);
        }
    }

    /// A `Guest<n>` nick that is no account's and no other guest's here.
    async fn free_guest_nick(&self) -> String {
        let Some(guests) = &self.settings.guests else {
            let port = u64::from(self.peer.port());
            let nanos = self.connected.elapsed().subsec_nanos();
            let seed = port.wrapping_mul(2_654_435_761) ^ u64::from(nanos);
            return format!("Guest{}", 10_000 + seed % 90_000);
        };
        let mut nick = format!("Guest{}", guests.next_number());
        // A few tries: when the store cannot tell, the last one is taken anyway.
        for _ in 0..8 {
            if !guests.taken(&nick, 0) && !self.is_reserved(&nick).await {
                break;
            }
            nick = format!("Guest{}", guests.next_number());
        }
        nick
    }

    /// Says goodbye: the `ERROR` line the RFC closes a link with.
    async fn finish(&mut self, end: &End) {
        let text = match end {
            End::Eof => return,
            End::Quit(reason) => format!("Closing link: {} (Quit: {reason})", self.nick),
            End::Shutdown if self.conn.by_operator() => {
                tracing::info!(user = ?self.account().map(Username::as_str), peer = %self.peer, "disconnected by the operator");
                "Closing link: disconnected by the operator".to_string()
            }
            End::Shutdown => "Closing link: server shutting down".to_string(),
            End::PingTimeout => format!(
                "Closing link: Ping timeout: {} seconds",
                (self.settings.ping_every * 2).as_secs()
            ),
            End::RegistrationTimeout if self.cap_negotiating => {
                "Closing link: registration timed out (CAP LS or REQ was not ended with CAP END)".to_string()
            }
            End::RegistrationTimeout => {
                "Closing link: registration timed out (send NICK and USER)".to_string()
            }
            End::SendQ => {
                tracing::info!(user = ?self.account().map(Username::as_str), peer = %self.peer, "disconnected: SendQ exceeded");
                "SendQ exceeded".to_string()
            }
            End::LoggedOut => "Closing link: logged out everywhere".to_string(),
            End::BadPassword => "Closing link: bad password".to_string(),
            End::Killed(why) => format!("Closing link: {} ({why})", self.nick),
        };
        let mut line = bytes::BytesMut::new();
        wire::put(&mut line, "", "", "ERROR", &[], Some(&text));
        if *end == End::SendQ {
            // What could not be written is dropped, but for the rest of a line already
            // begun; the client gets as long as any write takes to read why it is gone.
            self.socket.keep_first_line();
            self.socket.close_within(&line, self.settings.write_stall).await;
        } else {
            self.socket.close_with(&line).await;
        }
    }
}

/// The ISUPPORT tokens (<https://modern.ircdocs.horse/#rplisupport-parameters>), at most 13
/// to a line.
fn isupport(settings: &IrcSettings) -> Vec<Vec<String>> {
    let mut tokens = vec![
        "AWAYLEN=200".to_string(),
        "CASEMAPPING=ascii".to_string(),
        format!("CHANLIMIT=#:{}", settings.max_rooms),
        // Local channels (guests make them) hold bans, keys and limits; rooms do not.
        if settings.guests.is_some() {
            "CHANMODES=beI,k,l,Cimnst".to_string()
        } else {
            "CHANMODES=,,,imnt".to_string()
        },
        format!("CHANNELLEN={}", crate::chat::rooms::MAX_ROOM_NAME + 1),
        "CHANTYPES=#".to_string(),
        format!("CHATHISTORY={}", super::history::MAX),
        "ELIST=MNU".to_string(),
        format!("KICKLEN={}", crate::chat::rooms::MAX_REASON),
        "MODES=4".to_string(),
        "MSGREFTYPES=msgid,timestamp".to_string(),
        format!("NETWORK={NETWORK}"),
        "NICKLEN=32".to_string(),
        "PREFIX=(qov)~@+".to_string(),
        "TARGMAX=JOIN:,KICK:4,NAMES:1,NOTICE:4,PART:,PRIVMSG:4,WHOIS:1".to_string(),
        format!("TOPICLEN={}", crate::chat::rooms::MAX_TOPIC),
        "USERLEN=32".to_string(),
        "UTF8ONLY".to_string(),
        "WHOX".to_string(),
    ];
    if settings.guests.is_some() {
        tokens.push("EXCEPTS=e".to_string());
        tokens.push("INVEX=I".to_string());
        tokens.push("STATUSMSG=@+".to_string());
        tokens.push(format!("MAXLIST=beI:{}", super::local::MAX_BANS));
        tokens.sort();
    }
    tokens.chunks(13).map(<[String]>::to_vec).collect()
}

/// Compares two secrets in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
