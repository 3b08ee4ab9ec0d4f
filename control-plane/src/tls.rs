//! The control plane's TLS port (xDS and the CA): a certificate from its own CA, renewed before
//! it expires and swapped in for new handshakes, and the accepted connections handed to tonic.
//!
//! Proxies verify the certificate against the mesh trust bundle and the name they dialled, so
//! it carries every name in `--tls-san` (DNS names and IP addresses) and the control plane's
//! SPIFFE id. Clients are not asked for a certificate: the CA authenticates callers by their
//! token, and the xDS resources are the same for every proxy.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::ca::{Ca, CaError, ServerCert};

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified(cert: &ServerCert) -> Result<CertifiedKey, CaError> {
    let chain = pem::parse_many(&cert.chain_pem)
        .map_err(|e| CaError::Sign(e.to_string()))?
        .into_iter()
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    let key = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            cert.key_der.clone(),
        )))
        .map_err(|e| CaError::Sign(e.to_string()))?;
    Ok(CertifiedKey::new(chain, key))
}

/// The certificate the TLS port presents.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ServingCert {
    /// Issues the first certificate; returns it and when it expires.
    pub fn issue(
        ca: &Ca,
        names: &[String],
        identity: &str,
    ) -> Result<(Arc<Self>, SystemTime), CaError> {
        let cert = ca.issue_server(names, identity)?;
        let this = ServingCert {
            current: ArcSwap::from_pointee(certified(&cert)?),
        };
        Ok((Arc::new(this), cert.expires))
    }

    /// Renews at 70 % of each certificate's lifetime, for as long as the process runs. A
    /// failure (it does not touch the network, so it is rare) is retried a minute later.
    pub async fn renew(
        self: Arc<Self>,
        ca: Arc<Ca>,
        names: Vec<String>,
        identity: String,
        mut expires: SystemTime,
    ) {
        loop {
            let left = expires
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(left.mul_f64(0.7).max(Duration::from_secs(1))).await;
            match ca
                .issue_server(&names, &identity)
                .and_then(|c| Ok((certified(&c)?, c.expires)))
            {
                Ok((key, e)) => {
                    self.current.store(Arc::new(key));
                    expires = e;
                    tracing::info!(expires = ?e, "control plane certificate renewed");
                }
                Err(e) => {
                    tracing::error!(error = %e, "control plane certificate renewal failed; retrying in 1m");
                    expires = SystemTime::now() + Duration::from_secs(60).div_f64(0.7);
                }
            }
        }
    }
}

/// TLS 1.2 and 1.3 (gRPC clients of every language connect here), ALPN h2, no client
/// certificate.
pub fn server_config(cert: Arc<ServingCert>) -> ServerConfig {
    server_config_with(cert, b"h2")
}

/// TLS 1.2 and 1.3 with the certificate `cert` resolves, offering one ALPN protocol.
pub fn server_config_with(cert: Arc<dyn ResolvesServerCert>, alpn: &[u8]) -> ServerConfig {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg
}

/// A certificate and key from files another party writes (cert-manager's `tls.crt` and
/// `tls.key`), reloaded when they change.
#[derive(Debug)]
pub struct FileCert {
    current: ArcSwap<CertifiedKey>,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    /// The files' modification times when they were first read.
    loaded: (Option<SystemTime>, Option<SystemTime>),
}

