//! A small MQTT 3.1.1 broker for tests (feature `fake`), on loopback with free ports: CONNECT
//! with an optional login, SUBSCRIBE with `+`/`#` filters, PUBLISH routed at QoS 0 (QoS 1 is
//! acknowledged), PING, and an optional TLS listener. A second, plain listener without a login
//! serves the simulated printers. It can be stopped and restarted on the same ports to test
//! reconnects. Retained messages are kept and sent to new subscribers; a client's last will
//! is published when its connection ends without a DISCONNECT. Frames are rumqttc's own
//! codec; no sessions.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{matches, Error as FrameError, QoS};
use rumqttc::Publish;
use rustls::ServerConfig;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Largest frame the broker accepts or forwards.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

#[derive(Clone, Default)]
pub struct BrokerConfig {
    /// Serve the main port over TLS with this config.
    pub tls: Option<Arc<ServerConfig>>,
    /// Username and password the main port requires.
    pub login: Option<(String, String)>,
}

struct Sub {
    conn: u64,
    filter: String,
    tx: mpsc::Sender<Publish>,
}

#[derive(Default)]
struct Routes {
    subs: Mutex<Vec<Sub>>,
    next: AtomicU64,
    /// Every message received from a client, oldest first (bounded), for tests to inspect.
    log: Mutex<std::collections::VecDeque<(String, String)>>,
    /// The last retained message of each topic.
    retained: Mutex<std::collections::BTreeMap<String, Publish>>,
}

/// How many received messages the broker remembers.
const LOG_LIMIT: usize = 10_000;

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Sub>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn route(&self, p: &Publish) {
        {
            let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            if log.len() == LOG_LIMIT {
                log.pop_front();
            }
            log.push_back((
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            ));
        }
        if p.retain {
            let mut kept = self.retained.lock().unwrap_or_else(|e| e.into_inner());
            if p.payload.is_empty() {
                kept.remove(&p.topic);
            } else {
                kept.insert(p.topic.clone(), p.clone());
            }
        }
        for s in self.lock().iter().filter(|s| matches(&p.topic, &s.filter)) {
            let mut copy = Publish::from_bytes(p.topic.clone(), QoS::AtMostOnce, p.payload.clone());
            copy.retain = false;
            let _ = s.tx.try_send(copy);
        }
    }
}

pub struct FakeBroker {
    /// The main port (TLS and login if configured).
    pub port: u16,
    /// Plain MQTT, no login: for the simulated printers.
    pub plain_port: u16,
    cfg: BrokerConfig,
    routes: Arc<Routes>,
    stop: CancellationToken,
}

async fn listen(port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(64)
}

impl FakeBroker {
    /// Starts on free loopback ports. Must be called inside a Tokio runtime.
    pub async fn start(cfg: BrokerConfig) -> std::io::Result<FakeBroker> {
        let main = listen(0).await?;
        let plain = listen(0).await?;
        let mut b = FakeBroker {
            port: main.local_addr()?.port(),
            plain_port: plain.local_addr()?.port(),
            cfg,
            routes: Arc::new(Routes::default()),
            stop: CancellationToken::new(),
        };
        b.serve(main, plain);
        Ok(b)
    }

    fn serve(&mut self, main: TcpListener, plain: TcpListener) {
        self.stop = CancellationToken::new();
        let secured = (self.cfg.tls.clone(), self.cfg.login.clone());
        tokio::spawn(accept(
            main,
            secured,
            self.routes.clone(),
            self.stop.clone(),
        ));
        tokio::spawn(accept(
            plain,
            (None, None),
            self.routes.clone(),
            self.stop.clone(),
        ));
    }

    /// The messages clients published, as (topic, payload), oldest first.
    pub fn published(&self) -> Vec<(String, String)> {
        let log = self.routes.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().cloned().collect()
    }

    /// Closes the listeners and every connection, like a broker that went away.
    pub fn stop(&self) {
        self.stop.cancel();
        self.routes.lock().clear();
    }

