//! A TLS stream with its first bytes read ahead: the client reads the
//! coordinator's first HTTP/2 frame to learn whether its certificate was
//! accepted, then hands the stream, those bytes first, to tonic.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A TLS stream whose first bytes were already read (see
/// `Dialer::dial_coordinator`); they are handed out again before the rest.
pub(crate) struct Primed {
    inner: TlsStream<TcpStream>,
    first: Vec<u8>,
    pos: usize,
}

impl AsyncRead for Primed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.first.len() {
            let n = buf.remaining().min(self.first.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.first[start..start + n]);
            self.pos += n;
            if self.pos == self.first.len() {
                self.first = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Primed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Primed {
    pub(crate) fn new(inner: TlsStream<TcpStream>, first: Vec<u8>) -> Primed {
        Primed {
            inner,
            first,
            pos: 0,
        }
    }
}
