//! A simulated Bambu Lab printer for tests (feature `fake`): an MQTT client of the test broker
//! (which stands in for the printer's own broker) on `device/{serial}/request` and
//! `device/{serial}/report`. It runs IDLE → PREPARE → RUNNING → FINISH, sends only changed
//! fields (like P1/A1) and a full report on `pushall`, echoes every command with its
//! `sequence_id` and result, and on demand: rejects control commands, cancels (HMS 0300_400C
//! then `FAILED`) or fails on the printer, sends a report over 10 KiB, garbage, or nothing.

use super::bambu_report::CANCELED_BY_USER;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TICK: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Sim {
    prepare_time: Duration,
    print_time: Duration,
    state: String,
    file: String,
    subtask: String,
    percent: f64,
    in_state: Duration,
    print_error: i64,
    /// A cancel or error is reported as its code first, then `FAILED` on the next tick.
    failing: bool,
    reject_control: bool,
    silent: bool,
    commands: Vec<String>,
    pushalls: usize,
    /// Fields as last reported (deltas are computed against it).
    sent: Map<String, Value>,
    extra: Vec<Vec<u8>>,
}

impl Sim {
    fn fields(&self) -> Map<String, Value> {
        let hot = self.state == "PREPARE" || self.state == "RUNNING" || self.state == "PAUSE";
        let layer = (self.percent / 2.0).floor() as u64;
        let v = json!({
            "gcode_state": self.state, "gcode_file": self.file, "subtask_name": self.subtask,
            "mc_percent": self.percent.floor() as u64,
            "mc_remaining_time": ((100.0 - self.percent) * self.print_time.as_secs_f64() / 6000.0).ceil() as u64,
            "layer_num": layer, "total_layer_num": 50, "print_error": self.print_error,
            "nozzle_temper": if hot { 220.0 } else { 26.0 }, "nozzle_target_temper": if hot { 220.0 } else { 0.0 },
            "bed_temper": if hot { 55.0 } else { 25.0 }, "bed_target_temper": if hot { 55.0 } else { 0.0 },
        });
        v.as_object().cloned().unwrap_or_default()
    }

    fn full(&mut self) -> Value {
        let mut f = self.fields();
        self.sent = f.clone();
        f.insert("command".into(), json!("push_status"));
        f.insert("msg".into(), json!(0));
        f.insert(
            "ams".into(),
            json!({"ams": [{"id": "0", "humidity": "4", "tray": [
            {"id": "0", "tray_type": "PLA", "tray_color": "FFFFFFFF", "remain": 85},
            {"id": "1", "tray_type": "PETG", "tray_color": "000000FF", "remain": 40},
            {"id": "2", "tray_type": "", "remain": -1},
            {"id": "3", "tray_type": "PLA", "tray_color": "FF0000FF", "remain": 100}]}]}),
        );
        json!({ "print": f })
    }

    fn delta(&mut self) -> Option<Value> {
        let now = self.fields();
        let mut d = Map::new();
        for (k, v) in &now {
            if self.sent.get(k) != Some(v) {
                d.insert(k.clone(), v.clone());
            }
        }
        self.sent = now;
        if d.is_empty() {
            return None;
        }
        d.insert("command".into(), json!("push_status"));
        Some(json!({ "print": d }))
    }

    fn active(&self) -> bool {
        matches!(self.state.as_str(), "PREPARE" | "RUNNING" | "PAUSE")
    }

