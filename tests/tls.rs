//! `--tls`: every TLS door talking to real clients (`openssl s_client`, Python's `ssl`), a
//! certificate made once and reused, the banner naming every door, and what a bad or silent
//! TLS client costs: nothing lasting.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn tls_server(adjust: impl FnOnce(&mut chatd::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.load_test_hashing = true;
        c.tls = true;
        adjust(c);
    })
    .await
}

/// The certificate chatd made next to the test's database.
fn cert_of(server: &TestServer) -> PathBuf {
    let db = server.db_url.strip_prefix("sqlite://").unwrap();
    PathBuf::from(db).parent().unwrap().join("chatd-tls-cert.pem")
}

/// Runs a Python script with `args`; its standard output.
fn python(script: &str, args: &[String]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Python's ssl, verifying the certificate (its IP address among its names) with it as the CA.
const PY_DOORS: &str = r#"
import http.client, socket, ssl, sys
cafile, line, https, irc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ctx = ssl.create_default_context(cafile=cafile)

def lines_until(s, want):
    got = b""
    while want not in got:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    return got.decode()

with ctx.wrap_socket(socket.create_connection(("127.0.0.1", line)), server_hostname="127.0.0.1") as s:
    print("line:", s.version(), lines_until(s, b"ready").strip())
    s.sendall(b"REGISTER pyssl pw\r\nAUTH pyssl pw\r\n")
    print("line:", lines_until(s, b"logged in").strip().splitlines()[-1])

conn = http.client.HTTPSConnection("127.0.0.1", https, context=ctx)
conn.request("GET", "/info")
reply = conn.getresponse()
print("https:", reply.status, b'"status":"SUCCESS"' in reply.read())

with ctx.wrap_socket(socket.create_connection(("127.0.0.1", irc)), server_hostname="127.0.0.1") as s:
    s.sendall(b"NICK pyirc\r\nUSER pyirc 0 * :Py\r\n")
    print("irc:", [l for l in lines_until(s, b" 001 ").splitlines() if " 001 " in l][0])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tls_door_talks_to_python_ssl() {
    let server = tls_server(|_| {}).await;
    let (line, https, irc) = server.tls;
    let port = |a: Option<SocketAddr>| a.expect("the TLS door is open").port().to_string();
    let said = tokio::task::spawn_blocking({
        let args = vec![
            cert_of(&server).display().to_string(),
            port(line),
            port(https),
            port(irc),
        ];
        move || python(PY_DOORS, &args)
    })
    .await
    .unwrap();
    assert!(said.contains("line: TLSv1.3 HELLO chatd/"), "{said}");
    assert!(said.contains("line: OK logged in as pyssl"), "{said}");
    assert!(said.contains("https: 200 True"), "{said}");
    assert!(said.contains("irc: :") && said.contains(" 001 pyirc "), "{said}");
    // The account made over TLS is the same community's.
    server.client().await.ok("AUTH pyssl pw").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_logs_in_and_sends() {
    let server = tls_server(|_| {}).await;
    let line = server.tls.0.unwrap();
    let cert = cert_of(&server);
    let said = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-verify_return_error",
                "-verify_ip",
                "127.0.0.1",
            ])
            .arg("-CAfile")
            .arg(&cert)
            .arg("-connect")
            .arg(line.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl runs");
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"REGISTER ossl pw\r\nAUTH ossl pw\r\nSEND ossl over TLS\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(800));
        stdin.write_all(b"QUIT\r\n").unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
    .await
    .unwrap();
    assert!(
        said.contains("verify return:1"),
        "openssl verified the certificate: {said}"
    );
    assert!(said.contains("OK logged in as ossl"), "{said}");
    assert!(
        said.contains(" ossl ") && said.contains("over TLS"),
        "its own message came back: {said}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_certificate_is_made_once_and_the_banner_names_every_door() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = chatd::Config::for_tests(format!("sqlite://{}", dir.path().join("c1.db").display()));
    config.tls = true;
    config.echo_port = Some(0);
    let first = chatd::Server::bind(config.clone()).await.unwrap();
    let banner = first.banner();
    assert!(banner.contains("(made now, self-signed)"), "{banner}");
    let (line, https, irc) = first.tls_addrs();
    let cert = dir.path().join("chatd-tls-cert.pem");
    for expected in [
        format!("telnet 127.0.0.1 {}", first.line_addr().port()),
        format!("http://127.0.0.1:{}/", first.http_addr().unwrap().port()),
        format!("/connect 127.0.0.1 {}", first.irc_addr().unwrap().port()),
        format!("Echo (RFC 862) on port {}", first.echo_addr().unwrap().port()),
        format!("openssl s_client -connect 127.0.0.1:{}", line.unwrap().port()),
        format!("ncat --ssl 127.0.0.1 {}", line.unwrap().port()),
        format!(
            "curl --cacert {} https://127.0.0.1:{}/info",
            cert.display(),
            https.unwrap().port()
        ),
        format!("/connect -tls 127.0.0.1 {}", irc.unwrap().port()),
        "The teacher's view: http://127.0.0.1:".to_string(),
    ] {
        assert!(
            banner.contains(&expected),
            "the banner lacks {expected:?}:\n{banner}"
        );
    }
    let fingerprint = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("SHA-256 fingerprint "))
        .unwrap()
        .to_string();
    // openssl computes the same fingerprint from the file.
    let openssl = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let openssl = String::from_utf8_lossy(&openssl.stdout);
    assert!(openssl.contains(&fingerprint), "{openssl} vs {fingerprint}");
    drop(first);
    let pem = std::fs::read(&cert).unwrap();

    // A second start beside the first database (the first still holds its file).
    config.db = format!("sqlite://{}", dir.path().join("c2.db").display());
    let second = chatd::Server::bind(config).await.unwrap();
    let banner = second.banner();
    assert!(
        banner.contains("(self-signed, made by an earlier start)"),
        "{banner}"
    );
    assert!(banner.contains(&fingerprint), "the same certificate: {banner}");
    assert_eq!(std::fs::read(&cert).unwrap(), pem, "never overwritten");
}

#[tokio::test]
async fn a_bad_handshake_and_a_silent_client_are_closed_and_cost_nothing() {
    let server = tls_server(|c| c.tls_handshake_timeout = Duration::from_millis(500)).await;
    let line = server.tls.0.unwrap();
    // Plain text to a TLS door: not a handshake, closed at once.
    let mut plain = TcpStream::connect(line).await.unwrap();
    plain.write_all(b"AUTH alice pw\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), read_to_end(&mut plain, &mut buf))
        .await
        .expect("closed at once");
    assert!(
        !String::from_utf8_lossy(&buf[..n]).contains("HELLO"),
        "no plain greeting"
    );
    // A client that says nothing: closed once the handshake time is over.
    let started = Instant::now();
    let mut silent = TcpStream::connect(line).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), read_to_end(&mut silent, &mut buf))
        .await
        .expect("the silent client is closed");
    assert_eq!(n, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    // Their places were given back: the admin view lists none of them.
    let open: serde_json::Value = reqwest::get(server.admin_url("/admin/connections"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(open["total"], 0, "{open}");
    let metrics = reqwest::get(server.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failed = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"chatd_tls_handshakes_failed_total{door="line-tls"} "#))
        .expect("counted");
    assert!(failed.parse::<f64>().unwrap() >= 2.0, "{failed}");
    // And a real client still gets in.
    let mut client = tls_client(line, &cert_of(&server)).await;
    let n = client.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HELLO"));
    server.stop().await;
}

#[tokio::test]
async fn tls_connections_take_places_from_the_same_budget() {
    let server = tls_server(|c| c.max_connections_per_ip = Some(2)).await;
    let _a = server.client().await;
    let cert = cert_of(&server);
    let mut b = tls_client(server.tls.0.unwrap(), &cert).await;
    let mut buf = [0u8; 256];
    assert!(
        b.read(&mut buf).await.unwrap() > 0,
        "the second connection is served"
    );
    // The third, plain or TLS, has no place.
    let refused = TcpStream::connect(server.tls.0.unwrap()).await.unwrap();
    let connector = connector(&cert);
    let name =
        rustls::pki_types::ServerName::IpAddress("127.0.0.1".parse::<std::net::IpAddr>().unwrap().into());
    let handshake = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, refused)).await;
    assert!(matches!(handshake, Ok(Err(_))), "refused before any handshake");
    let mut plain = common::Client::connect_raw(server.addr).await;
    let busy = plain.line().await;
    assert!(busy.starts_with("ERR SERVER_BUSY"), "{busy}");
    drop(b);
    server.stop().await;
}

async fn read_to_end(stream: &mut TcpStream, buf: &mut [u8]) -> usize {
    let mut total = 0;
    loop {
        match stream.read(&mut buf[total..]).await {
            Ok(0) | Err(_) => return total,
            Ok(n) => total = (total + n).min(buf.len() - 1),
        }
    }
}

fn connector(cert: &std::path::Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_client(addr: SocketAddr, cert: &std::path::Path) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    connector(cert).connect(name, tcp).await.expect("the handshake")
}
