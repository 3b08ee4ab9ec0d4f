//! The tonic test peer: a server with one method per gRPC call shape, and a client helper.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming, metadata::MetadataValue, transport::Endpoint};

tonic::include_proto!("weft.test");

pub use echo_client::EchoClient;
use echo_server::{Echo, EchoServer};

/// Largest message either side accepts.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// What the server saw, for assertions.
#[derive(Debug, Default)]
pub struct ServerState {
    /// Calls that were cancelled by the client (handler dropped before it finished).
    pub cancelled: AtomicUsize,
    /// Calls whose handler started.
    pub started: AtomicUsize,
    /// Server streams whose every message was handed to the transport.
    pub completed_streams: AtomicUsize,
    /// Messages client-streaming calls have received so far, counted as each arrives.
    pub client_stream_messages: AtomicUsize,
    /// Bidi calls whose request stream ended, however (end of stream, reset, error).
    pub bidi_inputs_ended: AtomicUsize,
    /// Per call, in order: its method and the `x-weft-peer-identity` it carried (`-` for none).
    pub peers: std::sync::Mutex<Vec<(String, String)>>,
}

impl Svc {
    fn record_peer<T>(&self, method: &str, req: &Request<T>) {
        let id = req
            .metadata()
            .get("x-weft-peer-identity")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        self.0
            .peers
            .lock()
            .unwrap()
            .push((method.to_string(), id.to_string()));
    }
}

#[derive(Clone)]
struct Svc(Arc<ServerState>);

/// Counts a call as cancelled if dropped before `done()`.
struct CallGuard(Arc<ServerState>, bool);