    /// Handles one request; the echo with its result.
    fn request(&mut self, req: &Value) -> Option<Value> {
        if let Some(p) = req.get("pushing") {
            if p.get("command").and_then(Value::as_str) == Some("pushall") {
                self.pushalls += 1;
                return Some(self.full());
            }
            return None;
        }
        let print = req.get("print")?.as_object()?;
        let command = print.get("command")?.as_str()?.to_string();
        self.commands.push(command.clone());
        let mut echo = print.clone();
        let verdict: Result<(), &str> = if self.reject_control {
            Err("mqtt message verify failed")
        } else {
            match command.as_str() {
                "gcode_file" | "project_file" if !self.active() => {
                    let param = print.get("param").and_then(Value::as_str).unwrap_or("");
                    if command == "gcode_file" {
                        (self.file, self.subtask) = (param.to_string(), String::new());
                    } else {
                        self.file = param.to_string();
                        self.subtask = print
                            .get("subtask_name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string();
                    }
                    (self.state, self.percent, self.print_error) = ("PREPARE".into(), 0.0, 0);
                    (self.in_state, self.failing) = (Duration::ZERO, false);
                    Ok(())
                }
                "gcode_file" | "project_file" => Err("printer is busy"),
                "pause" if self.state == "RUNNING" => {
                    self.state = "PAUSE".into();
                    Ok(())
                }
                "resume" if self.state == "PAUSE" => {
                    self.state = "RUNNING".into();
                    Ok(())
                }
                "stop" if self.active() => {
                    self.cancel();
                    Ok(())
                }
                "pause" | "resume" | "stop" => Ok(()), // the real printer accepts and ignores
                _ => Err("unsupported command"),
            }
        };
        match verdict {
            Ok(()) => echo.insert("result".into(), json!("success")),
            Err(reason) => {
                echo.insert("reason".into(), json!(reason));
                echo.insert("result".into(), json!("failed"))
            }
        };
        Some(json!({ "print": echo }))
    }

    fn cancel(&mut self) {
        self.print_error = CANCELED_BY_USER;
        self.failing = true;
    }

    fn advance(&mut self, dt: Duration) {
        self.in_state += dt;
        if self.failing && self.active() && self.in_state > TICK {
            // the code went out with the previous report
            self.state = "FAILED".into();
            self.failing = false;
            return;
        }
        match self.state.as_str() {
            "PREPARE" if self.in_state >= self.prepare_time => {
                self.state = "RUNNING".into();
                self.in_state = Duration::ZERO;
            }
            "RUNNING" if !self.failing => {
                let step = 100.0 * dt.as_secs_f64() / self.print_time.as_secs_f64().max(0.001);
                self.percent = (self.percent + step).min(100.0);
                if self.percent >= 100.0 {
                    self.state = "FINISH".into();
                }
            }
            _ => {}
        }
    }
}

pub struct FakeBambu {
    sim: Arc<Mutex<Sim>>,
    stop: CancellationToken,
}

impl FakeBambu {
    /// Connects to the broker's plain port as printer `serial`; a print prepares for
    /// `prepare_time`, then prints for `print_time`.
    pub fn start(
        port: u16,
        serial: &str,
        prepare_time: Duration,
        print_time: Duration,
    ) -> FakeBambu {
        let sim = Arc::new(Mutex::new(Sim {
            prepare_time,
            print_time,
            state: "IDLE".into(),
            ..Sim::default()
        }));
        let stop = CancellationToken::new();
        tokio::spawn(run(port, serial.to_string(), sim.clone(), stop.clone()));
        FakeBambu { sim, stop }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sim> {
        self.sim.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> String {
        self.lock().state.clone()
    }
    /// Commands received (`gcode_file`, `pause`, `stop`, ...), not counting `pushall`.
    pub fn commands(&self) -> Vec<String> {
        self.lock().commands.clone()
    }
    pub fn pushalls(&self) -> usize {
        self.lock().pushalls
    }
    /// Answer every control command with `result: failed` (firmware without developer mode).
    pub fn reject_control(&self, on: bool) {
        self.lock().reject_control = on;
    }
    /// Someone presses stop on the printer.
    pub fn cancel_on_printer(&self) {
        self.lock().cancel();
    }
    /// The printer fails the print with `code`.
    pub fn fail_on_printer(&self, code: i64) {
        let mut s = self.lock();
        s.print_error = code;
        s.failing = true;
    }
    /// Stop (or resume) reporting, pushall included.
    pub fn silent(&self, on: bool) {
        self.lock().silent = on;
    }
    /// Send these bytes once as a report.
    pub fn send_raw(&self, payload: Vec<u8>) {
        self.lock().extra.push(payload);
    }
    /// A full report padded past `bytes` (X1 reports reach ~15 KB).
    pub fn send_big_report(&self, bytes: usize) {
        let mut s = self.lock();
        let mut r = s.full();
        r["print"]["hms"] = json!([{"attr": 0, "code": 0, "pad": "x".repeat(bytes)}]);
        s.extra.push(r.to_string().into_bytes());
    }
}

impl Drop for FakeBambu {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn run(port: u16, serial: String, sim: Arc<Mutex<Sim>>, stop: CancellationToken) {
    let mut opts = MqttOptions::new(format!("fake-bambu-{serial}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(8 * 1024 * 1024, 8 * 1024 * 1024);
    let (client, mut events) = AsyncClient::new(opts, 256);
    let request = format!("device/{serial}/request");
    let report = format!("device/{serial}/report");
    let mut tick = tokio::time::interval(TICK);
    let lock = || sim.lock().unwrap_or_else(|p| p.into_inner());
    let publish = |payload: Vec<u8>| {
        let _ = client.try_publish(report.clone(), QoS::AtMostOnce, false, payload);
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            ev = events.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(request.clone(), QoS::AtMostOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == request => {
                    let Ok(req) = serde_json::from_slice::<Value>(&p.payload) else { continue };
                    let answer = {
                        let mut s = lock();
                        if s.silent { None } else { s.request(&req) }
                    };
                    if let Some(a) = answer {
                        publish(a.to_string().into_bytes());
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
            _ = tick.tick() => {
                let out = {
                    let mut s = lock();
                    s.advance(TICK);
                    let mut out: Vec<Vec<u8>> = std::mem::take(&mut s.extra);
                    if s.silent {
                        out.clear();
                    } else if let Some(d) = s.delta() {
                        out.push(d.to_string().into_bytes());
                    }
                    out
                };
                for o in out {
                    publish(o);
                }
            }
        }
    }
}
