//! What the person running chatd sees: one process per SQLite file, a database deleted under
//! a running server, start-up errors that say what to do, and the log.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{run_to_exit, serve_command, Process, CHATD};
use common::{Backend, Client, PG_ENV};

const START_UP: Duration = Duration::from_secs(15);

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// `chatd serve` with `args` (no --bind), expected to fail at start-up: its stderr.
fn failing_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(CHATD);
    command
        .args(["serve", "--port", "0", "--http-port", "0"])
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("CHATD_BIND")
        .env_remove("CHATD_INTERFACE");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = run_to_exit(&mut command, START_UP);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "chatd should have refused to start: {stderr}"
    );
    stderr
}

/// Asserts that `needle` is said exactly once in `text`.
fn said_once(text: &str, needle: &str) {
    assert_eq!(text.matches(needle).count(), 1, "{needle:?} once in: {text}");
}

#[tokio::test]
async fn a_second_server_on_the_same_sqlite_file_is_refused_naming_the_file_and_pid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chatd.db");
    let url = sqlite_url(&path);
    let first = Process::start(&url);
    let mut alice = Client::connect(first.addr).await;
    alice.ok("REGISTER alice pw").await;
    alice.ok("AUTH alice pw").await;

    let out = run_to_exit(&mut serve_command(&url), START_UP);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&path.display().to_string()), "names the file: {err}");
    assert!(
        err.contains(&format!("process {}", first.child.id())),
        "names the pid holding it: {err}"
    );

    // The first one never noticed.
    assert_eq!(alice.cmd("PING").await.last, "OK PONG");
    let id = alice.ok("SEND alice still here").await;
    assert!(id.parse::<i64>().is_ok(), "{id}");
}

#[tokio::test]
async fn a_database_deleted_while_serving_fails_writes_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chatd.db");
    let log = dir.path().join("chatd.log");
    let mut command = serve_command(&sqlite_url(&path));
    command.stderr(std::fs::File::create(&log).unwrap());
    let p = Process::start_command(command);
    let mut alice = Client::connect(p.addr).await;
    alice.ok("REGISTER alice pw").await;
    alice.ok("AUTH alice pw").await;
    alice.ok("SEND alice before").await;

    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_os_string();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
    let reply = alice.cmd("SEND alice into the void").await.last;
    assert!(reply.starts_with("ERR INTERNAL"), "{reply}");
    assert!(reply.contains("nothing was stored"), "{reply}");
    let mut bob = Client::connect(p.addr).await;
    assert_eq!(bob.err("REGISTER bob pw").await, "INTERNAL");

    // The operator is told which file, once, however many writes fail.
    alice.err("SEND alice again").await;
    let text = std::fs::read_to_string(&log).unwrap();
    said_once(&text, &format!("the database {} was deleted", path.display()));
}

#[tokio::test]
async fn a_database_replaced_while_serving_fails_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chatd.db");
    let p = Process::start(&sqlite_url(&path));
    let mut alice = Client::connect(p.addr).await;
    alice.ok("REGISTER alice pw").await;
    alice.ok("AUTH alice pw").await;
    // Another file moved into its place, as a careless restore would.
    let other = dir.path().join("other.db");
    std::fs::write(&other, b"").unwrap();
    std::fs::rename(&other, &path).unwrap();
    assert_eq!(alice.err("SEND alice hi").await, "INTERNAL");
}

#[test]
fn a_missing_directory_is_named_with_the_mkdir_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no").join("such");
    let url = sqlite_url(&missing.join("chatd.db"));
    let err = failing_start(&["--bind", "127.0.0.1", "--db", &url], &[]);
    said_once(&err, &format!("mkdir -p {}", missing.display()));
    said_once(&err, "does not exist");
}

#[test]
fn an_unwritable_directory_is_named_with_the_cause() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("readonly");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let db = locked.join("chatd.db");
    let url = sqlite_url(&db);
    // Root may write anywhere: run as nobody then, from a copy of the binary that nobody can
    // reach whatever the permissions of the checkout.
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    let binary = if as_root {
        let copy = dir.path().join("chatd");
        std::fs::copy(CHATD, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    } else {
        CHATD.into()
    };
    let mut command = Command::new(binary);
    command
        .args(["serve", "--bind", "127.0.0.1", "--port", "0", "--http-port", "0"])
        .args(["--db", &url])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn");
    if as_root {
        use std::os::unix::process::CommandExt;
        command.uid(65534).gid(65534);
    }
    let out = run_to_exit(&mut command, START_UP);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    said_once(&err, "permission denied");
    assert!(
        err.contains(&db.display().to_string()),
        "names the database: {err}"
    );
    assert!(
        err.contains(&format!("may not write in {}", locked.display())),
        "says which directory: {err}"
    );
}

