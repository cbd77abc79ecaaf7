//! A Bambu Lab printer in LAN mode, as a pure protocol engine. The printer is the MQTT broker
//! (TLS, user `bblp`, password = the LAN access code); reports arrive on
//! `device/{serial}/report`, requests go to `device/{serial}/request` as
//! `{"print": {"sequence_id": "<n>", "command": ...}}`. A `pushall` after every (re)connect and
//! after a silent spell refreshes the merged state (`bambu_report`); the printer echoes each
//! command with a `result`, matched by `sequence_id`. No I/O here.

use super::bambu_report::BambuReport;
use super::mqtt_driver::{Cmd, Link, NetProtocol, Note, Outgoing};
use super::net_job::PrinterPhase;
use super::{DriverOptions, Secret, Telemetry};
use rumqttc::{TlsConfiguration, Transport};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the connection is made: TLS to the printer itself, verified against the CA with
/// CN = serial (see `bambu_tls`).
pub(super) fn link(
    host: &str,
    port: u16,
    serial: &str,
    access_code: Option<Secret>,
    ca_file: Option<PathBuf>,
    insecure_tls: bool,
    ftps_port: u16,
) -> Result<Link, String> {
    let code = access_code.filter(|c| !c.0.is_empty()).ok_or(
        "connection.access_code is required: the LAN access code shown on the printer's screen",
    )?;
    let (config, diag) = super::bambu_tls::client_config(serial, ca_file.as_deref(), insecure_tls)?;
    if insecure_tls {
        tracing::warn!(
            serial,
            host,
            "INSECURE: TLS certificate checks are OFF for this Bambu printer (insecure_tls = true); \
             anyone on the network can impersonate it and read its access code"
        );
    }
    let config = Arc::new(config);
    let mut link = Link::new(&format!("raft3d-{serial}"), host, port);
    link.ftps = Some(super::ftps::FtpsTarget {
        host: host.to_string(),
        port: ftps_port,
        tls: config.clone(),
        user: "bblp".into(),
        password: code.0.clone(),
    });
    link.options
        .set_credentials("bblp", code.0)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    link.tls_diag = Some(diag);
    Ok(link)
}

pub(super) struct Bambu {
    serial: String,
    seq: u64,
    /// Commands awaiting the printer's echo, by `sequence_id`.
    pending: HashMap<String, (Cmd, Instant)>,
    report: BambuReport,
    last_report: Instant,
    /// A `pushall` sent because the stream went silent.
    probed_at: Option<Instant>,
    silence: Duration,
    command_timeout: Duration,
}

const DEVELOPER_MODE_HINT: &str = "recent firmware accepts control commands over LAN only in \
     LAN-only mode with Developer Mode enabled (printer settings)";

/// `/sdcard/<name>` unless the job names an absolute path on the printer.
fn printer_path(file: &str) -> String {
    if file.starts_with('/') {
        file.to_string()
    } else {
        format!("/sdcard/{file}")
    }
}

impl Bambu {
    pub fn new(serial: &str, o: &DriverOptions) -> Bambu {
        Bambu {
            serial: serial.to_string(),
            seq: 0,
            pending: HashMap::new(),
            report: BambuReport::default(),
            last_report: Instant::now(),
            probed_at: None,
            silence: o.net_report_silence,
            command_timeout: o.net_command_timeout,
        }
    }

    fn request(
        &mut self,
        kind: &str,
        mut body: serde_json::Map<String, Value>,
    ) -> (String, Outgoing) {
        self.seq += 1;
        let seq = self.seq.to_string();
        body.insert("sequence_id".into(), json!(seq));
        let payload = json!({ kind: body }).to_string().into_bytes();
        let out = Outgoing {
            topic: format!("device/{}/request", self.serial),
            payload,
        };
        (seq, out)
    }

    fn pushall(&mut self) -> Outgoing {
        let body = json!({"command": "pushall", "version": 1, "push_target": 1});
        self.request("pushing", body.as_object().cloned().unwrap_or_default())
            .1
    }

