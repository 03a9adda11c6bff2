//! `--tls`: the certificate and the TLS acceptor the TLS doors share (rustls, with ring as
//! its one crypto backend).
//!
//! - **The certificate** is `--tls-cert`/`--tls-key` (PEM), or one chatd made: on the first
//!   start with `--tls` and without them, a self-signed certificate is generated next to the
//!   database (`chatd-tls-cert.pem`, `chatd-tls-key.pem`; the working directory when the
//!   store is not a file), naming this machine's host name, `localhost` and every address
//!   chatd is bound to, since students connect by IP. It is never overwritten: later starts
//!   reuse it, so clients that trusted it once go on trusting it. Delete both files to make a
//!   new one (after the machine's addresses changed, say).
//! - **The banner** prints its SHA-256 fingerprint, as `openssl x509 -fingerprint -sha256`
//!   does, for a student to compare with what their client shows.
//! - **A handshake** has [`HANDSHAKE_TIMEOUT`], and holds its connection's place while it
//!   runs; a failed or silent one is closed and leaves nothing behind.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// A client that has not finished its handshake by then is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The names of a generated certificate and key, next to the database.
pub const CERT_FILE: &str = "chatd-tls-cert.pem";
pub const KEY_FILE: &str = "chatd-tls-key.pem";

/// The server's certificate and what the TLS doors accept with.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    /// The certificate's file.
    pub cert_path: PathBuf,
    /// SHA-256 of the certificate (DER), `AB:CD:...`.
    pub fingerprint: String,
    /// Whether chatd made it (self-signed), and whether on this start.
    pub generated: Option<Generated>,
    /// [`HANDSHAKE_TIMEOUT`], unless a test says otherwise.
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generated {
    Now,
    Earlier,
}

impl Tls {
    /// Loads `--tls-cert`/`--tls-key`, or the certificate chatd generated in `dir` (making it
    /// the first time, for `names`).
    pub fn load(given: Option<(&Path, &Path)>, dir: &Path, names: &[String]) -> anyhow::Result<Tls> {
        let (cert_path, key_path, generated) = match given {
            Some((cert, key)) => (cert.to_path_buf(), key.to_path_buf(), None),
            None => {
                let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
                let made = generate_once(&cert, &key, names)?;
                (
                    cert,
                    key,
                    Some(if made { Generated::Now } else { Generated::Earlier }),
                )
            }
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
            .with_context(|| format!("cannot read the TLS certificate {}", cert_path.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("{} is not a PEM certificate", cert_path.display()))?;
        anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", cert_path.display());
        let key = PrivateKeyDer::from_pem_file(&key_path).with_context(|| {
            format!(
                "cannot read the TLS key {} (a PEM private key)",
                key_path.display()
            )
        })?;
        let fingerprint = fingerprint(&certs[0]);
        // ring, the one crypto backend: pure Rust and C, no cmake. It has no post-quantum key
        // exchange (rustls marks its provider deprecated for that); X25519 and the NIST curves
        // are offered, which every client here speaks.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .with_context(|| {
                format!(
                    "the TLS key {} does not go with the certificate {}",
                    key_path.display(),
                    cert_path.display()
                )
            })?;
        // HTTPS speaks HTTP/1.1; the line protocol and IRC offer no ALPN and ignore a client's.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert_path,
            fingerprint,
            generated,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        })
    }

    /// Completes the handshake of an accepted connection, within its timeout.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream)).await {
            Ok(done) => done,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no TLS handshake in time",
            )),
        }
    }
}

/// Writes a new self-signed certificate and key unless the certificate is there already;
/// true if it made them. The key is readable by its owner only.
fn generate_once(cert: &Path, key: &Path, names: &[String]) -> anyhow::Result<bool> {
    if cert.exists() {
        anyhow::ensure!(
            key.exists(),
            "{} is there but its key {} is not: restore it, or delete both to make a new certificate",
            cert.display(),
            key.display()
        );
        return Ok(false);
    }
    let mut params = rcgen::CertificateParams::new(names.to_vec()).context("the certificate's names")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("chatd on {}", crate::net::hostname()),
    );
    let key_pair = rcgen::KeyPair::generate().context("generating a TLS key")?;
    let made = params.self_signed(&key_pair).context("signing the certificate")?;
    write_new(key, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert, made.pem().as_bytes(), 0o644)?;
    tracing::info!(cert = %cert.display(), "generated a self-signed TLS certificate");
    Ok(true)
}

/// Creates `path` with `bytes`; never replaces a file that is there.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The names a generated certificate covers: the host name, localhost, and the addresses.
pub fn names(addrs: &[IpAddr]) -> Vec<String> {
    let mut names = vec![crate::net::hostname(), "localhost".to_string()];
    for ip in addrs {
        names.push(ip.to_string());
    }
    names.push("127.0.0.1".to_string());
    names.sort();
    names.dedup();
    names
}

/// `AB:CD:...`, as `openssl x509 -noout -fingerprint -sha256` prints it.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let names = names(&["192.168.1.20".parse().unwrap()]);
        let first = Tls::load(None, dir.path(), &names).unwrap();
        assert_eq!(first.generated, Some(Generated::Now));
        let pem = std::fs::read(dir.path().join(CERT_FILE)).unwrap();
        let again = Tls::load(None, dir.path(), &["other".into()]).unwrap();
        assert_eq!(again.generated, Some(Generated::Earlier));
        assert_eq!(again.fingerprint, first.fingerprint, "the same certificate");
        assert_eq!(
            std::fs::read(dir.path().join(CERT_FILE)).unwrap(),
            pem,
            "never overwritten"
        );
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key is its owner's alone");
    }

    #[test]
    fn a_missing_key_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        Tls::load(None, dir.path(), &["localhost".into()]).unwrap();
        std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        let error = format!("{:#}", Tls::load(None, dir.path(), &[]).err().unwrap());
        assert!(error.contains("delete both"), "{error}");
    }
}
