//! Klipper through Moonraker's MQTT API, as a pure protocol engine: JSON-RPC 2.0 requests on
//! `{instance}/moonraker/api/request`, answers on `.../response` matched by `id`, and the
//! printer's objects (`print_stats`, `virtual_sdcard`, heaters) kept from the subscription's
//! snapshot and the `notify_status_update` deltas on `.../notification` (or
//! `{instance}/klipper/status` when Moonraker publishes status objects). No I/O here.

use super::delta::merge;
use super::mqtt_driver::{Cmd, Link, NetProtocol, Note, Outgoing};
use super::net_job::PrinterPhase;
use super::{DriverOptions, Secret, Telemetry};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How the connection is made: plain MQTT to the farm's broker, optional login.
pub(super) fn link(
    broker: &str,
    instance: &str,
    username: Option<String>,
    password: Option<Secret>,
) -> Result<Link, String> {
    let (host, port) = broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| format!("connection.broker '{broker}' must be host:port"))?;
    let mut link = Link::new(&format!("raft3d-{instance}"), host, port);
    if let Some(user) = username {
        let pass = password.map(|p| p.0).unwrap_or_default();
        link.options.set_credentials(user, pass);
    }
    Ok(link)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Subscribe,
    Command(Cmd),
}

/// The Klipper objects this driver follows.
const OBJECTS: &[(&str, &[&str])] = &[
    (
        "print_stats",
        &["state", "filename", "message", "print_duration", "info"],
    ),
    ("virtual_sdcard", &["progress"]),
    ("extruder", &["temperature", "target"]),
    ("heater_bed", &["temperature", "target"]),
    ("webhooks", &["state", "state_message"]),
];

pub(super) struct Moonraker {
    instance: String,
    next_id: u64,
    pending: HashMap<u64, (Pending, Instant)>,
    /// Merged Klipper objects (`print_stats`, `extruder`, ...).
    status: Map<String, Value>,
    subscribed: bool,
    last_subscribe: Option<Instant>,
    command_timeout: Duration,
}

impl Moonraker {
    pub fn new(instance: &str, o: &DriverOptions) -> Moonraker {
        Moonraker {
            instance: instance.to_string(),
            next_id: 1,
            pending: HashMap::new(),
            status: Map::new(),
            subscribed: false,
            last_subscribe: None,
            command_timeout: o.net_command_timeout,
        }
    }

    fn topic(&self, tail: &str) -> String {
        format!("{}/{tail}", self.instance)
    }

    fn request(&mut self, pending: Pending, method: &str, params: Value, now: Instant) -> Outgoing {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, (pending, now));
        let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        Outgoing {
            topic: self.topic("moonraker/api/request"),
            payload: body.to_string().into_bytes(),
        }
    }

    fn subscribe(&mut self, now: Instant) -> Outgoing {
        self.last_subscribe = Some(now);
        let objects: Map<String, Value> = OBJECTS
            .iter()
            .map(|(name, fields)| (name.to_string(), json!(fields)))
            .collect();
        self.request(
            Pending::Subscribe,
            "printer.objects.subscribe",
            json!({ "objects": objects }),
            now,
        )
    }

    fn field(&self, obj: &str, key: &str) -> Option<&Value> {
        self.status.get(obj)?.get(key)
    }

    fn num(&self, obj: &str, key: &str) -> Option<f64> {
        self.field(obj, key)?.as_f64()
    }

    fn on_response(&mut self, v: &Value) -> Vec<Note> {
        let Some(id) = v.get("id").and_then(Value::as_u64) else {
            return vec![];
        };
        let Some((pending, _)) = self.pending.remove(&id) else {
            return vec![]; // another client's, or already timed out
        };
        let error = v.get("error").map(|e| {
            let msg = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            let code = e.get("code").and_then(Value::as_i64).unwrap_or(0);
            format!("{msg} (code {code})")
        });
        match (pending, error) {
            (Pending::Subscribe, None) => {
                self.subscribed = true;
                if let Some(Value::Object(s)) = v.pointer("/result/status") {
                    self.status.clear();
                    merge(&mut self.status, s);
                }
                vec![]
            }
            (Pending::Subscribe, Some(e)) => vec![Note::Problem(format!(
                "Moonraker refused the status subscription: {e} (is Klipper running and connected to Moonraker?)"
            ))],
            (Pending::Command(cmd), None) => vec![Note::Answer {
                cmd,
                result: Ok(()),
            }],
            (Pending::Command(cmd), Some(e)) => vec![Note::Answer {
                cmd,
                result: Err(format!("Moonraker refused {}: {e}", method(cmd))),
            }],
        }
    }

    fn on_notification(&mut self, v: &Value, now: Instant) -> Vec<Note> {
        match v.get("method").and_then(Value::as_str) {
            Some("notify_status_update") => {
                if let Some(Value::Object(delta)) = v.pointer("/params/0") {
                    merge(&mut self.status, delta);
                }
                vec![]
            }
            Some("notify_klippy_ready") => {
                self.subscribed = false;
                self.last_subscribe = None; // subscribe again on the next tick
                vec![]
            }
            Some(m @ ("notify_klippy_shutdown" | "notify_klippy_disconnected")) => {
                self.subscribed = false;
                self.last_subscribe = Some(now);
                vec![Note::Problem(format!("Klipper is not ready ({m})"))]
            }
            _ => vec![],
        }
    }
}