    /// Listens again on the same ports, once the old listeners have closed (bounded wait).
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        let mut tries = 0;
        let (main, plain) = loop {
            match (listen(self.port).await, listen(self.plain_port).await) {
                (Ok(m), Ok(p)) => break (m, p),
                (Err(e), _) | (_, Err(e)) if tries >= 100 => return Err(e),
                _ => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        };
        self.serve(main, plain);
        Ok(())
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

type Secured = (Option<Arc<ServerConfig>>, Option<(String, String)>);

async fn accept(l: TcpListener, secured: Secured, routes: Arc<Routes>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = l.accept() => match r { Ok(s) => s, Err(_) => continue },
        };
        let _ = stream.set_nodelay(true);
        let (routes, stop, login) = (routes.clone(), stop.clone(), secured.1.clone());
        match secured.0.clone() {
            Some(tls) => {
                tokio::spawn(async move {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    if let Ok(Ok(s)) = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        serve(s, login, routes, stop).await;
                    }
                });
            }
            None => {
                tokio::spawn(serve(stream, login, routes, stop));
            }
        }
    }
}

/// The next frame; `None` when the peer closed or sent garbage.
async fn read_packet<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> Option<Packet> {
    loop {
        match Packet::read(buf, MAX_FRAME) {
            Ok(p) => return Some(p),
            Err(FrameError::InsufficientBytes(_)) => match rd.read_buf(buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
            Err(_) => return None,
        }
    }
}

async fn write_packet<W: AsyncWrite + Unpin>(wr: &mut W, p: Packet) -> bool {
    let mut out = BytesMut::new();
    if p.write(&mut out, MAX_FRAME).is_err() {
        return true; // too large to forward: dropped, like a broker's limit
    }
    wr.write_all(&out).await.is_ok() && wr.flush().await.is_ok()
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    login: Option<(String, String)>,
    routes: Arc<Routes>,
    stop: CancellationToken,
) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = BytesMut::with_capacity(8192);
    let connect = tokio::select! {
        _ = stop.cancelled() => return,
        p = read_packet(&mut rd, &mut buf) => match p { Some(Packet::Connect(c)) => c, _ => return },
    };
    if let Some((user, pass)) = &login {
        let ok = connect
            .login
            .as_ref()
            .is_some_and(|l| l.username == *user && l.password == *pass);
        if !ok {
            let nack = ConnAck::new(ConnectReturnCode::BadUserNamePassword, false);
            write_packet(&mut wr, Packet::ConnAck(nack)).await;
            return;
        }
    }
    if !write_packet(
        &mut wr,
        Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
    )
    .await
    {
        return;
    }
    let conn = routes.next.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Publish>(1024);
    // The will goes out unless the client says goodbye (or the broker itself stops).
    let mut will = connect.last_will.clone();
    loop {
        let ok = tokio::select! {
            _ = stop.cancelled() => break,
            Some(p) = rx.recv() => write_packet(&mut wr, Packet::Publish(p)).await,
            p = read_packet(&mut rd, &mut buf) => match p {
                Some(Packet::Disconnect) => {
                    will = None;
                    break;
                }
                None => break,
                Some(Packet::Publish(p)) => {
                    routes.route(&p);
                    p.qos == QoS::AtMostOnce || write_packet(&mut wr, Packet::PubAck(PubAck::new(p.pkid))).await
                }
                Some(Packet::Subscribe(s)) => {
                    let mut codes = Vec::new();
                    {
                        let mut subs = routes.lock();
                        for f in &s.filters {
                            subs.push(Sub { conn, filter: f.path.clone(), tx: tx.clone() });
                            codes.push(SubscribeReasonCode::Success(QoS::AtMostOnce));
                        }
                    }
                    let acked = write_packet(&mut wr, Packet::SubAck(SubAck::new(s.pkid, codes))).await;
                    let kept: Vec<Publish> = routes
                        .retained
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .values()
                        .filter(|p| s.filters.iter().any(|f| matches(&p.topic, &f.path)))
                        .cloned()
                        .collect();
                    for mut p in kept {
                        p.qos = QoS::AtMostOnce;
                        p.retain = true;
                        let _ = tx.try_send(p);
                    }
                    acked
                }
                Some(Packet::Unsubscribe(u)) => {
                    routes.lock().retain(|s| s.conn != conn || !u.topics.contains(&s.filter));
                    write_packet(&mut wr, Packet::UnsubAck(UnsubAck::new(u.pkid))).await
                }
                Some(Packet::PingReq) => write_packet(&mut wr, Packet::PingResp).await,
                Some(_) => true,
            },
        };
        if !ok {
            break;
        }
    }
    routes.lock().retain(|s| s.conn != conn);
    if let Some(w) = will.filter(|_| !stop.is_cancelled()) {
        let mut p = Publish::from_bytes(w.topic, QoS::AtMostOnce, w.message);
        p.retain = w.retain;
        routes.route(&p);
    }
}
