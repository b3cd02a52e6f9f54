//! Accepting mutually authenticated connections for a tonic server.
//!
//! tonic's own TLS support does not expose the verified client certificate in
//! a form we can authorise on, so the coordinator terminates TLS here and
//! hands tonic already-authenticated streams whose [`PeerInfo`] becomes a
//! request extension.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;
use tonic::{Request, Status};

use crate::admission::{DropLog, Dropped, Limits, Pending};
use crate::identity::{identity_from_cert, Identity, Role};
use crate::reload::ServerTls;

/// A handshake that has not finished by then is dropped, so a silent or
/// slow client holds a socket for at most this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (e.g. out of file descriptors) to avoid a hot loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Who is on the other end of a connection, available to every handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The identity from the verified client certificate.
    pub identity: Identity,
    /// The TCP peer address (a proxy's or NAT's address for nodes behind one).
    pub remote_addr: SocketAddr,
    /// The verified client certificate (DER), whose key signs the peer's
    /// statements (a node's results).
    pub certificate: CertificateDer<'static>,
}

/// An authenticated TLS connection ready to be served.
#[derive(Debug)]
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl TlsConn {
    /// The authenticated peer.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The application protocol the client chose by ALPN, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.inner.get_ref().1.alpn_protocol()
    }

    /// The underlying TLS stream, e.g. to inspect the negotiated protocol.
    pub fn get_ref(&self) -> &TlsStream<TcpStream> {
        &self.inner
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

/// The stream returned by [`incoming`]. Dropping it stops accepting, closes
/// the listening socket and aborts handshakes in flight.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<TlsConn>,
    accept_task: JoinHandle<()>,
}

impl Stream for Incoming {
    type Item = Result<TlsConn, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|conn| conn.map(Ok))
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Accepts TCP connections and yields those that complete a mutual TLS
/// handshake with a certificate carrying a Plexus identity.
///
/// Feed it to `tonic::transport::Server::builder()...serve_with_incoming_shutdown`.
/// Each connection is accepted with the config `tls` holds at that moment,
/// so a [`ServerTls::watch`] config rotates certificates and revocation
/// lists without a restart; a bare `Arc<ServerConfig>` never changes.
/// Handshakes run concurrently in their own tasks under the default
/// [`Limits`] (see [`crate::admission`] for how a flood of unauthenticated
/// sockets is kept from starving real clients); drops are logged at warn
/// level, summarised under a flood, and never end the stream. Must be
/// called inside a tokio runtime.
pub fn incoming(listener: TcpListener, tls: impl Into<ServerTls>) -> Incoming {
    incoming_with_limits(listener, tls, Limits::default())
}

/// [`incoming`] with a custom handshake timeout.
pub fn incoming_with_timeout(
    listener: TcpListener,
    tls: impl Into<ServerTls>,
    handshake_timeout: Duration,
) -> Incoming {
    let limits = Limits {
        handshake: handshake_timeout,
        first_byte: Limits::default().first_byte.min(handshake_timeout),
        ..Limits::default()
    };
    incoming_with_limits(listener, tls, limits)
}

/// [`incoming`] with custom [`Limits`].
pub fn incoming_with_limits(
    listener: TcpListener,
    tls: impl Into<ServerTls>,
    limits: Limits,
) -> Incoming {
    let (tx, rx) = mpsc::channel(64);
    let accept_task = tokio::spawn(accept_loop(listener, tls.into(), tx, limits));
    Incoming { rx, accept_task }
}