fn method(cmd: Cmd) -> &'static str {
    match cmd {
        Cmd::Start => "printer.print.start",
        Cmd::Pause => "printer.print.pause",
        Cmd::Resume => "printer.print.resume",
        Cmd::Stop => "printer.print.cancel",
    }
}

impl NetProtocol for Moonraker {
    fn subscriptions(&self) -> Vec<String> {
        vec![
            self.topic("moonraker/api/response"),
            self.topic("moonraker/api/notification"),
            self.topic("klipper/status"),
        ]
    }

    fn on_connected(&mut self, now: Instant) -> Vec<Outgoing> {
        self.subscribed = false;
        self.pending.clear();
        vec![self.subscribe(now)]
    }

    fn on_message(&mut self, topic: &str, payload: &[u8], now: Instant) -> Vec<Note> {
        let v: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                return vec![Note::Problem(format!(
                    "malformed message on {topic} ({} bytes): {e}",
                    payload.len()
                ))]
            }
        };
        if topic.ends_with("/moonraker/api/response") {
            self.on_response(&v)
        } else if topic.ends_with("/moonraker/api/notification") {
            self.on_notification(&v, now)
        } else {
            // `{instance}/klipper/status`: {"eventtime": .., "status": {...}}
            if let Some(Value::Object(delta)) = v.get("status") {
                merge(&mut self.status, delta);
            }
            vec![]
        }
    }

    fn command(&mut self, cmd: Cmd, file: &str, now: Instant) -> Result<Vec<Outgoing>, String> {
        let params = match cmd {
            Cmd::Start => {
                let name = file.trim_start_matches('/');
                if name.is_empty() {
                    return Err("the job's filepath is empty".into());
                }
                json!({ "filename": name })
            }
            _ => json!({}),
        };
        Ok(vec![self.request(
            Pending::Command(cmd),
            method(cmd),
            params,
            now,
        )])
    }

    fn on_tick(&mut self, now: Instant) -> (Vec<Outgoing>, Vec<Note>) {
        let timeout = self.command_timeout;
        let expired: Vec<(u64, Pending)> = self
            .pending
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= timeout)
            .map(|(id, (p, _))| (*id, *p))
            .collect();
        let mut notes = Vec::new();
        for (id, p) in expired {
            self.pending.remove(&id);
            let what = match p {
                Pending::Subscribe => "printer.objects.subscribe".to_string(),
                Pending::Command(c) => method(c).to_string(),
            };
            notes.push(Note::Problem(format!(
                "Moonraker did not answer {what} within {} s on {}: check moonraker.conf [mqtt] \
                 (instance_name = {}, enable_moonraker_api: True) and that Moonraker is connected to the broker",
                timeout.as_secs().max(1),
                self.topic("moonraker/api/request"),
                self.instance
            )));
        }
        let mut out = Vec::new();
        let waiting = self.pending.values().any(|(p, _)| *p == Pending::Subscribe);
        let due = self
            .last_subscribe
            .is_none_or(|at| now.duration_since(at) >= timeout);
        if !self.subscribed && !waiting && due {
            out.push(self.subscribe(now));
        }
        (out, notes)
    }

    fn phase(&self) -> Option<PrinterPhase> {
        let state = self.field("print_stats", "state")?.as_str()?;
        Some(match state {
            "standby" => PrinterPhase::Idle,
            "printing" => PrinterPhase::Printing,
            "paused" => PrinterPhase::Paused,
            "complete" => PrinterPhase::Finished,
            "cancelled" => PrinterPhase::Canceled,
            "error" => {
                let msg = self
                    .field("print_stats", "message")
                    .and_then(Value::as_str)
                    .filter(|m| !m.is_empty())
                    .unwrap_or("no message");
                PrinterPhase::Failed(format!("Klipper reported an error: {msg}"))
            }
            other => PrinterPhase::Unknown(other.to_string()),
        })
    }

    fn is_file(&self, file: &str) -> Option<bool> {
        let current = self.field("print_stats", "filename")?.as_str()?;
        if current.is_empty() {
            return None;
        }
        Some(current.trim_start_matches('/') == file.trim_start_matches('/'))
    }

    fn show(&self, tel: &mut Telemetry) {
        tel.firmware = Some("Klipper (Moonraker)".into());
        tel.hotend = self.num("extruder", "temperature");
        tel.hotend_target = self.num("extruder", "target");
        tel.bed = self.num("heater_bed", "temperature");
        tel.bed_target = self.num("heater_bed", "target");
        tel.printer_state = self
            .field("print_stats", "state")
            .and_then(Value::as_str)
            .map(String::from);
        let layer = |k: &str| {
            self.field("print_stats", "info")
                .and_then(|i| i.get(k))
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
        };
        tel.layer = layer("current_layer");
        tel.total_layers = layer("total_layer");
        let active = matches!(
            self.phase(),
            Some(PrinterPhase::Printing | PrinterPhase::Paused)
        );
        if let (true, Some(p)) = (active, self.num("virtual_sdcard", "progress")) {
            let p = p.clamp(0.0, 1.0);
            tel.progress_percent = Some((p * 1000.0).round() / 10.0);
            let spent = self.num("print_stats", "print_duration").unwrap_or(0.0);
            tel.time_left_s =
                (p > 0.01 && spent > 0.0).then(|| (spent * (1.0 - p) / p).round() as u64);
        }
    }

    fn login_hint(&self) -> String {
        "check connection.username and password against the broker's accounts".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> (Moonraker, Instant) {
        (
            Moonraker::new("mk3", &DriverOptions::default()),
            Instant::now(),
        )
    }

    fn body(out: &Outgoing) -> Value {
        serde_json::from_slice(&out.payload).unwrap()
    }

    #[test]
    fn subscribes_then_follows_deltas() {
        let (mut m, t0) = engine();
        let out = m.on_connected(t0);
        assert_eq!(out[0].topic, "mk3/moonraker/api/request");
        let req = body(&out[0]);
        assert_eq!(req["method"], "printer.objects.subscribe");
        assert!(req["params"]["objects"]["print_stats"].is_array());
        let id = req["id"].as_u64().unwrap();
        let resp = json!({"jsonrpc": "2.0", "id": id, "result": {"eventtime": 1.0, "status": {
            "print_stats": {"state": "standby", "filename": "", "message": ""},
            "extruder": {"temperature": 24.5, "target": 0.0}}}});
        assert!(m
            .on_message(
                "mk3/moonraker/api/response",
                resp.to_string().as_bytes(),
                t0
            )
            .is_empty());
        assert_eq!(m.phase(), Some(PrinterPhase::Idle));
        let delta = json!({"jsonrpc": "2.0", "method": "notify_status_update", "params": [
            {"print_stats": {"state": "printing", "filename": "cube.gcode"}, "virtual_sdcard": {"progress": 0.25}}, 2.0]});
        m.on_message(
            "mk3/moonraker/api/notification",
            delta.to_string().as_bytes(),
            t0,
        );
        assert_eq!(m.phase(), Some(PrinterPhase::Printing));
        assert_eq!(m.is_file("cube.gcode"), Some(true));
        let mut tel = Telemetry::default();
        m.show(&mut tel);
        assert_eq!((tel.hotend, tel.progress_percent), (Some(24.5), Some(25.0)));
        let err = json!({"status": {"print_stats": {"state": "error", "message": "Heater extruder not heating at expected rate"}}});
        m.on_message("mk3/klipper/status", err.to_string().as_bytes(), t0);
        assert!(
            matches!(m.phase(), Some(PrinterPhase::Failed(msg)) if msg.contains("not heating"))
        );
        let notes = m.on_message("mk3/moonraker/api/response", b"{nope", t0);
        assert!(matches!(&notes[..], [Note::Problem(p)] if p.contains("malformed")));
    }

    #[test]
    fn answers_are_matched_by_id_and_refusals_explained() {
        let (mut m, t0) = engine();
        let start = m.command(Cmd::Start, "/cube.gcode", t0).unwrap();
        let req = body(&start[0]);
        assert_eq!(req["method"], "printer.print.start");
        assert_eq!(req["params"]["filename"], "cube.gcode");
        let other = json!({"jsonrpc": "2.0", "id": 999, "result": "ok"});
        assert!(m
            .on_message(
                "mk3/moonraker/api/response",
                other.to_string().as_bytes(),
                t0
            )
            .is_empty());
        let refused = json!({"jsonrpc": "2.0", "id": req["id"], "error": {"code": 400, "message": "File not found"}});
        let notes = m.on_message(
            "mk3/moonraker/api/response",
            refused.to_string().as_bytes(),
            t0,
        );
        match &notes[..] {
            [Note::Answer {
                cmd: Cmd::Start,
                result: Err(e),
            }] => {
                assert!(e.contains("File not found"), "{e}")
            }
            n => panic!("{n:?}"),
        }
        let cancel = m.command(Cmd::Stop, "", t0).unwrap();
        assert_eq!(body(&cancel[0])["method"], "printer.print.cancel");
        let (_, notes) = m.on_tick(t0 + Duration::from_secs(11));
        assert!(matches!(&notes[..], [Note::Problem(p)] if p.contains("instance_name = mk3")));
    }

    #[test]
    fn broker_address_is_checked() {
        assert!(link("mqtt.local:1883", "mk3", None, None).is_ok());
        assert!(link("[::1]:1883", "mk3", None, None).is_ok());
        let e = link("mqtt.local", "mk3", None, None).err().unwrap();
        assert!(e.contains("host:port"), "{e}");
    }
}
