//! A Bambu-style implicit FTPS server for tests (feature `fake`): TLS from the first byte on a
//! free loopback port, login `bblp` + access code, `PBSZ`/`PROT P`/`TYPE I`/`PASV`/`STOR`/
//! `QUIT`. Like printers that insist on it, a data connection must resume the control
//! connection's TLS session, or the transfer is refused with 522. Stored files stay in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Store {
    files: HashMap<String, Vec<u8>>,
    refused_without_reuse: u32,
}

pub struct FakeFtps {
    pub port: u16,
    store: Arc<Mutex<Store>>,
    stop: CancellationToken,
}

impl FakeFtps {
    /// Serves with `tls` (the printer's certificate) and password `code`.
    pub async fn start(tls: Arc<ServerConfig>, code: &str) -> std::io::Result<FakeFtps> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let port = l.local_addr()?.port();
        let store = Arc::new(Mutex::new(Store::default()));
        let stop = CancellationToken::new();
        let acceptor = TlsAcceptor::from(tls);
        let (s, st, code) = (store.clone(), stop.clone(), code.to_string());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = st.cancelled() => return,
                    c = l.accept() => c,
                };
                let Ok((tcp, _)) = conn else { continue };
                let (a, s, c, st) = (acceptor.clone(), s.clone(), code.clone(), st.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = st.cancelled() => {}
                        _ = session(tcp, a, s, c) => {}
                    }
                });
            }
        });
        Ok(FakeFtps { port, store, stop })
    }

    /// The files uploaded so far, by name.
    pub fn files(&self) -> HashMap<String, Vec<u8>> {
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .files
            .clone()
    }

    /// Transfers refused because the data connection did not resume the session.
    pub fn refused_without_reuse(&self) -> u32 {
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .refused_without_reuse
    }
}

impl Drop for FakeFtps {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn session(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    store: Arc<Mutex<Store>>,
    code: String,
) -> Option<()> {
    let tls = acceptor.accept(tcp).await.ok()?;
    let mut ctl = BufReader::new(tls);
    ctl.get_mut()
        .write_all(b"220 Raft3D test printer FTPS ready\r\n")
        .await
        .ok()?;
    let mut logged_in = false;
    let mut user_ok = false;
    let mut passive: Option<TcpListener> = None;
    loop {
        let mut line = String::new();
        if ctl.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
        let answer: String = match verb.to_ascii_uppercase().as_str() {
            "USER" => {
                user_ok = arg == "bblp";
                "331 Password required\r\n".into()
            }
            "PASS" => {
                logged_in = user_ok && arg == code;
                if logged_in {
                    "230 Logged in\r\n".into()
                } else {
                    "530 Login incorrect\r\n".into()
                }
            }
            _ if !logged_in => "530 Please login\r\n".into(),
            "PBSZ" => "200 PBSZ=0\r\n".into(),
            "PROT" => "200 Protection set to Private\r\n".into(),
            "TYPE" => "200 Binary mode\r\n".into(),
            "PASV" => {
                let l = TcpListener::bind("127.0.0.1:0").await.ok()?;
                let p = l.local_addr().ok()?.port();
                passive = Some(l);
                format!(
                    "227 Entering Passive Mode (127,0,0,1,{},{})\r\n",
                    p / 256,
                    p % 256
                )
            }
            "STOR" => {
                let Some(l) = passive.take() else {
                    ctl.get_mut()
                        .write_all(b"425 Use PASV first\r\n")
                        .await
                        .ok()?;
                    continue;
                };
                let (tcp, _) = l.accept().await.ok()?;
                ctl.get_mut()
                    .write_all(b"150 Ok to send data\r\n")
                    .await
                    .ok()?;
                let Ok(mut data) = acceptor.accept(tcp).await else {
                    ctl.get_mut()
                        .write_all(b"522 SSL connection failed\r\n")
                        .await
                        .ok()?;
                    continue;
                };
                let resumed =
                    data.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                if !resumed {
                    store
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .refused_without_reuse += 1;
                    ctl.get_mut()
                        .write_all(b"522 SSL connection failed: session reuse required\r\n")
                        .await
                        .ok()?;
                    continue;
                }
                let mut bytes = Vec::new();
                // A close without close_notify would be a truncated upload.
                if data.read_to_end(&mut bytes).await.is_err() {
                    ctl.get_mut()
                        .write_all(b"426 Transfer aborted\r\n")
                        .await
                        .ok()?;
                    continue;
                }
                let name = arg.trim_start_matches('/').to_string();
                store
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .files
                    .insert(name, bytes);
                "226 Transfer complete\r\n".into()
            }
            "QUIT" => {
                ctl.get_mut().write_all(b"221 Goodbye\r\n").await.ok()?;
                return Some(());
            }
            _ => "502 Command not implemented\r\n".into(),
        };
        ctl.get_mut().write_all(answer.as_bytes()).await.ok()?;
    }
}