    /// The request body of `cmd` (`print` kind).
    fn body(cmd: Cmd, file: &str) -> Result<Value, String> {
        Ok(match cmd {
            Cmd::Pause => json!({"command": "pause", "param": ""}),
            Cmd::Resume => json!({"command": "resume", "param": ""}),
            Cmd::Stop => json!({"command": "stop", "param": ""}),
            Cmd::Start => {
                let path = printer_path(file.trim());
                let lower = path.to_ascii_lowercase();
                if lower == "/sdcard/" {
                    return Err("the job's filepath is empty".into());
                }
                if lower.ends_with(".3mf") {
                    let base = path.rsplit('/').next().unwrap_or(&path);
                    let name = base
                        .strip_suffix(".3mf")
                        .or_else(|| base.strip_suffix(".3MF"))
                        .unwrap_or(base);
                    let name = name.strip_suffix(".gcode").unwrap_or(name);
                    json!({"command": "project_file", "param": "Metadata/plate_1.gcode",
                        "url": format!("file://{path}"), "subtask_name": name,
                        "project_id": "0", "profile_id": "0", "task_id": "0", "subtask_id": "0",
                        "use_ams": false, "timelapse": false, "bed_leveling": true,
                        "flow_cali": false, "vibration_cali": false, "layer_inspect": false,
                        "bed_type": "auto"})
                } else if lower.ends_with(".gcode") {
                    json!({"command": "gcode_file", "param": path})
                } else {
                    return Err(format!(
                        "cannot print '{file}' on a Bambu printer: a .gcode or .3mf file on its SD card is needed"
                    ));
                }
            }
        })
    }

    fn on_print(&mut self, print: &serde_json::Map<String, Value>) -> Vec<Note> {
        let command = print.get("command").and_then(Value::as_str).unwrap_or("");
        if command == "push_status" {
            self.report.merge(print);
            return vec![];
        }
        let seq = match print.get("sequence_id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return vec![],
        };
        let Some(result) = print.get("result").and_then(Value::as_str) else {
            return vec![]; // the echo of a request, without a verdict yet
        };
        let Some((cmd, _)) = self.pending.remove(&seq) else {
            return vec![];
        };
        if result.eq_ignore_ascii_case("success") {
            return vec![Note::Answer {
                cmd,
                result: Ok(()),
            }];
        }
        let reason = print
            .get("reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
            .unwrap_or("no reason given");
        vec![Note::Answer {
            cmd,
            result: Err(format!(
                "the printer rejected the {command} command ({result}: {reason}); {DEVELOPER_MODE_HINT}"
            )),
        }]
    }
}

impl NetProtocol for Bambu {
    fn subscriptions(&self) -> Vec<String> {
        vec![format!("device/{}/report", self.serial)]
    }

    fn on_connected(&mut self, now: Instant) -> Vec<Outgoing> {
        self.last_report = now;
        self.probed_at = None;
        self.pending.clear();
        vec![self.pushall()]
    }

