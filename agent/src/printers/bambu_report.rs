//! The merged state of a Bambu Lab printer from its `push_status` reports: full reports (after
//! `pushall`, X1) and partial ones (P1/A1 send only what changed) are merged field by field,
//! and the state is read out as a `PrinterPhase` and telemetry. Pure: JSON in, values out.

use super::delta::merge;
use super::net_job::PrinterPhase;
use super::{AmsTray, Telemetry};
use serde_json::{Map, Value};

/// `print_error` when the print was cancelled by the user (HMS 0300_400C), followed by `FAILED`.
pub const CANCELED_BY_USER: i64 = 50_348_044;

#[derive(Debug, Default, Clone)]
pub struct BambuReport {
    print: Map<String, Value>,
    /// The last non-zero `print_error` since the printer last began a print: the code can be
    /// reset to 0 in a later delta while `gcode_state` stays `FAILED`.
    last_error: Option<i64>,
}

/// A number the printer may send as a JSON number or as a string.
fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `50348044` → `0300_400C`, the form the printer's screen and Bambu's wiki use.
pub fn error_code_text(code: i64) -> String {
    let c = code as u32;
    format!("{:04X}_{:04X}", c >> 16, c & 0xFFFF)
}

impl BambuReport {
    /// Merge the `print` object of a `push_status` report.
    pub fn merge(&mut self, delta: &Map<String, Value>) {
        if let Some(state) = delta.get("gcode_state").and_then(Value::as_str) {
            if matches!(state, "PREPARE" | "SLICING" | "RUNNING") {
                self.last_error = None;
            }
        }
        if let Some(code) = delta.get("print_error").and_then(num) {
            if code != 0.0 {
                self.last_error = Some(code as i64);
            }
        }
        merge(&mut self.print, delta);
    }

    pub fn is_empty(&self) -> bool {
        self.print.is_empty()
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.print.get(key).and_then(num)
    }

    pub fn gcode_state(&self) -> Option<&str> {
        self.print.get("gcode_state").and_then(Value::as_str)
    }

    /// The error code that ended the print, if any.
    pub fn error_code(&self) -> Option<i64> {
        self.last_error.or_else(|| {
            self.get("print_error")
                .map(|c| c as i64)
                .filter(|c| *c != 0)
        })
    }

    pub fn phase(&self) -> Option<PrinterPhase> {
        Some(match self.gcode_state()? {
            "IDLE" => PrinterPhase::Idle,
            "PREPARE" | "SLICING" => PrinterPhase::Preparing,
            "RUNNING" => PrinterPhase::Printing,
            "PAUSE" => PrinterPhase::Paused,
            "FINISH" => PrinterPhase::Finished,
            "FAILED" => match self.error_code() {
                Some(CANCELED_BY_USER) => PrinterPhase::Canceled,
                Some(code) => PrinterPhase::Failed(format!(
                    "the printer reported FAILED with error {} (HMS code; see the printer's screen)",
                    error_code_text(code)
                )),
                None => PrinterPhase::Failed("the printer reported FAILED (no error code)".into()),
            },
            other => PrinterPhase::Unknown(other.to_string()),
        })
    }

    /// The file being printed as the printer names it (`gcode_file`, else `subtask_name`).
    pub fn file(&self) -> Option<&str> {
        ["gcode_file", "subtask_name"]
            .iter()
            .filter_map(|k| self.print.get(*k).and_then(Value::as_str))
            .find(|s| !s.is_empty())
    }

    /// Whether the printer's file is `file` (compared by base name, without extension).
    pub fn is_file(&self, file: &str) -> Option<bool> {
        fn stem(s: &str) -> String {
            let base = s.rsplit('/').next().unwrap_or(s);
            let lower = base.to_ascii_lowercase();
            for ext in [".gcode.3mf", ".3mf", ".gcode"] {
                if let Some(s) = lower.strip_suffix(ext) {
                    return s.to_string();
                }
            }
            lower
        }
        let current = self.file()?;
        if current.starts_with("Metadata/") {
            // a project plate: the file is named by `subtask_name`
            let sub = self.print.get("subtask_name").and_then(Value::as_str)?;
            return Some(stem(sub) == stem(file));
        }
        Some(stem(current) == stem(file))
    }

    pub fn ams_trays(&self) -> Vec<AmsTray> {
        let Some(units) = self
            .print
            .get("ams")
            .and_then(|a| a.get("ams"))
            .and_then(Value::as_array)
        else {
            return vec![];
        };
        let mut trays = Vec::new();
        for (ui, unit) in units.iter().enumerate() {
            let unit_id = unit.get("id").and_then(num).map_or(ui as u32, |n| n as u32);
            let Some(list) = unit.get("tray").and_then(Value::as_array) else {
                continue;
            };
            for (ti, t) in list.iter().enumerate() {
                let text = |k: &str| {
                    t.get(k)
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                };
                trays.push(AmsTray {
                    unit: unit_id,
                    tray: t.get("id").and_then(num).map_or(ti as u32, |n| n as u32),
                    material: text("tray_type"),
                    color: text("tray_color"),
                    remain_percent: t
                        .get("remain")
                        .and_then(num)
                        .map(|r| r as i64)
                        .filter(|r| *r >= 0),
                });
            }
        }
        trays
    }

