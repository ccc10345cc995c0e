//! The lean HTTP/1.x path for `GET /events`.
//!
//! An SSE stream is one request and then hours of writes. Behind hyper, each
//! such connection keeps two 8 KiB buffers that an idle stream never needs
//! (about 19 KB of resident memory per subscriber, measured). Here the
//! accept loop parses the request head itself, runs it through the same
//! router (so validation, CORS and errors are exactly those of every other
//! route), writes the response head, and then copies the body's chunks
//! straight to the socket. A subscriber then costs its stream state and
//! nothing else.
//!
//! The body is chunked on HTTP/1.1 (`Transfer-Encoding: chunked`, a few
//! bytes per coalesced write) and ends the connection after it
//! (`Connection: close`). Close-delimited alone would be valid, but clients
//! that read in fixed blocks over `requests`/`urllib3` (sseclient-py) then
//! wait for a block to fill before they see an event; with chunks they get
//! each write at once. HTTP/1.0 has no chunks: its body is close-delimited.
//! The stream's body makes the chunks itself (it is asked to with the
//! [`Transfer`] request extension), so that a delivery is one contiguous
//! buffer, shared by every subscriber, and one `send`.
//!
//! The connection also offers itself to the stream's queue as a lane
//! ([`DirectConnection`], with `--inline-writes`): a publish may then write
//! an event to the socket itself while the stream is idle, and the pump
//! writes only what the publish could not (see `hub::subscriber`).
//!
//! While the body has nothing to write, the pump watches the socket's read
//! readiness through its single waker slot (`poll_read_ready`), not a
//! `readable()` future per wake-up: a wake-up then costs no waiter list
//! insertion and removal.

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tower::ServiceExt as _;

use super::PeerAddr;
use crate::hub::frame::{Piece, Transfer};
use crate::hub::{DirectConnection, DirectWrite};

/// Largest request head accepted on this path.
pub const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 48;

/// What the first bytes of a connection say.
pub enum Sniff {
    /// Not (yet) known: read more.
    NeedMore,
    /// Some other request: give the connection to hyper.
    Other,
    /// The HTTP/2 preface (h2c, prior knowledge): hyper's, as an HTTP/2
    /// connection (counted per address, closed when idle).
    Http2,
    /// A complete `GET /events` head of this many bytes.
    Stream(usize),
}

/// Looks at what a connection has sent so far.
pub fn sniff(buf: &[u8]) -> Sniff {
    const PREFIX: &[u8] = b"GET /events";
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let n = buf.len().min(H2_PREFACE.len());
    if n > 0 && buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Sniff::Http2
        } else {
            Sniff::NeedMore
        };
    }
    let n = buf.len().min(PREFIX.len());
    if buf[..n] != PREFIX[..n] {
        return Sniff::Other;
    }
    if buf.len() > PREFIX.len() && !matches!(buf[PREFIX.len()], b' ' | b'?') {
        return Sniff::Other;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        // A GET with a body is hyper's to answer, as any other odd request.
        Ok(httparse::Status::Complete(_)) if has_body(request.headers) => Sniff::Other,
        Ok(httparse::Status::Complete(len)) => Sniff::Stream(len),
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Sniff::NeedMore,
        // Too big or malformed: hyper answers such requests properly.
        _ => Sniff::Other,
    }
}

/// Whether the head announces a body (`Content-Length` other than 0, or
/// any `Transfer-Encoding`).
fn has_body(headers: &[httparse::Header<'_>]) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            || h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0"
    })
}

/// Serves one `GET /events` request whose complete head is `head`.
/// `inline`: the hub may write events to this connection directly (see
/// [`DirectConnection`]).
pub async fn serve(
    stream: TcpStream,
    head: Bytes,
    peer: PeerAddr,
    router: Router,
    write_timeout: Duration,
    inline: bool,
) {
    let request = build_request(&head, peer);
    drop(head);
    let Ok(mut request) = request else {
        // Boxed, as the error answer below: what only a refused request
        // needs is not reserved in every stream's task.
        Box::pin(refuse_bad_head(stream, write_timeout)).await;
        return;
    };
    let version = request.version();
    if version == Version::HTTP_11 {
        request.extensions_mut().insert(Transfer::Chunked);
    }
    let stream = Arc::new(stream);
    if inline {
        let socket: Arc<dyn DirectWrite> = Arc::new(Socket(stream.clone()));
        request.extensions_mut().insert(DirectConnection(socket));
    }
    // Boxed so that the routing future, alive for a moment, is not part of
    // this task's state, which lives as long as the stream.
    let Ok(response) = Box::pin(router.oneshot(request)).await;
    let (parts, body) = response.into_parts();
    if parts.status != StatusCode::OK {
        // The request, and the connection's clone in it, are gone.
        if let Ok(stream) = Arc::try_unwrap(stream) {
            Box::pin(reply_finite(stream, version, parts, body, write_timeout)).await;
        }
        return;
    }
    let framing = match (version, parts.extensions.get::<Transfer>()) {
        (Version::HTTP_11, Some(Transfer::Chunked)) => Framing::ChunkedByBody,
        (Version::HTTP_11, _) => Framing::Chunked,
        _ => Framing::UntilClose,
    };
    let head = response_head(version, &parts, Length::from(framing));
    drop(parts);
    if write_all(&stream, &head, write_timeout).await.is_ok() {
        drop(head);
        pump(&stream, body, framing, write_timeout).await;
    }
}