async fn accept_loop(
    listener: TcpListener,
    tls: ServerTls,
    tx: mpsc::Sender<TlsConn>,
    limits: Limits,
) {
    // Owning the handshakes here means aborting this task aborts them too.
    let mut handshakes = JoinSet::new();
    let mut pending = Pending::default();
    let drops = Arc::new(Mutex::new(DropLog::default()));
    let mut summary = tokio::time::interval(Duration::from_secs(1));
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while let Some(done) = handshakes.try_join_next_with_id() {
            pending.finished(match done {
                Ok((id, ())) => id,
                Err(e) => e.id(),
            });
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(done) = handshakes.join_next_with_id() => {
                pending.finished(match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                });
                continue;
            }
            _ = summary.tick() => {
                lock(&drops).roll();
                continue;
            }
            () = tx.closed() => return,
        };
        match accepted {
            Ok((tcp, remote_addr)) => {
                let source = remote_addr.ip();
                for dropped in pending.make_room(source, &limits) {
                    lock(&drops).record(
                        Dropped::Evicted,
                        dropped,
                        &format_args!("{} pending handshakes", pending.len()),
                    );
                }
                let spoke = Arc::new(AtomicBool::new(false));
                let abort = handshakes.spawn(handshake(
                    TlsAcceptor::from(tls.config()),
                    tcp,
                    remote_addr,
                    limits,
                    Arc::clone(&spoke),
                    Arc::clone(&drops),
                    tx.clone(),
                ));
                pending.insert(source, spoke, abort);
            }
            Err(error) => {
                tracing::warn!(%error, "accepting a tcp connection failed; retrying");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

fn lock(drops: &Mutex<DropLog>) -> std::sync::MutexGuard<'_, DropLog> {
    drops
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether a socket's error is its peer hanging up.
fn closed_by_peer(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected | UnexpectedEof
    )
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote_addr: SocketAddr,
    limits: Limits,
    spoke: Arc<AtomicBool>,
    drops: Arc<Mutex<DropLog>>,
    tx: mpsc::Sender<TlsConn>,
) {
    let source = remote_addr.ip();
    // gRPC messages are small and latency-bound.
    let _ = tcp.set_nodelay(true);
    let started = tokio::time::Instant::now();
    let mut first = [0u8; 1];
    match tokio::time::timeout(limits.first_byte, tcp.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => spoke.store(true, Ordering::Relaxed),
        // Closed before saying anything: nothing to log. A TCP readiness
        // probe (kubelet's, a load balancer's) connects and closes, often
        // with a reset to leave no TIME_WAIT behind.
        Ok(Ok(_)) => return,
        Ok(Err(error)) if closed_by_peer(&error) => {
            tracing::debug!(%source, %error, "closed before sending anything (a TCP probe?)");
            return;
        }
        Ok(Err(error)) => {
            lock(&drops).record(Dropped::Failed, source, &error);
            return;
        }
        Err(_) => {
            lock(&drops).record(
                Dropped::Silent,
                source,
                &format_args!("{:.1} s", limits.first_byte.as_secs_f32()),
            );
            return;
        }
    }
    let left = limits.handshake.saturating_sub(started.elapsed());
    let stream = match tokio::time::timeout(left, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            lock(&drops).record(Dropped::Failed, source, &error);
            return;
        }
        Err(_) => {
            lock(&drops).record(
                Dropped::TimedOut,
                source,
                &format_args!("{:.1} s", limits.handshake.as_secs_f32()),
            );
            return;
        }
    };
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first());
    let Some(cert) = cert else {
        // Unreachable with a config from `server_config`, which requires client certs.
        lock(&drops).record(Dropped::Failed, source, &"client presented no certificate");
        return;
    };
    let certificate = cert.clone().into_owned();
    let identity = match identity_from_cert(cert) {
        Ok(identity) => identity,
        Err(error) => {
            lock(&drops).record(Dropped::Rejected, source, &error);
            return;
        }
    };
    tracing::debug!(%remote_addr, peer = %identity, "accepted tls connection");
    let conn = TlsConn {
        inner: stream,
        peer: PeerInfo {
            identity,
            remote_addr,
            certificate,
        },
    };
    // A send error only means the server is shutting down.
    let _ = tx.send(conn).await;
}

/// The authenticated peer of a request served over [`incoming`].
pub fn peer<T>(req: &Request<T>) -> Result<&PeerInfo, Status> {
    req.extensions().get::<PeerInfo>().ok_or_else(|| {
        Status::unauthenticated(
            "no verified client certificate on this connection; connect over mutual tls with a plexus certificate",
        )
    })
}

/// Returns the caller's identity if its role is one of `allowed`, else PermissionDenied.
pub fn require_role<T>(req: &Request<T>, allowed: &[Role]) -> Result<Identity, Status> {
    let identity = &peer(req)?.identity;
    if allowed.contains(&identity.role) {
        return Ok(identity.clone());
    }
    let needs = allowed
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(" or ");
    Err(Status::permission_denied(format!(
        "certificate role \"{}\" may not call this service (needs {needs})",
        identity.role
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_from(role: Role) -> Request<()> {
        let mut req = Request::new(());
        req.extensions_mut().insert(PeerInfo {
            identity: Identity::new(role, "x").unwrap(),
            remote_addr: "127.0.0.1:1".parse().unwrap(),
            certificate: CertificateDer::from(Vec::new()),
        });
        req
    }

    #[test]
    fn require_role_admits_listed_roles_only() {
        let req = request_from(Role::Node);
        assert_eq!(
            require_role(&req, &[Role::Node]).unwrap(),
            Identity::new(Role::Node, "x").unwrap()
        );
        let status = require_role(&req, &[Role::Researcher, Role::Admin]).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            status.message(),
            "certificate role \"node\" may not call this service (needs researcher or admin)"
        );
    }

    #[test]
    fn missing_peer_is_unauthenticated() {
        let req = Request::new(());
        assert_eq!(peer(&req).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(
            require_role(&req, &[Role::Admin]).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