#[test]
fn a_tilde_in_the_path_is_explained() {
    let err = failing_start(
        &["--bind", "127.0.0.1", "--db", "sqlite://~/chat/chatd.db"],
        &[("HOME", "/home/ada")],
    );
    said_once(&err, "not expanded");
    assert!(err.contains("sqlite:///home/ada/chat/chatd.db"), "{err}");
}

#[test]
fn near_misses_of_the_memory_url_are_refused_with_the_spelling() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["sqlite::memory", "sqlite:memory:", "sqlite://:memory:"] {
        let mut command = serve_command(url);
        command.current_dir(dir.path());
        let out = run_to_exit(&mut command, START_UP);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: {err}");
        said_once(&err, "write sqlite::memory:");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "no file was created: {left:?}");
}

#[test]
fn postgres_on_a_closed_port_says_it_refused() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("postgres://chatd@127.0.0.1:{port}/chatd");
    let err = failing_start(&["--bind", "127.0.0.1", "--db", &url], &[]);
    said_once(
        &err,
        &format!("PostgreSQL at 127.0.0.1 port {port} refused the connection"),
    );
    assert!(!err.contains("pool timed out"), "{err}");
}

/// A connection to the test PostgreSQL server as its administrator.
async fn pg_admin() -> Option<(String, sqlx::PgConnection)> {
    use sqlx::Connection;
    Backend::postgres("missing PostgreSQL database")?;
    let url = std::env::var(PG_ENV).unwrap();
    let conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect to the test PostgreSQL");
    Some((url, conn))
}

fn unique(prefix: &str) -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    format!("{prefix}_{}_{}", std::process::id(), micros % 100_000_000)
}

#[tokio::test]
async fn a_missing_postgres_database_is_created_when_the_user_may() {
    let Some((admin, mut conn)) = pg_admin().await else {
        return;
    };
    let name = unique("chatd_created");
    let url = common::with_database(&admin, &name);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("chatd.log");
    let mut command = serve_command(&url);
    command
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap());
    let p = Process::start_command(command);
    let mut alice = Client::connect(p.addr).await;
    alice.ok("REGISTER alice pw").await;
    drop(alice);
    drop(p);
    let text = std::fs::read_to_string(&log).unwrap();
    said_once(&text, &format!("created the PostgreSQL database \"{name}\""));
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_missing_postgres_database_the_user_may_not_create_is_reported_with_createdb() {
    let Some((admin, mut conn)) = pg_admin().await else {
        return;
    };
    let role = unique("chatd_nocreate");
    sqlx::query(&format!("CREATE ROLE {role} LOGIN NOCREATEDB"))
        .execute(&mut conn)
        .await
        .unwrap();
    let name = unique("chatd_missing");
    let url = with_user(&common::with_database(&admin, &name), &role);
    let err = tokio::task::spawn_blocking(move || failing_start(&["--bind", "127.0.0.1", "--db", &url], &[]))
        .await
        .unwrap();
    sqlx::query(&format!("DROP ROLE {role}"))
        .execute(&mut conn)
        .await
        .unwrap();
    said_once(&err, &format!("the database \"{name}\" does not exist"));
    assert!(
        err.contains(&format!("user \"{role}\" may not create databases")),
        "{err}"
    );
    assert!(
        err.contains(&format!("-O {role} {name}`")),
        "gives the createdb to run: {err}"
    );
}

/// `url` with its user replaced by `user` (and no password).
fn with_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}@{host}")
}

#[test]
fn a_bind_from_the_environment_is_named_as_such() {
    let err = failing_start(
        &["--interface", "lo", "--db", "sqlite::memory:"],
        &[("CHATD_BIND", "0.0.0.0")],
    );
    said_once(&err, "CHATD_BIND=0.0.0.0 (from the environment)");
    assert!(!err.contains("cannot be used with"), "{err}");
}

#[tokio::test]
async fn the_interface_banner_says_only_that_address_answers() {
    for interface in ["lo", "127.0.0.1"] {
        let mut command = Command::new(CHATD);
        command
            .args([
                "serve",
                "--interface",
                interface,
                "--port",
                "0",
                "--http-port",
                "0",
            ])
            .args(["--db", "sqlite::memory:"])
            .env("RUST_LOG", "warn")
            .env_remove("CHATD_BIND")
            .stderr(Stdio::inherit());
        let p = Process::start_command(command);
        assert_eq!(p.addr.ip().to_string(), "127.0.0.1", "{:?}", p.banner);
        let banner = p.banner.join("\n");
        assert!(
            banner.contains(&format!("Listening only on 127.0.0.1 (--interface {interface})")),
            "{banner}"
        );
        assert!(
            banner.contains("loopback: only programs on this machine"),
            "{banner}"
        );
        assert_eq!(Client::connect(p.addr).await.cmd("PING").await.last, "OK PONG");
    }
}