/// The connection, as the hub writes to it directly.
#[derive(Debug)]
struct Socket(Arc<TcpStream>);

impl DirectWrite for Socket {
    /// A plain `send` on the descriptor, not tokio's `try_write`: that one
    /// first reads the socket's readiness, a cache miss per delivery when a
    /// publish walks a thousand sockets. When the send buffer is full, the
    /// stream's own `try_write` meets `WouldBlock` and clears the readiness.
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match socket2::SockRef::from(&*self.0).send(bytes) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }
}

/// Answers a head this path cannot take with 400 and closes.
async fn refuse_bad_head(mut stream: TcpStream, write_timeout: Duration) {
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\ndate: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        httpdate::fmt_http_date(std::time::SystemTime::now())
    );
    if write_all(&stream, reply.as_bytes(), write_timeout)
        .await
        .is_ok()
    {
        close_after_reply(&mut stream).await;
    }
}

/// Writes a finite answer (an error: small) with its length, and closes.
async fn reply_finite(
    mut stream: TcpStream,
    version: Version,
    parts: http::response::Parts,
    body: Body,
    write_timeout: Duration,
) {
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let head = response_head(version, &parts, Length::Exactly(bytes.len()));
    if write_parts(&stream, [&head, &bytes], write_timeout)
        .await
        .is_ok()
    {
        close_after_reply(&mut stream).await;
    }
}

/// How a stream's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// HTTP/1.1: chunks, and the last (empty) chunk at the end.
    Chunked,
    /// HTTP/1.1, the body's bytes already chunks: written as they are,
    /// then the last chunk.
    ChunkedByBody,
    /// HTTP/1.0: the connection's close.
    UntilClose,
}

/// What the response head says about the body's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Length {
    /// `Content-Length`.
    Exactly(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Nothing: until the connection closes.
    UntilClose,
}

impl From<Framing> for Length {
    fn from(f: Framing) -> Self {
        match f {
            Framing::Chunked | Framing::ChunkedByBody => Self::Chunked,
            Framing::UntilClose => Self::UntilClose,
        }
    }
}

/// A request head this path does not take (the client gets a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a malformed request head, or a GET with a body")]
pub struct BadHead;

/// Turns a complete request head (as [`sniff`] found it) into a request
/// for the router.
pub fn build_request(head: &[u8], peer: PeerAddr) -> Result<Request<Body>, BadHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    if !matches!(parsed.parse(head), Ok(httparse::Status::Complete(_))) {
        return Err(BadHead);
    }
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400.
    if version == Version::HTTP_11
        && !parsed
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("host"))
    {
        return Err(BadHead);
    }
    let mut builder = Request::builder()
        .method(parsed.method.ok_or(BadHead)?)
        .uri(parsed.path.ok_or(BadHead)?)
        .version(version);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| BadHead)?;
        if name == http::header::CONTENT_LENGTH && h.value != b"0"
            || name == http::header::TRANSFER_ENCODING
        {
            return Err(BadHead); // a GET with a body is not for this path
        }
        builder = builder.header(name, HeaderValue::from_bytes(h.value).map_err(|_| BadHead)?);
    }
    let mut request = builder.body(Body::empty()).map_err(|_| BadHead)?;
    request.extensions_mut().insert(peer);
    Ok(request)
}

fn response_head(version: Version, parts: &http::response::Parts, length: Length) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(256);
    let reason = parts.status.canonical_reason().unwrap_or("");
    let proto = if version == Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    out.put_slice(format!("{proto} {} {reason}\r\n", parts.status.as_u16()).as_bytes());
    if !parts.headers.contains_key(http::header::DATE) {
        out.put_slice(b"date: ");
        out.put_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        out.put_slice(b"\r\n");
    }
    for (name, value) in &parts.headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    match length {
        Length::Exactly(n) => out.put_slice(format!("content-length: {n}\r\n").as_bytes()),
        Length::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        Length::UntilClose => {}
    }
    out.put_slice(b"connection: close\r\n\r\n");
    out.to_vec()
}

