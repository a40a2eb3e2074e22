//! A WebSocket connection to an edge, as the contract describes it:
//! connect to `/ws` with the token (`?token=…` or an `Authorization`
//! header), optionally resuming (`&resume=<session_id>&last_seq=N`); the
//! first frame is a `hello`, or a close that refuses the connection.
//!
//! [`Connection::recv`] is cancel-safe (its only await point is the
//! socket's `next`), so a caller may `select!` it against its own work, as
//! the load generator does; it hands out the frame's text as tungstenite
//! gave it, without a copy. Pings are answered by tungstenite while reading.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use chatpipe_core::SessionId;
use chatpipe_core::frames::ControlFrame;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

pub use tokio_tungstenite::tungstenite::Utf8Bytes;
pub use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::frames;

/// The socket under a [`Connection`].
pub type Socket = WebSocketStream<TcpStream>;

/// Where a resumed connection picks up: the session of an earlier `hello`
/// and the highest `seq` received in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub session_id: String,
    pub last_seq: u64,
}

/// `<ws_url>?token=<token>`, plus `&resume=…&last_seq=…` when resuming.
/// Tokens and session ids are URL-safe by construction.
pub fn connect_url(ws_url: &str, token: &str, resume: Option<&Resume>) -> String {
    match resume {
        None => format!("{ws_url}?token={token}"),
        Some(resume) => format!(
            "{ws_url}?token={token}&resume={}&last_seq={}",
            resume.session_id, resume.last_seq
        ),
    }
}

/// How to connect; [`Default`] suits a test or a single client.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Extra request headers (an `Authorization`, a proxy's
    /// `X-Forwarded-For`).
    pub headers: Vec<(String, String)>,
    /// The local address to connect from (port chosen by the kernel): a
    /// load generator spreads its connections over loopback addresses.
    pub source: Option<IpAddr>,
    /// tungstenite's buffers and size limits.
    pub websocket: WebSocketConfig,
    /// Limits of the TCP connect, the handshake and the wait for `hello`.
    pub tcp_timeout: Duration,
    pub handshake_timeout: Duration,
    pub hello_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            headers: Vec::new(),
            source: None,
            websocket: WebSocketConfig::default(),
            tcp_timeout: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(20),
            hello_timeout: Duration::from_secs(20),
        }
    }
}

/// The server's first frame, typed as chatpipe-core declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub session_id: SessionId,
    pub heartbeat_ms: u64,
    /// True when a resume was accepted: what came after `last_seq` follows.
    pub resumed: bool,
}

impl Hello {
    /// The `hello` in `text`, or `None` when `text` is another frame.
    pub fn decode(text: &str) -> Option<Hello> {
        match serde_json::from_str(text) {
            Ok(ControlFrame::Hello {
                session_id,
                heartbeat_ms,
                resumed,
            }) => Some(Hello {
                session_id,
                heartbeat_ms,
                resumed,
            }),
            _ => None,
        }
    }
}

/// A close frame's code and reason (`1005` and no reason when the close
/// carried none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: String,
}

impl Close {
    fn from_frame(frame: Option<CloseFrame>) -> Option<Close> {
        frame.map(|frame| Close {
            code: u16::from(frame.code),
            reason: frame.reason.to_string(),
        })
    }
}

/// What [`Connection::recv`] got.
#[derive(Debug)]
pub enum Received {
    /// A text frame (every frame of the contract is one).
    Text(Utf8Bytes),
    /// The server closed the connection, with its close frame if any.
    Closed(Option<Close>),
    /// The connection broke (or ended) without a close frame.
    Lost,
}

