//! The testbed's TLS mode (`--tls`): a throwaway CA and a certificate for `127.0.0.1` and
//! `localhost` made when a testbed starts, the services' acceptor, and clients that trust
//! that CA alone.
//!
//! Both ends go through the system's OpenSSL, dynamically linked (native-tls on Linux), as
//! most services on a Linux host do: that is the library whose plaintext the tracer reads.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_native_tls::{TlsAcceptor, TlsStream};

/// How long a client gets to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections whose handshake is done and that axum has not taken yet.
const READY_BACKLOG: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate the testbed's certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "{}: {source} (the driver writes it: start the services with `testbed serve --tls` \
         or `testbed run --tls`)",
        path.display()
    )]
    Io { path: PathBuf, source: io::Error },
    #[error("OpenSSL refused the testbed's {what}: {source}")]
    OpenSsl {
        what: &'static str,
        source: native_tls::Error,
    },
    #[error("cannot build an HTTPS client: {0}")]
    Client(#[from] reqwest::Error),
}

/// A directory holding the CA certificate, and the services' certificate and key.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    const CA: &str = "ca.pem";
    const CERT: &str = "server.pem";
    const KEY: &str = "server.key";

    /// Where a testbed on `base_port` keeps them: a driver run with `--use-running`, and
    /// any other client (`curl --cacert`), finds the CA there.
    pub fn dir_for(base_port: u16) -> PathBuf {
        std::env::temp_dir().join(format!("order-testbed-{base_port}-tls"))
    }

    /// The certificates in `dir`, as a testbed made them (read when used).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Pki { dir: dir.into() }
    }

    /// Makes a new CA and a certificate it signs for `127.0.0.1` and `localhost`, in `dir`
    /// (created, readable by this user only), replacing what was there.
    pub fn generate(dir: impl Into<PathBuf>) -> Result<Self, TlsError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let pki = Pki { dir: dir.into() };
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.distinguished_name
            .push(DnType::CommonName, "Order Tracer testbed CA (throwaway)");
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate()?;
        let mut server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
        server
            .distinguished_name
            .push(DnType::CommonName, "order testbed services");
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.use_authority_key_identifier_extension = true;
        let cert_pem = server.signed_by(&key, &issuer)?.pem();

        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Io { path, source }
        };
        let _ = std::fs::remove_dir_all(&pki.dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&pki.dir)
            .map_err(io(&pki.dir))?;
        for (name, text) in [
            (Self::CA, ca_pem),
            (Self::CERT, cert_pem),
            (Self::KEY, key.serialize_pem()),
        ] {
            let path = pki.dir.join(name);
            std::fs::write(&path, text).map_err(io(&path))?;
        }
        Ok(pki)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate (PEM), for clients to trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.join(Self::CA)
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, TlsError> {
        let path = self.dir.join(name);
        std::fs::read(&path).map_err(|source| TlsError::Io { path, source })
    }

    /// The services' side: OpenSSL with the testbed's certificate.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let identity =
            native_tls::Identity::from_pkcs8(&self.read(Self::CERT)?, &self.read(Self::KEY)?)
                .map_err(|source| TlsError::OpenSsl {
                    what: "certificate or key",
                    source,
                })?;
        let acceptor =
            native_tls::TlsAcceptor::new(identity).map_err(|source| TlsError::OpenSsl {
                what: "acceptor settings",
                source,
            })?;
        Ok(TlsAcceptor::from(acceptor))
    }

    /// The CA as reqwest takes it.
    pub fn ca_certificate(&self) -> Result<reqwest::Certificate, TlsError> {
        Ok(reqwest::Certificate::from_pem(&self.read(Self::CA)?)?)
    }

    /// Removes the directory (the driver does, when its services stop).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Accepts TCP connections and hands axum those whose TLS handshake succeeded. Handshakes
/// run side by side, so a slow or silent client holds up nobody.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (done, ready) = mpsc::channel(READY_BACKLOG);
        tokio::spawn(accept(tcp, acceptor, done));
        Ok(TlsListener { local, ready })
    }
}

async fn accept(
    mut tcp: TcpListener,
    acceptor: TlsAcceptor,
    done: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    while !done.is_closed() {
        // axum's accept retries (and logs) what is worth retrying.
        let (stream, peer) = axum::serve::Listener::accept(&mut tcp).await;
        let _ = stream.set_nodelay(true);
        let (acceptor, done) = (acceptor.clone(), done.clone());
        tokio::spawn(async move {
            // A failed handshake is the client's to report (it names the certificate
            // problem); port probes that connect and close end here too, unlogged.
            if let Ok(Ok(tls)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            {
                let _ = done.send((tls, peer)).await;
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop never ends while this listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_load_into_openssl() {
        let dir = std::env::temp_dir().join(format!("testbed-pki-{}", std::process::id()));
        let pki = Pki::generate(&dir).unwrap();
        pki.acceptor().unwrap();
        pki.ca_certificate().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pki.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key's directory is private");
        pki.remove();
        assert!(!dir.exists());
    }

    #[test]
    fn a_missing_directory_says_who_makes_it() {
        let err = Pki::at("/nonexistent/testbed-tls").acceptor().unwrap_err();
        assert!(err.to_string().contains("testbed serve --tls"), "{err}");
    }
}