/// After a finite reply on a connection we close: half-close, then read
/// and discard what the client still sends (bytes after its request head)
/// for a moment, so that closing with unread data does not turn into a
/// reset that cuts the reply before the client has read it.
async fn close_after_reply(stream: &mut TcpStream) {
    use tokio::io::AsyncWriteExt;
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    let drain = async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Copies the body to the socket until it ends, the client goes away, or a
/// write stays blocked for longer than `write_timeout`.
async fn pump(stream: &TcpStream, mut body: Body, framing: Framing, write_timeout: Duration) {
    loop {
        let data = match std::future::poll_fn(|cx| poll_next(stream, &mut body, cx)).await {
            Next::Data(data) => data,
            Next::End => {
                // The body's end: the last chunk says so.
                if framing != Framing::UntilClose {
                    let _ = write_all(stream, b"0\r\n\r\n", write_timeout).await;
                }
                return;
            }
            Next::Gone => return,
        };
        let written = match framing {
            Framing::Chunked => write_chunk(stream, &data, write_timeout).await,
            Framing::ChunkedByBody | Framing::UntilClose => {
                write_all(stream, &data, write_timeout).await
            }
        };
        if written.is_err() {
            return;
        }
    }
}

/// What the pump does next.
enum Next {
    /// Write these bytes.
    Data(Bytes),
    /// The body ended.
    End,
    /// The client is gone, or the body failed.
    Gone,
}

/// The body's next bytes; meanwhile, watches the socket for the client's
/// end. The client sends nothing on an SSE stream: EOF or an error means
/// it is gone, anything else is read and ignored.
fn poll_next(stream: &TcpStream, body: &mut Body, cx: &mut Context<'_>) -> Poll<Next> {
    use http_body::Body as _;
    loop {
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut *body).poll_frame(cx) {
            return Poll::Ready(match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => Next::Data(data),
                    Err(_) => continue, // trailers: nothing to write
                },
                Some(Err(_)) => Next::Gone,
                None => Next::End,
            });
        }
        // Budgeted by tokio: a client that keeps sending makes this yield.
        if std::task::ready!(stream.poll_read_ready(cx)).is_err() {
            return Poll::Ready(Next::Gone);
        }
        let mut probe = [0u8; 64];
        match stream.try_read(&mut probe) {
            Ok(0) => return Poll::Ready(Next::Gone),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Poll::Ready(Next::Gone),
        }
    }
}

/// Writes all of `data`, trying the socket directly first so that the
/// common case (room in the send buffer) costs one syscall and no timer.
async fn write_all(stream: &TcpStream, data: &[u8], write_timeout: Duration) -> io::Result<()> {
    write_parts(stream, [data], write_timeout).await
}

/// Writes `data` as one chunk, framed by the stream encoder's own
/// [`Piece`] (a copy: only a body that did not make its own chunks comes
/// here). An empty `data` writes nothing: an empty chunk would end the body.
async fn write_chunk(stream: &TcpStream, data: &[u8], write_timeout: Duration) -> io::Result<()> {
    let mut piece = Piece::with_capacity(data.len());
    piece.extend(data);
    write_all(stream, &piece.finish(Transfer::Chunked), write_timeout).await
}

/// Writes every byte of `parts`, in order, with vectored writes straight
/// to the socket; waits for room (at most `write_timeout` at a time) only
/// when the send buffer is full.
async fn write_parts<const N: usize>(
    stream: &TcpStream,
    parts: [&[u8]; N],
    write_timeout: Duration,
) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut written = 0;
    while written < total {
        // What is left of each part (an empty slice once it is written).
        let mut skip = written;
        let slices = parts.map(|part| {
            let from = skip.min(part.len());
            skip -= from;
            io::IoSlice::new(&part[from..])
        });
        // One part is a plain `send`: `writev` costs the kernel more.
        let result = if N == 1 {
            stream.try_write(&slices[0])
        } else {
            stream.try_write_vectored(&slices)
        };
        match result {
            Ok(k) => written += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::timeout(write_timeout, stream.writable())
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading")
                    })??;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads more of a connection's first bytes into `buf`.
