//! Listeners behind a load balancer (`proxy-protocol = true`): which listeners expect a PROXY
//! protocol header and from whom ([`ProxyListeners`], swapped whole by a reload), reading the
//! header at the start of a connection within a deadline ([`read_header`]), and handing the
//! bytes read after it to the TLS handshake or the STUN reader ([`Prefixed`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::config::{Listen, Transport};

use super::super::BoundListener;
use super::proxy::{self, Parsed, ProxyError};

/// How a listener admits the connections it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::net) enum Admission {
    /// The connection is the client's.
    Direct,
    /// The connection is a balancer's, from one of these ranges; a PROXY protocol header
    /// names the client.
    Proxied(Arc<[IpNet]>),
    /// The listener is not (or no longer) configured: a reload is removing it.
    Closing,
}

/// The node's TCP/TLS listeners and how each admits connections; replaced whole when a reload
/// changes them, before any listener it adds accepts.
#[derive(Debug, Default)]
pub(in crate::net) struct ProxyListeners(Vec<ProxyListener>);

/// A TCP/TLS listener's socket address, and the ranges its balancers send from (`None`: it
/// takes clients directly).
type ProxyListener = (Transport, SocketAddr, Option<Arc<[IpNet]>>);

impl ProxyListeners {
    /// The table for the listeners `bound`, configured by `listen`. Each configured listener
    /// is paired with one bound socket: the one with its address, or for a configured port 0
    /// the first socket on its IP not paired yet (sockets are bound in configuration order, so
    /// several port-0 listeners on one IP pair up in order).
    pub(in crate::net) fn new(listen: &[Listen], bound: &[BoundListener]) -> ProxyListeners {
        let mut paired = vec![false; bound.len()];
        let mut table = Vec::new();
        for wanted in listen.iter().filter(|w| w.transport != Transport::Udp) {
            let free = |i: &usize| !paired[*i];
            let exact = (0..bound.len()).filter(free).find(|&i| {
                bound[i].transport == wanted.transport && bound[i].address == wanted.address
            });
            let Some(i) =
                exact.or_else(|| (0..bound.len()).filter(free).find(|&i| bound[i].is(wanted)))
            else {
                continue;
            };
            paired[i] = true;
            let trusted = wanted.proxy_from.as_deref().map(Arc::from);
            table.push((bound[i].transport, bound[i].address, trusted));
        }
        ProxyListeners(table)
    }

    /// How the listener bound to `local` admits a connection.
    pub(in crate::net) fn admission(&self, transport: Transport, local: SocketAddr) -> Admission {
        match self
            .0
            .iter()
            .find(|(t, address, _)| *t == transport && *address == local)
        {
            None => Admission::Closing,
            Some((_, _, None)) => Admission::Direct,
            Some((_, _, Some(trusted))) => Admission::Proxied(trusted.clone()),
        }
    }
}

/// Is `source` (normalized: an IPv4-mapped IPv6 address as IPv4) in one of `ranges`?
pub(in crate::net) fn trusted(ranges: &[IpNet], source: IpAddr) -> bool {
    ranges.iter().any(|range| range.contains(&source))
}

/// Why a balancer's connection was closed before it carried a client.
#[derive(Debug, thiserror::Error)]
pub(in crate::net) enum HeaderError {
    #[error(transparent)]
    Refused(#[from] ProxyError),
    #[error("connection closed before the PROXY protocol header ended")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

/// Reads a PROXY protocol header from `stream`. Returns the client and the server addresses it
/// names (`None` for LOCAL/UNKNOWN: the connection's own stand) and the bytes received after
/// the header. Reads at most [`proxy::V2_MAX`] bytes; the caller bounds the time.
pub(in crate::net) async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Option<(SocketAddr, SocketAddr)>, Vec<u8>), HeaderError> {
    let mut buf = [0u8; proxy::V2_MAX];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        filled += n;
        match proxy::parse(&buf[..filled])? {
            Parsed::Header(header) => {
                return Ok((header.addresses, buf[header.len..filled].to_vec()));
            }
            // `parse` refuses a header that would not fit in `buf` (TooLong), so a full buffer
            // never comes back Incomplete.
            Parsed::Incomplete if filled < buf.len() => {}
            Parsed::Incomplete => return Err(ProxyError::TooLong.into()),
        }
    }
}

