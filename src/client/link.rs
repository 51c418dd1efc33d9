//! The client's connection to the server: a connected UDP socket, or a TCP or TLS stream with
//! STUN/ChannelData framing. Buffers are allocated once; frames are handed out as ranges of the
//! receive buffer.

use std::net::SocketAddr;
use std::ops::Range;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::client::TlsStream;

use super::ClientError;
use crate::stun::{self, Frame};

/// Largest frame a stream can carry: a STUN message of 20 + 65,535 bytes (the length field is
/// 16 bits), or ChannelData of 4 + 65,535 bytes padded to 65,540.
const MAX_STREAM_FRAME: usize = 20 + 0xFFFF;
/// Receive buffer of a stream: room for a whole frame after the unread bytes of the last read.
const STREAM_BUF_LEN: usize = 2 * MAX_STREAM_FRAME + 4;
/// Largest UDP payload.
const DATAGRAM_BUF_LEN: usize = 0xFFFF;

pub(super) enum Link {
    Udp { socket: UdpSocket, buf: Box<[u8]> },
    Tcp(StreamLink<TcpStream>),
    Tls(Box<StreamLink<TlsStream<TcpStream>>>),
}

/// A byte stream to the server and the bytes read from it but not yet handed out.
pub(super) struct StreamLink<S> {
    io: S,
    buf: Box<[u8]>,
    /// Start of the unread bytes.
    start: usize,
    /// End of the bytes read.
    end: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> StreamLink<S> {
    pub(super) fn new(io: S) -> Self {
        StreamLink {
            io,
            buf: vec![0; STREAM_BUF_LEN].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// The next whole frame as a range of `buf` (ChannelData without its padding). Cancel-safe:
    /// bytes read are kept in `buf` until a frame is complete.
    async fn recv_frame(&mut self) -> Result<Range<usize>, ClientError> {
        loop {
            let unread = self.buf.get(self.start..self.end).unwrap_or_default();
            if let Some(frame) = stun::frame_len(unread).map_err(ClientError::Framing)? {
                let at = self.start;
                let len = match frame {
                    Frame::Stun(len) => len,
                    Frame::ChannelData { len, .. } => len,
                };
                self.start += frame.stream_len();
                return Ok(at..at + len);
            }
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            } else if self.buf.len() - self.end < MAX_STREAM_FRAME {
                // Move the partial frame to the front so that the rest of it fits.
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            let space = self.buf.get_mut(self.end..).unwrap_or_default();
            match self.io.read(space).await? {
                0 => return Err(ClientError::Closed),
                n => self.end += n,
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.io.write_all(bytes).await?;
        // TLS keeps written records until flushed; for TCP this does nothing.
        self.io.flush().await?;
        Ok(())
    }
}

impl Link {
    pub(super) fn udp(socket: UdpSocket) -> Self {
        Link::Udp {
            socket,
            buf: vec![0; DATAGRAM_BUF_LEN].into_boxed_slice(),
        }
    }

    pub(super) fn udp_socket(&self) -> Option<&UdpSocket> {
        match self {
            Link::Udp { socket, .. } => Some(socket),
            _ => None,
        }
    }

    pub(super) fn is_stream(&self) -> bool {
        !matches!(self, Link::Udp { .. })
    }

    pub(super) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Link::Udp { socket, .. } => socket.local_addr(),
            Link::Tcp(stream) => stream.io.local_addr(),
            Link::Tls(stream) => stream.io.get_ref().0.local_addr(),
        }
    }

    /// Sends one datagram, or writes one frame to the stream (ChannelData already padded).
    pub(super) async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match self {
            Link::Udp { socket, .. } => {
                socket.send(bytes).await?;
                Ok(())
            }
            Link::Tcp(stream) => stream.send(bytes).await,
            Link::Tls(stream) => stream.send(bytes).await,
        }
    }

    /// The next datagram or stream frame, as a range of [`Link::bytes`]. Cancel-safe.
    pub(super) async fn recv_frame(&mut self) -> Result<Range<usize>, ClientError> {
        match self {
            // The socket is connected: the kernel drops datagrams from anyone but the server.
            Link::Udp { socket, buf } => Ok(0..socket.recv(buf).await?),
            Link::Tcp(stream) => stream.recv_frame().await,
            Link::Tls(stream) => stream.recv_frame().await,
        }
    }

    /// The bytes of a range [`Link::recv_frame`] returned.
    pub(super) fn bytes(&self, range: Range<usize>) -> &[u8] {
        let buf = match self {
            Link::Udp { buf, .. } => buf,
            Link::Tcp(stream) => &stream.buf,
            Link::Tls(stream) => &stream.buf,
        };
        buf.get(range).unwrap_or_default()
    }
}