impl CallGuard {
    fn new(s: &Arc<ServerState>) -> Self {
        s.started.fetch_add(1, Ordering::SeqCst);
        CallGuard(s.clone(), false)
    }
    fn done(mut self) {
        self.1 = true;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Counts a bidi call's request stream as ended when dropped.
struct InputEnded(Arc<ServerState>);

impl Drop for InputEnded {
    fn drop(&mut self) {
        self.0.bidi_inputs_ended.fetch_add(1, Ordering::SeqCst);
    }
}

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Svc {
    async fn unary(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        self.record_peer("unary", &req);
        let guard = CallGuard::new(&self.0);
        let msg = req.into_inner();
        if msg.text == "fail" {
            guard.done();
            let mut md = tonic::metadata::MetadataMap::new();
            md.insert("x-weft-test", MetadataValue::from_static("trailer-value"));
            return Err(Status::with_metadata(
                tonic::Code::ResourceExhausted,
                "quota spent: ünïcode ✓ 100%",
                md,
            ));
        }
        if msg.text == "hang" {
            std::future::pending::<()>().await;
        }
        if let Some(ms) = msg.text.strip_prefix("sleep:") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        }
        guard.done();
        Ok(Response::new(msg))
    }

    type ServerStreamStream = MsgStream;

    async fn server_stream(
        &self,
        req: Request<StreamReq>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        self.record_peer("server_stream", &req);
        let r = req.into_inner();
        let state = self.0.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let guard = CallGuard::new(&state);
            for i in 0..r.count {
                if r.fail_after > 0 && i == r.fail_after {
                    let mut md = tonic::metadata::MetadataMap::new();
                    md.insert("x-weft-test", MetadataValue::from_static("after-data"));
                    let status = Status::with_metadata(
                        tonic::Code::Aborted,
                        format!("stopped after {i} messages ✓"),
                        md,
                    );
                    let _ = tx.send(Err(status)).await;
                    guard.done();
                    return;
                }
                if r.interval_ms > 0 && i > 0 {
                    tokio::time::sleep(Duration::from_millis(r.interval_ms)).await;
                }
                let m = Msg {
                    payload: vec![b'x'; r.size as usize],
                    text: String::new(),
                    count: u64::from(i),
                };
                if tx.send(Ok(m)).await.is_err() {
                    return; // the client went away: guard counts a cancel
                }
            }
            state.completed_streams.fetch_add(1, Ordering::SeqCst);
            guard.done();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn client_stream(&self, req: Request<Streaming<Msg>>) -> Result<Response<Msg>, Status> {
        self.record_peer("client_stream", &req);
        let guard = CallGuard::new(&self.0);
        let mut s = req.into_inner();
        let (mut count, mut bytes) = (0u64, 0usize);
        while let Some(m) = s.message().await? {
            self.0.client_stream_messages.fetch_add(1, Ordering::SeqCst);
            count += 1;
            bytes += m.payload.len();
        }
        guard.done();
        Ok(Response::new(Msg {
            payload: Vec::new(),
            text: format!("{bytes}"),
            count,
        }))
    }

    type BidiStream = MsgStream;

    async fn bidi(
        &self,
        req: Request<Streaming<Msg>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        self.record_peer("bidi", &req);
        let state = self.0.clone();
        let mut input = req.into_inner();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let guard = CallGuard::new(&state);
            let _ended = InputEnded(state.clone());
            while let Some(m) = input.next().await {
                match m {
                    Ok(m) => {
                        if tx.send(Ok(m)).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
            guard.done();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Starts the tonic server on `127.0.0.1:0`.
pub async fn server() -> (SocketAddr, Arc<ServerState>) {
    server_on("127.0.0.1:0".parse().unwrap()).await
}

/// Starts the tonic server on `addr`.
pub async fn server_on(addr: SocketAddr) -> (SocketAddr, Arc<ServerState>) {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = l.local_addr().unwrap();
    let state = Arc::new(ServerState::default());
    let svc = EchoServer::new(Svc(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .max_concurrent_streams(4096)
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(l))
            .await
            .unwrap();
    });
    (addr, state)
}

/// `per_client` unary calls on each of `clients` channels at once, through `via` to
/// `authority`; every call must succeed.
pub async fn unary_calls(via: SocketAddr, authority: &str, clients: usize, per_client: usize) {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let authority = authority.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = client(via, &authority).await;
            for _ in 0..per_client {
                let msg = Msg {
                    text: "split".into(),
                    ..Default::default()
                };
                c.unary(msg).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// A client that dials `via` (a proxy's outbound listener) and names `authority` in every call.
pub async fn client(via: SocketAddr, authority: &str) -> EchoClient<tonic::transport::Channel> {
    let ch = Endpoint::from_shared(format!("http://{via}"))
        .unwrap()
        .origin(format!("http://{authority}").parse().unwrap())
        .connect()
        .await
        .unwrap();
    EchoClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// What one round of the four call shapes returned.
#[derive(Debug, PartialEq, Eq)]
pub struct FourShapes {
    /// The unary call's echoed text (`hello`).
    pub unary: String,
    /// Messages the server stream delivered (5 asked).
    pub server_stream: u64,
    /// Messages and bytes the client stream delivered (4 of 16 bytes sent).
    pub client_stream: (u64, String),
    /// The bidi call's echoes, each awaited before the next is sent (`m0`, `m1`, `m2`).
    pub bidi: Vec<String>,
}

impl FourShapes {
    /// What a correct relay returns.
    pub fn expected() -> FourShapes {
        FourShapes {
            unary: "hello".into(),
            server_stream: 5,
            client_stream: (4, "64".into()),
            bidi: vec!["m0".into(), "m1".into(), "m2".into()],
        }
    }
}

/// Makes one call of each shape (unary, server streaming, client streaming, lock-step bidi);
/// the first failure is returned with the shape it happened in.
pub async fn four_shapes(
    c: &mut EchoClient<tonic::transport::Channel>,
) -> Result<FourShapes, String> {
    let msg = |text: &str| Msg {
        payload: vec![7; 16],
        text: text.into(),
        count: 0,
    };
    let unary = c
        .unary(msg("hello"))
        .await
        .map_err(|e| format!("unary: {e}"))?
        .into_inner()
        .text;
    let mut s = c
        .server_stream(StreamReq {
            count: 5,
            size: 16,
            interval_ms: 0,
            fail_after: 0,
        })
        .await
        .map_err(|e| format!("server stream: {e}"))?
        .into_inner();
    let mut server_stream = 0;
    while s
        .message()
        .await
        .map_err(|e| format!("server stream: {e}"))?
        .is_some()
    {
        server_stream += 1;
    }
    let r = c
        .client_stream(futures_util::stream::iter((0..4).map(move |_| msg(""))))
        .await
        .map_err(|e| format!("client stream: {e}"))?
        .into_inner();
    let (tx, rx) = mpsc::channel(1);
    let mut out = c
        .bidi(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("bidi: {e}"))?
        .into_inner();
    let mut bidi = Vec::new();
    for i in 0..3 {
        tx.send(msg(&format!("m{i}")))
            .await
            .map_err(|_| "bidi: the request stream closed".to_string())?;
        // Each echo must come back before the next is sent: a relay that buffered would stall.
        let m = tokio::time::timeout(Duration::from_secs(5), out.message())
            .await
            .map_err(|_| "bidi: no echo within 5 s".to_string())?
            .map_err(|e| format!("bidi: {e}"))?
            .ok_or("bidi: ended early")?;
        bidi.push(m.text);
    }
    drop(tx);
    if out
        .message()
        .await
        .map_err(|e| format!("bidi: {e}"))?
        .is_some()
    {
        return Err("bidi: more than was sent".into());
    }
    Ok(FourShapes {
        unary,
        server_stream,
        client_stream: (r.count, r.text),
        bidi,
    })
}