/// A stream whose first bytes were already read (those that followed a PROXY protocol header):
/// reads give them first, then the stream's; writes go straight to the stream.
pub(in crate::net) struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(in crate::net) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(transport: Transport, address: &str, proxy_from: Option<&str>) -> Listen {
        Listen {
            transport,
            address: address.parse().unwrap(),
            proxy_from: proxy_from.map(|net| vec![net.parse().unwrap()]),
        }
    }

    fn bound(transport: Transport, address: &str) -> BoundListener {
        BoundListener {
            transport,
            address: address.parse().unwrap(),
        }
    }

    #[test]
    fn admission_follows_the_configured_listener_and_refuses_unlisted_ones() {
        let table = ProxyListeners::new(
            &[
                listen(Transport::Tcp, "127.0.0.1:0", Some("10.0.0.0/8")),
                listen(Transport::Tls, "127.0.0.1:5349", None),
            ],
            &[
                bound(Transport::Tcp, "127.0.0.1:4000"),
                bound(Transport::Tls, "127.0.0.1:5349"),
            ],
        );
        let Admission::Proxied(ranges) =
            table.admission(Transport::Tcp, "127.0.0.1:4000".parse().unwrap())
        else {
            panic!("the port-0 listener is proxied");
        };
        assert!(trusted(&ranges, "10.1.2.3".parse().unwrap()));
        assert!(!trusted(&ranges, "11.1.2.3".parse().unwrap()));
        assert_eq!(
            table.admission(Transport::Tls, "127.0.0.1:5349".parse().unwrap()),
            Admission::Direct
        );
        assert_eq!(
            table.admission(Transport::Tls, "127.0.0.1:4000".parse().unwrap()),
            Admission::Closing
        );

        // Port-0 listeners on one IP pair with the sockets in order.
        let table = ProxyListeners::new(
            &[
                listen(Transport::Tcp, "127.0.0.1:0", Some("10.0.0.0/8")),
                listen(Transport::Tcp, "127.0.0.1:0", None),
                listen(Transport::Tcp, "127.0.0.1:0", Some("192.0.2.0/24")),
            ],
            &[
                bound(Transport::Tcp, "127.0.0.1:4001"),
                bound(Transport::Tcp, "127.0.0.1:4002"),
                bound(Transport::Tcp, "127.0.0.1:4003"),
            ],
        );
        let at =
            |port: u16| table.admission(Transport::Tcp, SocketAddr::from(([127, 0, 0, 1], port)));
        assert!(matches!(at(4001), Admission::Proxied(r) if r[0].to_string() == "10.0.0.0/8"));
        assert_eq!(at(4002), Admission::Direct);
        assert!(matches!(at(4003), Admission::Proxied(r) if r[0].to_string() == "192.0.2.0/24"));
    }

    #[tokio::test]
    async fn the_bytes_after_the_header_are_read_first() {
        let mut sent = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 3478\r\nhello".to_vec();
        sent.extend_from_slice(b" world");
        let mut stream = &sent[..];
        let (addresses, rest) = read_header(&mut stream).await.unwrap();
        assert_eq!(
            addresses,
            Some((
                "192.0.2.7:56324".parse().unwrap(),
                "198.51.100.1:3478".parse().unwrap()
            ))
        );
        let mut prefixed = Prefixed::new(rest, stream);
        let mut all = String::new();
        prefixed.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }

    #[tokio::test]
    async fn a_stream_that_ends_or_is_not_a_header_is_refused() {
        let mut cut = &b"PROXY TCP4 192.0.2.7"[..];
        assert!(matches!(
            read_header(&mut cut).await,
            Err(HeaderError::Closed)
        ));
        let mut stun = &[0u8, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42][..];
        assert!(matches!(
            read_header(&mut stun).await,
            Err(HeaderError::Refused(ProxyError::Missing))
        ));
    }
}