#[tokio::test]
async fn a_relative_database_is_shown_by_its_absolute_path_and_its_creation_logged() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("chatd.log");
    let mut command = serve_command("sqlite://data.db");
    command
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap());
    let p = Process::start_command(command);
    let absolute = dir.path().join("data.db").display().to_string();
    let store = p.banner.last().unwrap();
    assert!(
        store.contains(&format!("Store: SQLite file {absolute};")),
        "{store}"
    );
    Client::connect(p.addr).await;
    let text = std::fs::read_to_string(&log).unwrap();
    said_once(&text, &format!("created a new database at {absolute}"));
}

/// Starts chatd logging at info into a file; returns it and the log's path.
fn logging_to_file(dir: &Path) -> (Process, std::path::PathBuf) {
    let log = dir.join("chatd.log");
    let mut command = serve_command(&sqlite_url(&dir.join("chatd.db")));
    command
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stderr(std::fs::File::create(&log).unwrap());
    (Process::start_command(command), log)
}

/// Waits until the log holds `needle`, or fails with the log.
async fn log_shows(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the log never said {needle:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_log_file_gets_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, log) = logging_to_file(dir.path());
    let text = log_shows(&log, "INFO").await;
    assert!(!text.contains('\u{1b}'), "no ANSI escapes in a file:\n{text:?}");
}

#[tokio::test]
async fn a_classmate_connecting_logging_in_and_leaving_is_logged_at_info() {
    let dir = tempfile::tempdir().unwrap();
    let (p, log) = logging_to_file(dir.path());
    let mut bob = Client::connect(p.addr).await;
    bob.ok("REGISTER bob pw").await;
    bob.ok("AUTH bob pw").await;
    let port = log_shows(&log, "127.0.0.1:").await;
    assert!(port.contains("connected (1 connected now)"), "{port}");
    log_shows(&log, "bob logged in from 127.0.0.1").await;
    bob.ok("QUIT").await;
    let text = log_shows(&log, ") left after").await;
    assert!(text.contains("bob (127.0.0.1:"), "{text}");
    assert!(
        !text.contains("registered"),
        "REGISTER is not an info line:\n{text}"
    );
}

#[tokio::test]
async fn a_crowd_arriving_at_once_is_summarised_past_the_burst_allowance() {
    let dir = tempfile::tempdir().unwrap();
    let (p, log) = logging_to_file(dir.path());
    let mut crowd = Vec::new();
    for _ in 0..600 {
        crowd.push(Client::connect(p.addr).await);
    }
    let summaries = |text: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.split("in the same second ").nth(1))
            .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let text = log_shows(&log, "more connected").await;
    let listed = text.lines().filter(|l| l.contains(" connected (")).count();
    assert!(
        listed < 400,
        "{listed} connect lines for 600 clients arriving at once:\n{text}"
    );
    let summarised = summaries(&text);
    // Give the last second's summary time to arrive.
    let text = log_shows(&log, "600 connected now").await;
    let listed = text.lines().filter(|l| l.contains(" connected (")).count() as u64;
    assert!(summaries(&text) >= summarised);
    assert_eq!(
        listed + summaries(&text),
        600,
        "every arrival is counted once:\n{text}"
    );
}

#[tokio::test]
async fn a_class_of_forty_is_listed_whole_and_a_wrong_password_is_logged_with_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let (p, log) = logging_to_file(dir.path());
    let mut class = Vec::new();
    for i in 0..40 {
        let mut student = Client::connect(p.addr).await;
        student.ok(&format!("REGISTER s{i} pw")).await;
        student.ok(&format!("AUTH s{i} pw")).await;
        class.push(student);
    }
    let text = log_shows(&log, "s39 logged in from 127.0.0.1").await;
    let logins = text.lines().filter(|l| l.contains(" logged in from ")).count();
    assert_eq!(logins, 40, "{text}");
    assert!(!text.contains("too many to list"), "{text}");
    let mut late = Client::connect(p.addr).await;
    late.err("AUTH s1 wrong-password").await;
    let text = log_shows(&log, "a login as s1 from 127.0.0.1 was refused").await;
    assert!(!text.contains("wrong-password"), "never the password:\n{text}");
}