    pub fn show(&self, tel: &mut Telemetry) {
        let round = |t: f64| (t * 10.0).round() / 10.0;
        tel.hotend = self.get("nozzle_temper").map(round);
        tel.hotend_target = self.get("nozzle_target_temper").map(round);
        tel.bed = self.get("bed_temper").map(round);
        tel.bed_target = self.get("bed_target_temper").map(round);
        tel.printer_state = self.gcode_state().map(String::from);
        tel.layer = self.get("layer_num").map(|n| n as u32);
        tel.total_layers = self.get("total_layer_num").map(|n| n as u32);
        if matches!(
            self.phase(),
            Some(PrinterPhase::Preparing | PrinterPhase::Printing | PrinterPhase::Paused)
        ) {
            tel.progress_percent = self.get("mc_percent").map(|p| p.clamp(0.0, 100.0));
            tel.time_left_s = self
                .get("mc_remaining_time")
                .map(|m| (m.max(0.0) * 60.0) as u64);
        }
        tel.ams = self.ams_trays();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn partial_reports_merge_into_the_full_state() {
        let mut r = BambuReport::default();
        r.merge(&obj(
            json!({"command": "push_status", "gcode_state": "IDLE",
            "nozzle_temper": 25.0, "bed_temper": "24.5", "mc_percent": 0,
            "ams": {"ams": [{"id": "0", "tray": [
                {"id": "0", "tray_type": "PLA", "tray_color": "FF0000FF", "remain": 80},
                {"id": "1", "tray_type": "", "remain": -1}]}]}}),
        ));
        r.merge(&obj(
            json!({"gcode_state": "RUNNING", "gcode_file": "/sdcard/cube.gcode",
            "mc_percent": 42, "mc_remaining_time": 12, "layer_num": 10, "total_layer_num": 50}),
        ));
        r.merge(&obj(json!({"nozzle_temper": 219.96})));
        assert_eq!(r.phase(), Some(PrinterPhase::Printing));
        assert_eq!(r.is_file("cube.gcode"), Some(true));
        assert_eq!(r.is_file("other.gcode"), Some(false));
        let mut tel = Telemetry::default();
        r.show(&mut tel);
        assert_eq!(tel.hotend, Some(220.0));
        assert_eq!(tel.bed, Some(24.5), "numbers sent as strings");
        assert_eq!(tel.progress_percent, Some(42.0));
        assert_eq!(tel.time_left_s, Some(720));
        assert_eq!((tel.layer, tel.total_layers), (Some(10), Some(50)));
        assert_eq!(tel.printer_state.as_deref(), Some("RUNNING"));
        assert_eq!(tel.ams.len(), 2);
        assert_eq!(tel.ams[0].material.as_deref(), Some("PLA"));
        assert_eq!(tel.ams[0].remain_percent, Some(80));
        assert_eq!(
            (tel.ams[1].material.clone(), tel.ams[1].remain_percent),
            (None, None)
        );
    }

    #[test]
    fn failed_maps_through_the_error_code() {
        let mut r = BambuReport::default();
        r.merge(&obj(json!({"gcode_state": "RUNNING", "print_error": 0})));
        r.merge(&obj(json!({"print_error": CANCELED_BY_USER})));
        r.merge(&obj(json!({"gcode_state": "FAILED", "print_error": 0})));
        assert_eq!(
            r.phase(),
            Some(PrinterPhase::Canceled),
            "code kept after reset"
        );
        r.merge(&obj(json!({"gcode_state": "PREPARE"})));
        r.merge(&obj(json!({"print_error": 0x0500_4002})));
        r.merge(&obj(json!({"gcode_state": "FAILED"})));
        match r.phase() {
            Some(PrinterPhase::Failed(m)) => assert!(m.contains("0500_4002"), "{m}"),
            p => panic!("{p:?}"),
        }
        r.merge(&obj(json!({"gcode_state": "RUNNING"})));
        r.merge(&obj(json!({"gcode_state": "FINISH"})));
        assert_eq!(r.phase(), Some(PrinterPhase::Finished));
        r.merge(&obj(json!({"gcode_state": "CALIBRATING_EXTRUSION"})));
        assert_eq!(
            r.phase(),
            Some(PrinterPhase::Unknown("CALIBRATING_EXTRUSION".into()))
        );
        assert_eq!(error_code_text(CANCELED_BY_USER), "0300_400C");
    }

    #[test]
    fn project_plates_are_named_by_subtask() {
        let mut r = BambuReport::default();
        r.merge(&obj(json!({"gcode_state": "RUNNING", "gcode_file": "Metadata/plate_1.gcode", "subtask_name": "benchy"})));
        assert_eq!(r.is_file("benchy.3mf"), Some(true));
        assert_eq!(r.is_file("/sdcard/benchy.gcode.3mf"), Some(true));
        assert_eq!(r.is_file("cube.3mf"), Some(false));
    }
}