/// Why a connection was not established.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The edge closed the connection before `hello`: `4001` for a bad
    /// token, `1013` when it is busy (see [`ConnectError::retry_after_ms`]).
    #[error("refused with close {code}: {reason}")]
    Refused { code: u16, reason: String },
    #[error("not a WebSocket request: {0}")]
    Request(#[source] tungstenite::Error),
    #[error("not a request header: {name}")]
    Header { name: String },
    #[error("tcp connect: {0}")]
    Tcp(#[source] std::io::Error),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("handshake: {0}")]
    Handshake(#[source] tungstenite::Error),
    #[error("closed before hello")]
    ClosedBeforeHello,
    #[error("the first frame is not a hello: {0}")]
    NotHello(String),
}

impl ConnectError {
    /// The wait a `1013` refusal asks for, if it names one.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            ConnectError::Refused { code: 1013, reason } => frames::retry_after_ms(reason),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: not for a malformed
    /// request or a refusal other than `1013` (try again later).
    pub fn is_retriable(&self) -> bool {
        match self {
            ConnectError::Refused { code, .. } => *code == 1013,
            ConnectError::Request(_) | ConnectError::Header { .. } => false,
            _ => true,
        }
    }
}

/// A frame could not be written: the connection is lost.
#[derive(Debug, thiserror::Error)]
#[error("send failed: {0}")]
pub struct SendError(#[source] tungstenite::Error);

/// An open connection whose `hello` has been read.
#[derive(Debug)]
pub struct Connection {
    socket: Socket,
    hello: Hello,
}

impl Connection {
    /// Connects to `url` (built with [`connect_url`], or by hand to probe
    /// the edge) and reads the `hello`.
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Connection, ConnectError> {
        let mut socket = open_socket(url, options).await?;
        let hello = read_hello(&mut socket, options.hello_timeout).await?;
        Ok(Connection { socket, hello })
    }

    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Writes one text frame (a frame of [`crate::frames`], or any text).
    pub async fn send_text(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), SendError> {
        self.write(Message::Text(text.into())).await
    }

    /// Writes one binary frame (the contract has none: the edge refuses it).
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), SendError> {
        self.write(Message::Binary(bytes.into())).await
    }

    /// `send` of `body` to `conversation_id`; the answer is an `ack` or an
    /// `error` carrying `client_msg_id`.
    pub async fn send_message(
        &mut self,
        conversation_id: &str,
        client_msg_id: &str,
        body: &str,
    ) -> Result<(), SendError> {
        self.send_text(frames::send_frame(conversation_id, client_msg_id, body))
            .await
    }

    /// `ack_seq`: every server frame up to `seq` arrived.
    pub async fn ack_seq(&mut self, seq: u64) -> Result<(), SendError> {
        self.send_text(frames::ack_seq_frame(seq)).await
    }

    async fn write(&mut self, message: Message) -> Result<(), SendError> {
        self.socket.send(message).await.map_err(SendError)
    }

    /// The next text frame, close or loss; pings, pongs and binary frames
    /// are skipped. Cancel-safe.
    pub async fn recv(&mut self) -> Received {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Text(text))) => return Received::Text(text),
                Some(Ok(Message::Close(frame))) => {
                    return Received::Closed(Close::from_frame(frame));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Received::Lost,
            }
        }
    }

    /// Starts the close handshake and waits for its end (bound it with a
    /// timeout: a server may not answer). Dropping the connection instead
    /// drops the TCP connection without a close frame.
    pub async fn close(&mut self) -> Result<(), SendError> {
        self.socket.close(None).await.map_err(SendError)
    }
}

/// The TCP connection and the WebSocket handshake, without reading a
/// frame: for servers that are not chatpipe (the load generator's
/// baselines), or before [`Connection::connect`] reads the `hello`.
pub async fn open_socket(url: &str, options: &ConnectOptions) -> Result<Socket, ConnectError> {
    let mut request = url.into_client_request().map_err(ConnectError::Request)?;
    for (name, value) in &options.headers {
        let header = || ConnectError::Header { name: name.clone() };
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| header())?,
            HeaderValue::from_str(value).map_err(|_| header())?,
        );
    }
    let host = request
        .uri()
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(
        options.tcp_timeout,
        tcp_connect(&host, port, options.source),
    )
    .await
    .map_err(|_| ConnectError::Timeout("tcp connect"))?
    .map_err(ConnectError::Tcp)?;
    // Frames are small and latency is measured: no Nagle delay.
    let _ = stream.set_nodelay(true);
    let (socket, _response) = tokio::time::timeout(
        options.handshake_timeout,
        tokio_tungstenite::client_async_with_config(request, stream, Some(options.websocket)),
    )
    .await
    .map_err(|_| ConnectError::Timeout("handshake"))?
    .map_err(ConnectError::Handshake)?;
    Ok(socket)
}

async fn tcp_connect(host: &str, port: u16, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let address = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host} has no address")))?;
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(source) = source {
        // Many connections from one source address: let the kernel reuse
        // ports in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(source, 0))?;
    }
    socket.connect(address).await
}