#[tokio::test]
async fn with_a_log_file_sighup_reopens_it_for_logrotate_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("chatd.log");
    let mut command = serve_command(&sqlite_url(&dir.path().join("chatd.db")));
    command.env("RUST_LOG", "info").arg("--log-file").arg(&log);
    let p = Process::start_command(command);
    let mut bob = Client::connect(p.addr).await;
    bob.ok("REGISTER bob pw").await;
    bob.ok("AUTH bob pw").await;
    log_shows(&log, "bob logged in").await;
    // logrotate moves the file away, then signals.
    let rotated = dir.path().join("chatd.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    p.signal(libc::SIGHUP);
    let text = log_shows(&log, "reopened the log file").await;
    assert!(!text.contains("bob logged in"), "a new file:\n{text}");
    bob.ok("PING").await;
    let mut carol = Client::connect(p.addr).await;
    carol.ok("REGISTER carol pw").await;
    carol.ok("AUTH carol pw").await;
    log_shows(&log, "carol logged in").await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("bob logged in") && !old.contains("carol"), "{old}");
}

#[tokio::test]
async fn debug_logging_shows_http_requests_but_not_the_sql() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("chatd.log");
    let mut command = serve_command(&sqlite_url(&dir.path().join("chatd.db")));
    command
        .env("RUST_LOG", "debug")
        .stderr(std::fs::File::create(&log).unwrap());
    let p = Process::start_command(command);
    let http = p.http.expect("HTTP is on");
    let mut alice = Client::connect(p.addr).await;
    alice.ok("REGISTER alice pw").await;
    alice.ok("AUTH alice pw").await;
    alice.ok("SEND alice hello").await;
    let status = reqwest::get(format!("http://{http}/info?secret=x"))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let text = log_shows(&log, "GET /info 200").await;
    assert!(
        !text.contains("secret=x"),
        "the query string is not logged:\n{text}"
    );
    assert!(
        !text.contains("sqlx::query") && !text.contains("INSERT INTO"),
        "no SQL at debug unless asked:\n{text}"
    );
}

#[test]
fn every_serve_flag_is_in_the_readme_and_the_help_names_every_door() {
    let help = run_to_exit(
        Command::new(CHATD).args(["serve", "--help"]),
        Duration::from_secs(10),
    );
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("--")))
        .map(|w| w.trim_end_matches(','))
        .filter(|f| !matches!(*f, "--help" | "--version"))
        .collect();
    assert!(flags.len() > 30, "{flags:?}");
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let missing: Vec<&&str> = flags
        .iter()
        .filter(|f| !readme.contains(&format!("`{f}")))
        .collect();
    assert!(
        missing.is_empty(),
        "flags the README's options table lacks: {missing:?}"
    );
    let top = run_to_exit(Command::new(CHATD).arg("--help"), Duration::from_secs(10));
    let top = String::from_utf8_lossy(&top.stdout).into_owned();
    for door in ["line", "HTTP", "IRC", "echo"] {
        assert!(
            top.contains(door),
            "`chatd --help` does not name the {door} door:\n{top}"
        );
    }
}

#[test]
fn a_port_in_use_is_named_with_the_flag_that_changes_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let start = |line: &str, http: &str| {
        let mut command = Command::new(CHATD);
        command
            .args([
                "serve",
                "--bind",
                "127.0.0.1",
                "--port",
                line,
                "--http-port",
                http,
            ])
            .env("RUST_LOG", "warn");
        let out = run_to_exit(&mut command, START_UP);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let line = start(&port, "0");
    assert!(line.contains(&format!("port {port}")), "{line}");
    assert!(line.contains("Address already in use"), "{line}");
    assert!(line.contains("--port N (--port 0 picks a free one)"), "{line}");
    let http = start("0", &port);
    assert!(http.contains("cannot listen for HTTP"), "{http}");
    assert!(http.contains("--http-port N"), "{http}");
    // An IRC port given explicitly is the operator's choice: taken, it stops the start too.
    let mut command = Command::new(CHATD);
    command
        .args(["serve", "--bind", "127.0.0.1", "--port", "0", "--http-port", "0"])
        .args(["--irc-port", &port])
        .env("RUST_LOG", "warn");
    let out = run_to_exit(&mut command, START_UP);
    assert!(!out.status.success());
    let irc = String::from_utf8_lossy(&out.stderr);
    assert!(irc.contains("cannot listen for IRC"), "{irc}");
    assert!(irc.contains("--irc-port N"), "{irc}");
}
