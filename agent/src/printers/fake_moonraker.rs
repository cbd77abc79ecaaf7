//! A simulated Klipper/Moonraker for tests (feature `fake`): an MQTT client of a broker that
//! answers Moonraker's JSON-RPC on `{instance}/moonraker/api/request` (objects subscribe, print
//! start/pause/resume/cancel) and publishes `notify_status_update` deltas as the print runs
//! standby → printing → complete. Tests can cancel or fail the print "on the printer".

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TICK: Duration = Duration::from_millis(50);

struct Sim {
    files: Vec<String>,
    print_time: Duration,
    state: String,
    filename: String,
    message: String,
    progress: f64,
    duration: f64,
    methods: Vec<String>,
    cancel_requested: bool,
    error_requested: Option<String>,
}

impl Sim {
    fn status(&self) -> Value {
        let layer = (self.progress * 20.0).floor() as u64;
        json!({
            "print_stats": {"state": self.state, "filename": self.filename, "message": self.message,
                "print_duration": self.duration, "info": {"current_layer": layer, "total_layer": 20}},
            "virtual_sdcard": {"progress": self.progress},
            "extruder": {"temperature": if self.active() { 215.0 } else { 25.0 }, "target": if self.active() { 215.0 } else { 0.0 }},
            "heater_bed": {"temperature": if self.active() { 60.0 } else { 24.0 }, "target": if self.active() { 60.0 } else { 0.0 }},
            "webhooks": {"state": "ready", "state_message": "Printer is ready"},
        })
    }

    fn active(&self) -> bool {
        self.state == "printing" || self.state == "paused"
    }

    /// Handles one request: (response, whether the state changed).
    fn call(&mut self, method: &str, params: &Value) -> (Result<Value, (i64, String)>, bool) {
        self.methods.push(method.to_string());
        match method {
            "printer.objects.subscribe" => (
                Ok(json!({"eventtime": 1.0, "status": self.status()})),
                false,
            ),
            "printer.print.start" => {
                let file = params.get("filename").and_then(Value::as_str).unwrap_or("");
                if self.active() {
                    return (Err((400, "Print is already in progress".into())), false);
                }
                if !self.files.iter().any(|f| f == file) {
                    return (Err((400, format!("File not found: gcodes/{file}"))), false);
                }
                (self.state, self.filename, self.message) =
                    ("printing".into(), file.into(), String::new());
                (self.progress, self.duration) = (0.0, 0.0);
                (Ok(json!("ok")), true)
            }
            "printer.print.pause" if self.state == "printing" => {
                self.state = "paused".into();
                (Ok(json!("ok")), true)
            }
            "printer.print.resume" if self.state == "paused" => {
                self.state = "printing".into();
                (Ok(json!("ok")), true)
            }
            "printer.print.cancel" if self.active() => {
                self.state = "cancelled".into();
                (Ok(json!("ok")), true)
            }
            "printer.print.pause" | "printer.print.resume" | "printer.print.cancel" => (
                Err((400, format!("cannot {method} while {}", self.state))),
                false,
            ),
            _ => (Err((-32601, "Method not found".into())), false),
        }
    }

    /// Advances the print by `dt`; true when something changed.
    fn advance(&mut self, dt: Duration) -> bool {
        if self.cancel_requested && self.active() {
            self.cancel_requested = false;
            self.state = "cancelled".into();
            return true;
        }
        if let Some(msg) = self.error_requested.take().filter(|_| self.active()) {
            self.state = "error".into();
            self.message = msg;
            return true;
        }
        if self.state != "printing" {
            return false;
        }
        self.duration += dt.as_secs_f64();
        self.progress =
            (self.progress + dt.as_secs_f64() / self.print_time.as_secs_f64().max(0.001)).min(1.0);
        if self.progress >= 1.0 {
            self.state = "complete".into();
        }
        true
    }
}

pub struct FakeMoonraker {
    sim: Arc<Mutex<Sim>>,
    stop: CancellationToken,
}

impl FakeMoonraker {
    /// Connects to the broker on `127.0.0.1:port` as Moonraker `instance`, with `files` in its
    /// gcodes root; a print takes `print_time`.
    pub fn start(port: u16, instance: &str, files: &[&str], print_time: Duration) -> FakeMoonraker {
        let sim = Arc::new(Mutex::new(Sim {
            files: files.iter().map(|f| f.to_string()).collect(),
            print_time,
            state: "standby".into(),
            filename: String::new(),
            message: String::new(),
            progress: 0.0,
            duration: 0.0,
            methods: Vec::new(),
            cancel_requested: false,
            error_requested: None,
        }));
        let stop = CancellationToken::new();
        tokio::spawn(run(port, instance.to_string(), sim.clone(), stop.clone()));
        FakeMoonraker { sim, stop }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sim> {
        self.sim.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The JSON-RPC methods received so far.
    pub fn methods(&self) -> Vec<String> {
        self.lock().methods.clone()
    }

    /// `print_stats.state`.
    pub fn state(&self) -> String {
        self.lock().state.clone()
    }

    /// Someone presses cancel on the printer.
    pub fn cancel_on_printer(&self) {
        self.lock().cancel_requested = true;
    }

    /// Klipper stops the print with an error.
    pub fn fail_on_printer(&self, message: &str) {
        self.lock().error_requested = Some(message.to_string());
    }
}

impl Drop for FakeMoonraker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn run(port: u16, instance: String, sim: Arc<Mutex<Sim>>, stop: CancellationToken) {
    let mut opts = MqttOptions::new(format!("fake-moonraker-{instance}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 256);
    let request_topic = format!("{instance}/moonraker/api/request");
    let notify = format!("{instance}/moonraker/api/notification");
    let response = format!("{instance}/moonraker/api/response");
    let mut tick = tokio::time::interval(TICK);
    let lock = || sim.lock().unwrap_or_else(|p| p.into_inner());
    let publish = |topic: &str, v: Value| {
        let _ = client.try_publish(topic, QoS::AtMostOnce, false, v.to_string());
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            ev = events.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(request_topic.clone(), QoS::AtMostOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == request_topic => {
                    let Ok(req) = serde_json::from_slice::<Value>(&p.payload) else { continue };
                    let method = req.get("method").and_then(Value::as_str).unwrap_or("");
                    let params = req.get("params").cloned().unwrap_or(Value::Null);
                    let (result, changed, status) = {
                        let mut s = lock();
                        let (r, c) = s.call(method, &params);
                        (r, c, s.status())
                    };
                    let id = req.get("id").cloned().unwrap_or(Value::Null);
                    let answer = match result {
                        Ok(r) => json!({"jsonrpc": "2.0", "result": r, "id": id}),
                        Err((code, message)) => json!({"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id}),
                    };
                    publish(&response, answer);
                    if changed {
                        publish(&notify, json!({"jsonrpc": "2.0", "method": "notify_status_update", "params": [status, 2.0]}));
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
            _ = tick.tick() => {
                let delta = {
                    let mut s = lock();
                    s.advance(TICK).then(|| {
                        let full = s.status();
                        let mut d = Map::new();
                        for k in ["print_stats", "virtual_sdcard"] {
                            d.insert(k.into(), full[k].clone());
                        }
                        Value::Object(d)
                    })
                };
                if let Some(d) = delta {
                    publish(&notify, json!({"jsonrpc": "2.0", "method": "notify_status_update", "params": [d, 3.0]}));
                }
            }
        }
    }
}
