//! Partitions on loopback: a TCP proxy in front of every node's peer port that a test can cut,
//! delay or make one-way, per directed link between two nodes.
//!
//! Each node listens for peers on its own loopback IP (127.0.0.11, .12, ...) and advertises
//! its proxy's address instead (`-raft-advertise`). A node's outgoing peer connections leave
//! from its listener's IP, so the proxy in front of node B knows from the source IP which node
//! a connection comes from, and applies the state of the link A→B. A link is directed by who
//! opens the connection: cutting A→B stops A's requests to B (heartbeats, appends, votes,
//! forwarded writes), while B's requests to A and A's answers to them still flow.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The state of one directed link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Up,
    /// New connections are closed at once and open ones are shut down.
    Cut,
    /// Every chunk is held this long before it is passed on (each way).
    Delay(Duration),
}

struct Conn {
    id: u64,
    from: usize,
    to: usize,
    streams: [TcpStream; 2],
}

struct Inner {
    links: Mutex<HashMap<(usize, usize), Link>>,
    conns: Mutex<Vec<Conn>>,
    next_conn: AtomicU64,
    sources: HashMap<IpAddr, usize>,
    stop: AtomicBool,
    /// Connections refused or shut down because their link was cut.
    dropped: AtomicU64,
}

impl Inner {
    fn link(&self, from: usize, to: usize) -> Link {
        *self
            .links
            .lock()
            .unwrap()
            .get(&(from, to))
            .unwrap_or(&Link::Up)
    }
}

/// The proxies of a cluster of `n` nodes.
pub struct Net {
    n: usize,
    inner: Arc<Inner>,
    listeners: Vec<JoinHandle<()>>,
    /// Where each node's proxy listens (the address the node advertises).
    pub proxy_addrs: Vec<SocketAddr>,
}

/// The loopback IP node `i` (0-based) listens for peers on and connects from.
pub fn node_ip(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 11 + i as u8])
}

impl Net {
    /// Starts one proxy per node, forwarding to `targets[i]` (node i's real peer listener).
    pub fn start(targets: &[SocketAddr]) -> Net {
        let n = targets.len();
        let inner = Arc::new(Inner {
            links: Mutex::new(HashMap::new()),
            conns: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(0),
            sources: (0..n).map(|i| (node_ip(i), i)).collect(),
            stop: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        let mut listeners = Vec::new();
        let mut proxy_addrs = Vec::new();
        for (to, target) in targets.iter().copied().enumerate() {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
            l.set_nonblocking(true).expect("nonblocking proxy");
            proxy_addrs.push(l.local_addr().expect("proxy addr"));
            let inner = inner.clone();
            listeners.push(std::thread::spawn(move || {
                accept_loop(l, to, target, inner)
            }));
        }
        Net {
            n,
            inner,
            listeners,
            proxy_addrs,
        }
    }

    pub fn set(&self, from: usize, to: usize, link: Link) {
        self.inner.links.lock().unwrap().insert((from, to), link);
        if link == Link::Cut {
            let conns = self.inner.conns.lock().unwrap();
            for c in conns.iter().filter(|c| c.from == from && c.to == to) {
                for s in &c.streams {
                    let _ = s.shutdown(Shutdown::Both);
                }
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Cuts every link between a node of one group and a node of another, both ways.
    pub fn split(&self, groups: &[&[usize]]) {
        for (gi, a) in groups.iter().enumerate() {
            for (gj, b) in groups.iter().enumerate() {
                if gi != gj {
                    for &x in a.iter() {
                        for &y in b.iter() {
                            self.set(x, y, Link::Cut);
                        }
                    }
                }
            }
        }
    }

    /// Cuts `node` off from every other node, both ways.
    pub fn isolate(&self, node: usize) {
        let rest: Vec<usize> = (0..self.n).filter(|&i| i != node).collect();
        self.split(&[&[node], &rest]);
    }

    /// Cuts only what `node` sends: its requests to the others never arrive, theirs to it do.
    pub fn mute(&self, node: usize) {
        for other in (0..self.n).filter(|&i| i != node) {
            self.set(node, other, Link::Cut);
        }
    }

    /// Delays every link by `d` each way.
    pub fn delay_all(&self, d: Duration) {
        for a in 0..self.n {
            for b in (0..self.n).filter(|&b| b != a) {
                self.set(a, b, Link::Delay(d));
            }
        }
    }

    /// Every link up again.
    pub fn heal(&self) {
        self.inner.links.lock().unwrap().clear();
    }

    /// How many connections were refused or shut down by a cut so far.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        for c in self.inner.conns.lock().unwrap().iter() {
            for s in &c.streams {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        for l in self.listeners.drain(..) {
            let _ = l.join();
        }
    }
}

fn accept_loop(l: TcpListener, to: usize, target: SocketAddr, inner: Arc<Inner>) {
    while !inner.stop.load(Ordering::Relaxed) {
        let (client, peer) = match l.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        let _ = client.set_nonblocking(false);
        // Connections from outside the cluster (a test's own client) always pass.
        let from = inner.sources.get(&peer.ip()).copied().unwrap_or(usize::MAX);
        if inner.link(from, to) == Link::Cut {
            inner.dropped.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        inner.conns.lock().unwrap().push(Conn {
            id,
            from,
            to,
            streams: [c2, s2],
        });
        let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let up = inner.clone();
        std::thread::spawn(move || pump(client, server, from, to, id, up));
        let down = inner.clone();
        std::thread::spawn(move || pump(s3, c3, from, to, id, down));
    }
}

/// Copies `src` to `dst` until either closes or the link is cut, honouring delays.
fn pump(
    mut src: TcpStream,
    mut dst: TcpStream,
    from: usize,
    to: usize,
    id: u64,
    inner: Arc<Inner>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match inner.link(from, to) {
            Link::Cut => break,
            Link::Delay(d) => std::thread::sleep(d),
            Link::Up => {}
        }
        if dst.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = src.shutdown(Shutdown::Both);
    let _ = dst.shutdown(Shutdown::Both);
    inner.conns.lock().unwrap().retain(|c| c.id != id);
}
