//! The serial transport's life cycle: open the port exclusively (explaining permission and busy
//! errors), run a session on it, and reopen it with a growing delay whenever it goes away.
//! While offline it still answers commands (a Start fails at once). Protocol work is
//! `serial_session`'s; this file never streams.

use super::serial_session::{Session, SessionEnd};
use super::{DriverCommand, DriverCtx, Telemetry};
use std::time::Duration;
use thiserror::Error;
use tokio_serial::{SerialPort, SerialStream};
use tracing::{debug, info, warn};

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OpenError {
    #[error("serial port {port} not found (unplugged? prefer a /dev/serial/by-id/... path)")]
    NotFound { port: String },
    #[error(
        "permission denied opening {port}: add the agent's user to the `dialout` group \
         (`sudo usermod -aG dialout <user>`, then log in again)"
    )]
    PermissionDenied { port: String },
    #[error(
        "serial port {port} is in use by another program (another host, ModemManager, a console?)"
    )]
    Busy { port: String },
    #[error("cannot open serial port {port}: {detail}")]
    Other { port: String, detail: String },
}

impl OpenError {
    /// Telemetry `connection` while this error lasts: a missing port is a disconnected printer,
    /// the rest need a person.
    fn connection(&self) -> &'static str {
        match self {
            OpenError::NotFound { .. } => "disconnected",
            _ => "error",
        }
    }
}

fn classify(port: &str, e: tokio_serial::Error) -> OpenError {
    use std::io::ErrorKind as Io;
    use tokio_serial::ErrorKind as K;
    let port = port.to_string();
    match e.kind {
        K::Io(Io::NotFound) => OpenError::NotFound { port },
        K::Io(Io::PermissionDenied) => OpenError::PermissionDenied { port },
        K::NoDevice => OpenError::Busy { port },
        _ => OpenError::Other {
            port,
            detail: e.description,
        },
    }
}

/// Modem-control ioctls on a pseudo-terminal fail with ENOTTY ("Not a typewriter").
fn is_enotty(e: &tokio_serial::Error) -> bool {
    let d = e.description.to_ascii_lowercase();
    d.contains("typewriter") || d.contains("inappropriate ioctl")
}

/// Open `port` for exclusive use (TIOCEXCL + flock) and raise DTR, which resets most
/// Arduino-style boards; the boot banner follows.
pub fn open_port(port: &str, baud: u32) -> Result<SerialStream, OpenError> {
    let builder = tokio_serial::new(port, baud).exclusive(true);
    let mut stream = SerialStream::open(&builder).map_err(|e| classify(port, e))?;
    match stream.write_data_terminal_ready(true) {
        Ok(()) => {}
        Err(e) if is_enotty(&e) => debug!(port, "no modem lines (pty): DTR not set"),
        Err(e) => warn!(port, error = %e, "cannot set DTR; continuing"),
    }
    Ok(stream)
}

/// The driver task of a serial printer.
pub(super) async fn run(mut ctx: DriverCtx, port: String, baud: u32) {
    info!(printer = %ctx.printer_id, %port, baud, "serial driver started");
    let mut delay = ctx.options.reconnect_min;
    let mut last_problem = String::new();
    loop {
        if ctx.shutdown.is_cancelled() {
            break;
        }
        set_connection(&ctx, "connecting", None);
        let problem = match open_port(&port, baud) {
            Ok(stream) => {
                info!(printer = %ctx.printer_id, %port, "port opened");
                match Session::new(&mut ctx, stream).run().await {
                    SessionEnd::Shutdown => break,
                    SessionEnd::Lost { reason, connected } => {
                        warn!(printer = %ctx.printer_id, %port, %reason, "connection lost");
                        if connected {
                            delay = ctx.options.reconnect_min;
                        }
                        last_problem = reason.clone();
                        set_connection(&ctx, "disconnected", Some(reason.clone()));
                        reason
                    }
                }
            }
            Err(e) => {
                let text = e.to_string();
                if text != last_problem {
                    warn!(printer = %ctx.printer_id, %port, error = %text, "cannot open port; will retry");
                } else {
                    debug!(printer = %ctx.printer_id, %port, error = %text, "cannot open port");
                }
                last_problem = text.clone();
                set_connection(&ctx, e.connection(), Some(text.clone()));
                text
            }
        };
        if !wait_offline(&mut ctx, delay, &problem).await {
            break;
        }
        delay = (delay * 2).min(ctx.options.reconnect_max.max(ctx.options.reconnect_min));
    }
    set_connection(&ctx, "disconnected", None);
    info!(printer = %ctx.printer_id, "serial driver stopped");
}

fn set_connection(ctx: &DriverCtx, connection: &str, error: Option<String>) {
    ctx.telemetry.send_modify(|t: &mut Telemetry| {
        t.connection = connection.to_string();
        if connection != "connected" {
            (t.hotend, t.hotend_target, t.bed, t.bed_target) = (None, None, None, None);
            t.state = "idle".into();
            t.time_left_s = None;
        }
        if error.is_some() {
            t.last_error = error;
        }
    });
}

/// Sleep `delay` before the next attempt, failing Starts meanwhile. False on shutdown.
async fn wait_offline(ctx: &mut DriverCtx, delay: Duration, problem: &str) -> bool {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return false,
            _ = &mut sleep => return true,
            cmd = ctx.commands.recv() => match cmd {
                None => return false,
                Some(DriverCommand::Start(req) | DriverCommand::Attach(req)) => {
                    ctx.fail(&req, format!("printer not connected: {problem}")).await;
                }
                Some(cmd) => debug!(printer = %ctx.printer_id, ?cmd, "offline: command ignored"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_a_pty_exclusively_despite_enotty_on_dtr() {
        let (_master, slave) = SerialStream::pair().expect("pty pair");
        let path = slave.name().expect("slave name");
        drop(slave);
        let port = open_port(&path, 115_200);
        assert!(port.is_ok(), "DTR's ENOTTY is tolerated: {:?}", port.err());
        assert_eq!(
            open_port(&path, 115_200).err(),
            Some(OpenError::Busy { port: path.clone() })
        );
        let gone = open_port("/dev/serial/by-id/no-such-printer", 115_200).err();
        assert!(
            matches!(&gone, Some(e @ OpenError::NotFound { .. }) if e.connection() == "disconnected")
        );
    }

    #[test]
    fn permission_errors_name_the_dialout_group() {
        let e = tokio_serial::Error::new(
            tokio_serial::ErrorKind::Io(std::io::ErrorKind::PermissionDenied),
            "Permission denied",
        );
        let err = classify("/dev/ttyACM0", e);
        assert_eq!(
            err,
            OpenError::PermissionDenied {
                port: "/dev/ttyACM0".into()
            }
        );
        assert!(err.to_string().contains("`dialout` group"), "{err}");
        let enotty = tokio_serial::Error::new(tokio_serial::ErrorKind::Unknown, "Not a typewriter");
        assert!(is_enotty(&enotty));
    }
}