async fn read_hello(socket: &mut Socket, timeout: Duration) -> Result<Hello, ConnectError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, socket.next())
            .await
            .map_err(|_| ConnectError::Timeout("hello"))?;
        match next {
            Some(Ok(Message::Text(text))) => {
                return Hello::decode(text.as_str())
                    .ok_or_else(|| ConnectError::NotHello(text.as_str().to_owned()));
            }
            Some(Ok(Message::Close(frame))) => {
                let Close { code, reason } = Close::from_frame(frame).unwrap_or(Close {
                    code: 1005,
                    reason: String::new(),
                });
                return Err(ConnectError::Refused { code, reason });
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(ConnectError::Handshake(error)),
            None => return Err(ConnectError::ClosedBeforeHello),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn urls_carry_the_token_and_the_resume() {
        assert_eq!(
            connect_url("ws://127.0.0.1:1/ws", "t", None),
            "ws://127.0.0.1:1/ws?token=t"
        );
        let resume = Resume {
            session_id: "s1".into(),
            last_seq: 7,
        };
        assert_eq!(
            connect_url("ws://127.0.0.1:1/ws", "t", Some(&resume)),
            "ws://127.0.0.1:1/ws?token=t&resume=s1&last_seq=7"
        );
    }

    #[test]
    fn hello_is_decoded_typed() {
        let hello = Hello::decode(
            r#"{"op":"hello","session_id":"s-1","heartbeat_ms":15000,"resumed":true}"#,
        )
        .unwrap();
        assert_eq!(
            (hello.session_id.as_str(), hello.heartbeat_ms, hello.resumed),
            ("s-1", 15000, true)
        );
        assert_eq!(Hello::decode(r#"{"op":"pong"}"#), None);
        assert_eq!(Hello::decode(r#"{"op":"hello","session_id":"s"}"#), None);
    }

    #[test]
    fn only_busy_refusals_are_retried() {
        let busy = ConnectError::Refused {
            code: 1013,
            reason: "capacity; retry_after_ms=250".into(),
        };
        assert_eq!(
            (busy.is_retriable(), busy.retry_after_ms()),
            (true, Some(250))
        );
        let unauthorized = ConnectError::Refused {
            code: 4001,
            reason: "unauthorized: expired; retry_after_ms=5".into(),
        };
        assert_eq!(
            (unauthorized.is_retriable(), unauthorized.retry_after_ms()),
            (false, None)
        );
    }

    /// A one-connection server on 127.0.0.1:0 that checks the request,
    /// answers `first`, then echoes text frames until the client closes.
    // The handshake callback's `Result` type is tungstenite's, large error
    // variant included.
    #[allow(clippy::result_large_err)]
    async fn server(first: Message) -> (String, tokio::task::JoinHandle<Option<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
            let record = seen.clone();
            let callback =
                move |request: &tungstenite::handshake::server::Request,
                      response: tungstenite::handshake::server::Response| {
                    let header = request
                        .headers()
                        .get("x-forwarded-for")
                        .and_then(|value| value.to_str().ok());
                    *record.lock().unwrap() =
                        Some(format!("{} {}", request.uri(), header.unwrap_or("-")));
                    Ok(response)
                };
            let mut socket = tokio_tungstenite::accept_hdr_async(stream, callback)
                .await
                .unwrap();
            socket.send(first).await.unwrap();
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message {
                    socket.send(Message::Text(text)).await.unwrap();
                }
            }
            seen.lock().unwrap().clone()
        });
        (url, task)
    }

    #[tokio::test]
    async fn connects_reads_hello_and_exchanges_frames() {
        let (url, server) = server(Message::text(
            r#"{"op":"hello","session_id":"s-9","heartbeat_ms":100,"resumed":false}"#,
        ))
        .await;
        let options = ConnectOptions {
            headers: vec![("x-forwarded-for".into(), "203.0.113.7".into())],
            source: Some("127.0.0.1".parse().unwrap()),
            ..ConnectOptions::default()
        };
        let resume = Resume {
            session_id: "s-8".into(),
            last_seq: 3,
        };
        let mut connection =
            Connection::connect(&connect_url(&url, "tok", Some(&resume)), &options)
                .await
                .unwrap();
        assert_eq!(connection.hello().session_id.as_str(), "s-9");
        connection.send_message("c1", "m1", "hi").await.unwrap();
        let Received::Text(echo) = connection.recv().await else {
            panic!("no echo");
        };
        let frame = frames::parse_server_frame(echo.as_str()).unwrap();
        assert_eq!(
            (frame.op.as_ref(), frame.client_msg_id.as_deref()),
            ("send", Some("m1"))
        );
        connection.ack_seq(4).await.unwrap();
        assert!(
            matches!(connection.recv().await, Received::Text(text) if text.as_str() == r#"{"op":"ack_seq","seq":4}"#)
        );
        connection.close().await.unwrap();
        assert!(matches!(
            connection.recv().await,
            Received::Closed(_) | Received::Lost
        ));
        assert_eq!(
            server.await.unwrap().as_deref(),
            Some("/ws?token=tok&resume=s-8&last_seq=3 203.0.113.7")
        );
    }

    #[tokio::test]
    async fn a_close_before_hello_is_a_refusal() {
        let (url, _server) = server(Message::Close(Some(CloseFrame {
            code: 4001.into(),
            reason: "unauthorized: expired".into(),
        })))
        .await;
        let refused = Connection::connect(&url, &ConnectOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, ConnectError::Refused { code: 4001, reason } if reason == "unauthorized: expired"),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn another_first_frame_is_not_a_hello() {
        let (url, _server) = server(Message::text(r#"{"op":"pong"}"#)).await;
        let error = Connection::connect(&url, &ConnectOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(error, ConnectError::NotHello(_)), "{error}");
    }
}