    fn on_message(&mut self, topic: &str, payload: &[u8], now: Instant) -> Vec<Note> {
        self.last_report = now;
        self.probed_at = None;
        let v: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                return vec![Note::Problem(format!(
                    "malformed report on {topic} ({} bytes): {e}; ignored",
                    payload.len()
                ))]
            }
        };
        match v.get("print") {
            Some(Value::Object(print)) => self.on_print(print),
            Some(_) => vec![Note::Problem(format!(
                "malformed report on {topic}: `print` is not an object; ignored"
            ))],
            None => vec![], // info, system, ... reports
        }
    }

    fn command(&mut self, cmd: Cmd, file: &str, now: Instant) -> Result<Vec<Outgoing>, String> {
        let body = Self::body(cmd, file)?;
        let (seq, out) = self.request("print", body.as_object().cloned().unwrap_or_default());
        self.pending.insert(seq, (cmd, now));
        Ok(vec![out])
    }

    fn on_tick(&mut self, now: Instant) -> (Vec<Outgoing>, Vec<Note>) {
        let mut notes = Vec::new();
        let timeout = self.command_timeout;
        self.pending.retain(|seq, (cmd, at)| {
            let keep = now.duration_since(*at) < timeout;
            if !keep {
                notes.push(Note::Problem(format!(
                    "the printer did not confirm {cmd:?} (sequence_id {seq}) within {} s",
                    timeout.as_secs().max(1)
                )));
            }
            keep
        });
        let quiet = now.duration_since(self.last_report);
        let mut out = Vec::new();
        match self.probed_at {
            None if quiet >= self.silence => {
                self.probed_at = Some(now);
                out.push(self.pushall());
            }
            Some(at) if now.duration_since(at) >= self.silence => {
                notes.push(Note::Reconnect(format!(
                    "no report from the printer for {} s, even after pushall; reconnecting",
                    quiet.as_secs()
                )));
                self.probed_at = None;
                self.last_report = now;
            }
            _ => {}
        }
        (out, notes)
    }

    fn phase(&self) -> Option<PrinterPhase> {
        self.report.phase()
    }

    fn is_file(&self, file: &str) -> Option<bool> {
        self.report.is_file(file)
    }

    fn show(&self, tel: &mut Telemetry) {
        tel.firmware = Some(format!("Bambu Lab ({})", self.serial));
        if !self.report.is_empty() {
            self.report.show(tel);
        }
    }

    fn login_hint(&self) -> String {
        "the LAN access code is wrong: check connection.access_code against the printer's screen \
         (it changes when LAN mode is toggled)"
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> (Bambu, Instant) {
        let o = DriverOptions {
            net_report_silence: Duration::from_secs(10),
            ..DriverOptions::default()
        };
        (Bambu::new("01S00C123400001", &o), Instant::now())
    }

    fn body(out: &Outgoing) -> Value {
        serde_json::from_slice(&out.payload).unwrap()
    }

    #[test]
    fn start_commands_follow_the_file_kind() {
        let (mut b, t0) = engine();
        let out = b.command(Cmd::Start, "cube.gcode", t0).unwrap();
        assert_eq!(out[0].topic, "device/01S00C123400001/request");
        let v = body(&out[0]);
        assert_eq!(v["print"]["command"], "gcode_file");
        assert_eq!(v["print"]["param"], "/sdcard/cube.gcode");
        assert_eq!(v["print"]["sequence_id"], "1");
        let v = body(&b.command(Cmd::Start, "Benchy.3mf", t0).unwrap()[0]);
        assert_eq!(v["print"]["command"], "project_file");
        assert_eq!(v["print"]["url"], "file:///sdcard/Benchy.3mf");
        assert_eq!(v["print"]["subtask_name"], "Benchy");
        assert_eq!(v["print"]["param"], "Metadata/plate_1.gcode");
        let e = b.command(Cmd::Start, "notes.txt", t0).err().unwrap();
        assert!(e.contains(".gcode or .3mf"), "{e}");
        assert_eq!(
            body(&b.command(Cmd::Stop, "", t0).unwrap()[0])["print"]["command"],
            "stop"
        );
    }

    #[test]
    fn results_are_matched_by_sequence_id() {
        let (mut b, t0) = engine();
        b.command(Cmd::Pause, "", t0).unwrap();
        let echo = json!({"print": {"command": "pause", "sequence_id": "1", "param": ""}});
        assert!(b
            .on_message("r", echo.to_string().as_bytes(), t0)
            .is_empty());
        let other =
            json!({"print": {"command": "pause", "sequence_id": "77", "result": "success"}});
        assert!(b
            .on_message("r", other.to_string().as_bytes(), t0)
            .is_empty());
        let fail = json!({"print": {"command": "pause", "sequence_id": 1, "result": "failed", "reason": "mqtt message verify failed"}});
        match &b.on_message("r", fail.to_string().as_bytes(), t0)[..] {
            [Note::Answer {
                cmd: Cmd::Pause,
                result: Err(e),
            }] => {
                assert!(
                    e.contains("verify failed") && e.contains("Developer Mode"),
                    "{e}"
                )
            }
            n => panic!("{n:?}"),
        }
        b.command(Cmd::Resume, "", t0).unwrap();
        let (_, notes) = b.on_tick(t0 + Duration::from_secs(10));
        assert!(matches!(&notes[..], [Note::Problem(p)] if p.contains("did not confirm Resume")));
    }

    #[test]
    fn a_silent_stream_gets_pushall_then_a_reconnect() {
        let (mut b, t0) = engine();
        assert_eq!(
            body(&b.on_connected(t0)[0])["pushing"]["command"],
            "pushall"
        );
        let (out, notes) = b.on_tick(t0 + Duration::from_secs(5));
        assert!(out.is_empty() && notes.is_empty());
        let (out, _) = b.on_tick(t0 + Duration::from_secs(10));
        assert_eq!(body(&out[0])["pushing"]["command"], "pushall");
        let (out, notes) = b.on_tick(t0 + Duration::from_secs(20));
        assert!(out.is_empty());
        assert!(matches!(&notes[..], [Note::Reconnect(_)]));
        let status = json!({"print": {"command": "push_status", "gcode_state": "IDLE"}});
        b.on_message(
            "r",
            status.to_string().as_bytes(),
            t0 + Duration::from_secs(25),
        );
        assert_eq!(b.phase(), Some(PrinterPhase::Idle));
        let notes = b.on_message("r", b"\xff garbage", t0);
        assert!(matches!(&notes[..], [Note::Problem(p)] if p.contains("malformed")));
    }
}