fn modified(p: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl FileCert {
    /// Loads `dir/tls.crt` and `dir/tls.key`; errors name the file.
    pub fn load(dir: &std::path::Path) -> Result<Arc<Self>, CaError> {
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        // Stamped before reading: a change made meanwhile is seen by `watch`.
        let stamps = (modified(&cert), modified(&key));
        let pair = Self::read(&cert, &key)?;
        Ok(Arc::new(FileCert {
            current: ArcSwap::from_pointee(pair),
            cert,
            key,
            loaded: stamps,
        }))
    }

    fn read(cert: &std::path::Path, key: &std::path::Path) -> Result<CertifiedKey, CaError> {
        use crate::ca::file_err;
        let chain: Vec<CertificateDer<'static>> =
            pem::parse_many(std::fs::read(cert).map_err(|e| file_err(cert.display(), e))?)
                .map_err(|e| file_err(cert.display(), e))?
                .into_iter()
                .filter(|p| p.tag() == "CERTIFICATE")
                .map(|p| CertificateDer::from(p.into_contents()))
                .collect();
        if chain.is_empty() {
            return Err(file_err(cert.display(), "no CERTIFICATE in it"));
        }
        let key_pem = pem::parse(std::fs::read(key).map_err(|e| file_err(key.display(), e))?)
            .map_err(|e| file_err(key.display(), e))?;
        let der = match key_pem.tag() {
            "PRIVATE KEY" => PrivateKeyDer::Pkcs8(key_pem.into_contents().into()),
            "EC PRIVATE KEY" => PrivateKeyDer::Sec1(key_pem.into_contents().into()),
            "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(key_pem.into_contents().into()),
            other => {
                return Err(file_err(
                    key.display(),
                    format!("a {other} where a private key was expected"),
                ));
            }
        };
        let signing = provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| file_err(key.display(), e))?;
        let pair = CertifiedKey::new(chain, signing);
        // Caught between the two files' writes, the key may not be the certificate's yet.
        pair.keys_match().map_err(|e| {
            file_err(
                key.display(),
                format!(
                    "does not belong to the certificate in {}: {e}",
                    cert.display()
                ),
            )
        })?;
        Ok(pair)
    }

    /// Reloads the files whenever they change (checked every `interval`); a bad new pair is
    /// logged and the one in use stays.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut last = self.loaded;
        loop {
            tokio::time::sleep(interval).await;
            self.reload_if_changed(&mut last);
        }
    }

    /// One check of `watch`: when the files' modification times differ from `last`, reads
    /// them again and, if they make a good pair, serves it.
    fn reload_if_changed(&self, last: &mut (Option<SystemTime>, Option<SystemTime>)) {
        let now = (modified(&self.cert), modified(&self.key));
        if now == *last {
            return;
        }
        *last = now;
        match Self::read(&self.cert, &self.key) {
            Ok(k) => {
                self.current.store(Arc::new(k));
                tracing::info!(cert = %self.cert.display(), "webhook certificate reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "webhook certificate not reloaded; the previous one stays")
            }
        }
    }
}

/// An accepted, handshaken connection, as tonic serves it.
pub struct TlsConn(TlsStream<TcpStream>);

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepts on `l` and hands over each connection once its handshake is done; handshakes run
/// concurrently, so a slow or silent client holds up no one else. A failed handshake is
/// counted and logged, never passed on.
pub fn incoming(
    l: TcpListener,
    cfg: Arc<ServerConfig>,
    failures: prometheus::IntCounter,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(cfg);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match l.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "TLS port: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, failures) = (acceptor.clone(), tx.clone(), failures.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(TlsConn(s))).await;
                    }
                    Ok(Err(e)) => {
                        failures.inc();
                        tracing::debug!(%peer, error = %e, "TLS port: handshake failed");
                    }
                    Err(_) => {
                        failures.inc();
                        tracing::debug!(%peer, "TLS port: handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (String, String, Vec<u8>) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (
            c.cert.pem(),
            c.signing_key.serialize_pem(),
            c.cert.der().to_vec(),
        )
    }

    /// Writes `text` to `path` with a modification time `secs` past the epoch, so that each
    /// write is a visible change whatever the filesystem's timestamp grain.
    fn write_at(path: &std::path::Path, text: &str, secs: u64) {
        std::fs::write(path, text).unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn webhook_files_are_reloaded_when_they_change_and_a_bad_pair_is_kept_out() {
        let dir = std::env::temp_dir().join(format!("weft-filecert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let (cert, k, der1) = self_signed("one.example");
        write_at(&crt, &cert, 1_000);
        write_at(&key, &k, 1_000);
        let fc = FileCert::load(&dir).unwrap();
        assert_eq!(fc.current.load().cert[0].as_ref(), der1.as_slice());
        let mut last = fc.loaded;
        fc.reload_if_changed(&mut last);
        assert_eq!(fc.current.load().cert[0].as_ref(), der1.as_slice());

        // A renewal (cert-manager swaps both files), seen half-way: the new key with the old
        // certificate is no pair and stays out; once both are there, the new pair is served.
        let (cert, k, der2) = self_signed("two.example");
        write_at(&key, &k, 2_000);
        fc.reload_if_changed(&mut last);
        assert_eq!(fc.current.load().cert[0].as_ref(), der1.as_slice());
        write_at(&crt, &cert, 2_000);
        fc.reload_if_changed(&mut last);
        assert_eq!(fc.current.load().cert[0].as_ref(), der2.as_slice());

        // A broken certificate file: the pair in use stays.
        write_at(&crt, "not PEM", 3_000);
        fc.reload_if_changed(&mut last);
        assert_eq!(fc.current.load().cert[0].as_ref(), der2.as_slice());
        let err = FileCert::load(&dir).unwrap_err().to_string();
        assert!(err.contains("tls.crt"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
