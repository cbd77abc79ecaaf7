//! Upload of a job's file to a Bambu Lab printer over implicit FTPS (TLS from the first byte,
//! port 990, user `bblp`, password = the access code). The data connection resumes the control
//! connection's TLS session (one `ClientConfig`, so one session cache), which printers that
//! insist on session reuse require. Certificates are checked as for MQTT (`bambu_tls`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Where and how to upload.
#[derive(Clone)]
pub struct FtpsTarget {
    pub host: String,
    pub port: u16,
    pub tls: Arc<ClientConfig>,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for FtpsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FtpsTarget({}:{})", self.host, self.port)
    }
}

/// No single step (connect, a reply, a chunk written) may take longer.
const STEP: Duration = Duration::from_secs(30);
const CHUNK: usize = 64 * 1024;

struct Control {
    stream: BufReader<TlsStream<TcpStream>>,
    target: String,
}

async fn step<T>(
    what: &str,
    target: &str,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(STEP, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("FTPS {what} with {target} failed: {e}")),
        Err(_) => Err(format!(
            "FTPS {what} with {target}: no answer within {}s",
            STEP.as_secs()
        )),
    }
}

async fn tcp(t: &FtpsTarget, port: u16) -> Result<TcpStream, String> {
    let target = format!("{}:{port}", t.host);
    let tcp = step(
        "connect",
        &target,
        TcpStream::connect((t.host.as_str(), port)),
    )
    .await?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

async fn tls(t: &FtpsTarget, port: u16) -> Result<TlsStream<TcpStream>, String> {
    let target = format!("{}:{port}", t.host);
    let tcp = tcp(t, port).await?;
    wrap(t, tcp, &target).await
}

async fn wrap(
    t: &FtpsTarget,
    tcp: TcpStream,
    target: &str,
) -> Result<TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(t.host.clone())
        .map_err(|e| format!("FTPS: {:?} is not a host name or address: {e}", t.host))?;
    step(
        "TLS handshake",
        target,
        TlsConnector::from(t.tls.clone()).connect(name, tcp),
    )
    .await
}

impl Control {
    /// Reads one reply (multi-line replies end with `NNN `); returns its code and text.
    async fn reply(&mut self) -> Result<(u16, String), String> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = step(
                "reading a reply",
                &self.target,
                self.stream.read_line(&mut line),
            )
            .await?;
            if n == 0 {
                return Err(format!(
                    "FTPS: {} closed the connection{}",
                    self.target,
                    if text.is_empty() {
                        String::new()
                    } else {
                        format!(" after: {}", text.trim())
                    }
                ));
            }
            text.push_str(&line);
            let b = line.as_bytes();
            if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ' {
                let code = line[..3].parse().unwrap_or(0);
                return Ok((code, text.trim().to_string()));
            }
        }
    }

    /// Sends `cmd` and wants a reply code in `ok`; `shown` is what the error names.
    async fn command(&mut self, cmd: &str, shown: &str, ok: &[u16]) -> Result<String, String> {
        let line = format!("{cmd}\r\n");
        step(
            "sending a command",
            &self.target,
            self.stream.get_mut().write_all(line.as_bytes()),
        )
        .await?;
        let (code, text) = self.reply().await?;
        if ok.contains(&code) {
            Ok(text)
        } else {
            Err(format!("FTPS {shown}: the printer answered {text:?}"))
        }
    }
}

/// The port of a `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)` reply.
fn pasv_port(text: &str) -> Option<u16> {
    let inner = text.split('(').nth(1)?.split(')').next()?;
    let n: Vec<u16> = inner
        .split(',')
        .map(|s| s.trim().parse().ok())
        .collect::<Option<_>>()?;
    (n.len() == 6 && n[4] < 256 && n[5] < 256).then(|| n[4] * 256 + n[5])
}

/// Uploads `local` as `remote` (a name in the printer's root, its SD card), calling `progress`
/// with (bytes sent, total) after every chunk.
pub async fn upload(
    t: &FtpsTarget,
    local: &Path,
    remote: &str,
    mut progress: impl FnMut(u64, u64),
) -> Result<(), String> {
    if remote.contains(['\r', '\n']) {
        return Err(format!("FTPS: file name {remote:?} has a line break"));
    }
    let mut file = tokio::fs::File::open(local)
        .await
        .map_err(|e| format!("cannot read {} for upload: {e}", local.display()))?;
    let total = file
        .metadata()
        .await
        .map_err(|e| format!("cannot read {} for upload: {e}", local.display()))?
        .len();
    let target = format!("{}:{}", t.host, t.port);
    let mut c = Control {
        stream: BufReader::new(tls(t, t.port).await?),
        target: target.clone(),
    };
    let (code, text) = c.reply().await?;
    if code != 220 {
        return Err(format!("FTPS: {target} greeted with {text:?}"));
    }
    c.command(&format!("USER {}", t.user), "login", &[331, 230])
        .await?;
    c.command(&format!("PASS {}", t.password), "login", &[230, 202])
        .await
        .map_err(|e| format!("{e}; check connection.access_code"))?;
    c.command("PBSZ 0", "PBSZ", &[200]).await?;
    c.command("PROT P", "PROT", &[200]).await?;
    c.command("TYPE I", "TYPE", &[200]).await?;
    let pasv = c.command("PASV", "PASV", &[227]).await?;
    let port = pasv_port(&pasv).ok_or(format!("FTPS: cannot read the PASV answer {pasv:?}"))?;
    // The printer's own address: the one in the answer may be unreachable behind NAT.
    let raw = tcp(t, port).await?;
    c.command(&format!("STOR {remote}"), "STOR", &[125, 150])
        .await?;
    // TLS on the data connection after the printer said go, resuming the control session.
    let mut data = match wrap(t, raw, &format!("{}:{port}", t.host)).await {
        Ok(d) => d,
        Err(e) => {
            let why = match c.reply().await {
                Ok((_, text)) => format!("{e}; the printer said {text:?}"),
                Err(_) => e,
            };
            return Err(why);
        }
    };
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| format!("cannot read {}: {e}", local.display()))?;
        if n == 0 {
            break;
        }
        step("sending data", &target, data.write_all(&buf[..n])).await?;
        sent += n as u64;
        progress(sent, total);
    }
    step("closing the data connection", &target, data.shutdown()).await?;
    // Read what the printer still sends (TLS session tickets, its close) before closing: a
    // socket closed with unread data resets the connection, and the printer would then see
    // the upload as aborted.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(STEP, data.read_to_end(&mut rest)).await;
    drop(data);
    let (code, text) = c.reply().await?;
    if code != 226 && code != 250 {
        return Err(format!("FTPS STOR {remote}: the printer answered {text:?}"));
    }
    let _ = c.command("QUIT", "QUIT", &[221]).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_ports_are_read_and_junk_refused() {
        assert_eq!(
            pasv_port("227 Entering Passive Mode (192,168,1,51,195,80)"),
            Some(195 * 256 + 80)
        );
        assert_eq!(pasv_port("227 Entering Passive Mode (1,2,3,4,5)"), None);
        assert_eq!(pasv_port("227 (1,2,3,4,300,1)"), None);
        assert_eq!(pasv_port("227 no numbers"), None);
    }
}