pub async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    buf.reserve(1024);
    stream.read_buf(buf).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerAddr {
        PeerAddr(([127, 0, 0, 1], 9).into())
    }

    #[test]
    fn sniff_takes_only_complete_bodiless_event_stream_heads() {
        let get = b"GET /events?device=a HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(sniff(get), Sniff::Stream(n) if n == get.len()));
        // Pipelined: the first head only.
        let two = [&get[..], b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
        assert!(matches!(sniff(&two), Sniff::Stream(n) if n == get.len()));
        assert!(matches!(sniff(b"GET /ev"), Sniff::NeedMore));
        assert!(matches!(
            sniff(b"GET /events HTTP/1.1\r\nHo"),
            Sniff::NeedMore
        ));
        for other in [
            &b"GET /eventsx HTTP/1.1\r\n\r\n"[..],
            b"POST /events HTTP/1.1\r\n\r\n",
            b"GET /health HTTP/1.1\r\n\r\n",
            b"GET /events HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            b"GET /events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /events HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            assert!(
                matches!(sniff(other), Sniff::Other),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
        // The HTTP/2 preface, whole (and maybe the client's SETTINGS after
        // it) or not yet.
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert!(matches!(sniff(preface), Sniff::Http2));
        assert!(matches!(
            sniff(&[&preface[..], b"\0\0\0\x04\0"].concat()),
            Sniff::Http2
        ));
        assert!(matches!(sniff(&preface[..9]), Sniff::NeedMore));
        assert!(matches!(sniff(b"PRI * HTTP/1.1\r\n"), Sniff::Other));
        // An oversized head goes to hyper, which answers it.
        let big = [&b"GET /events HTTP/1.1\r\nX: "[..], &vec![b'a'; MAX_HEAD]].concat();
        assert!(matches!(sniff(&big), Sniff::Other));
        assert!(matches!(
            sniff(b"GET /events HTTP/1.1\r\nContent-Length: 0\r\nHost: x\r\n\r\n"),
            Sniff::Stream(_)
        ));
    }

    #[test]
    fn build_request_keeps_the_head_and_needs_host_on_http11() {
        let r = build_request(
            b"GET /events?type=t HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1\r\n\r\n",
            peer(),
        )
        .unwrap();
        assert_eq!(r.uri(), "/events?type=t");
        assert_eq!(r.version(), Version::HTTP_11);
        assert_eq!(r.headers()["last-event-id"], "1");
        assert!(r.extensions().get::<PeerAddr>().is_some());
        // HTTP/1.0 needs no Host.
        let r = build_request(b"GET /events HTTP/1.0\r\n\r\n", peer()).unwrap();
        assert_eq!(r.version(), Version::HTTP_10);
        assert_eq!(
            build_request(b"GET /events HTTP/1.1\r\n\r\n", peer()).unwrap_err(),
            BadHead
        );
        assert_eq!(
            build_request(
                b"GET /events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                peer()
            )
            .unwrap_err(),
            BadHead
        );
    }

    /// What the pump writes for `body` with `framing`, read by a client
    /// over a real socket until the server side closes.
    async fn pumped(body: &'static str, framing: Framing) -> String {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        pump(&server, Body::from(body), framing, Duration::from_secs(5)).await;
        drop(server);
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn the_pump_frames_chunks_itself_only_when_the_body_did_not() {
        assert_eq!(
            pumped("data: a\n\n", Framing::Chunked).await,
            "9\r\ndata: a\n\n\r\n0\r\n\r\n"
        );
        assert_eq!(
            pumped("9\r\ndata: a\n\n\r\n", Framing::ChunkedByBody).await,
            "9\r\ndata: a\n\n\r\n0\r\n\r\n"
        );
        assert_eq!(
            pumped("data: a\n\n", Framing::UntilClose).await,
            "data: a\n\n"
        );
    }

    #[test]
    fn response_head_has_status_date_and_framing() {
        let (mut parts, ()) = http::Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/event-stream")
            .body(())
            .unwrap()
            .into_parts();
        let head =
            String::from_utf8(response_head(Version::HTTP_11, &parts, Length::Chunked)).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("\r\ndate: ") && head.contains(" GMT\r\n"),
            "{head}"
        );
        assert!(head.contains("content-type: text/event-stream\r\n"));
        assert!(head.ends_with("connection: close\r\n\r\n"));
        assert!(!head.contains("content-length"));
        assert!(head.contains("transfer-encoding: chunked\r\n"));
        parts.status = StatusCode::BAD_REQUEST;
        let head = String::from_utf8(response_head(Version::HTTP_10, &parts, Length::Exactly(12)))
            .unwrap();
        assert!(head.starts_with("HTTP/1.0 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("content-length: 12\r\n"));
    }
}
