//! The farm's objects (printers, filament spools, print jobs) and the lenient input forms that
//! create them. JSON field names are fixed by the product brief; extensions only add fields.

use serde::{Deserialize, Serialize};

use super::error::DomainError;
use super::weight::Grams;

/// Longest id accepted; ids appear in URLs and log lines.
const MAX_ID_LEN: usize = 64;
/// Longest free-text field (company, model, color, file path).
const MAX_TEXT_LEN: usize = 1024;

/// A client-supplied id: the original API allows strings and integers; both are kept as strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawId {
    Text(String),
    Number(i64),
}

impl RawId {
    fn into_string(self) -> String {
        match self {
            RawId::Text(s) => s,
            RawId::Number(n) => n.to_string(),
        }
    }
}

/// Checks an id from a path or a body. Allowed: letters, digits, `-`, `_`, `.`, `:`.
pub fn parse_id(field: &str, raw: &str) -> Result<String, DomainError> {
    let id = raw.trim();
    let bad = |why: &str| DomainError::InvalidField {
        field: field.to_string(),
        message: format!("{why} (got {raw:?})"),
    };
    if id.is_empty() {
        return Err(bad("must not be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(bad(&format!("must be at most {MAX_ID_LEN} characters")));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err(bad(
            "may only contain letters, digits, '-', '_', '.' and ':'",
        ));
    }
    Ok(id.to_string())
}

fn text(field: &str, value: String) -> Result<String, DomainError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(DomainError::InvalidField {
            field: field.to_string(),
            message: "must not be empty".to_string(),
        });
    }
    if v.len() > MAX_TEXT_LEN {
        return Err(DomainError::InvalidField {
            field: field.to_string(),
            message: format!("must be at most {MAX_TEXT_LEN} bytes"),
        });
    }
    Ok(v.to_string())
}

fn optional_id(field: &str, raw: Option<RawId>) -> Result<Option<String>, DomainError> {
    raw.map(|r| parse_id(field, &r.into_string())).transpose()
}

/// How an agent reaches a managed printer (brief §5). Secrets are redacted on output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Connection {
    Serial {
        port: String,
        #[serde(default = "default_baud")]
        baud: u32,
    },
    Bambu {
        host: String,
        #[serde(default = "default_bambu_port")]
        port: u16,
        serial: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        access_code: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<String>,
        /// Skip TLS certificate checks (for printers whose certificate cannot be verified).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        insecure_tls: bool,
        /// The printer's implicit-FTPS port, for uploading a job's local file.
        #[serde(default = "default_ftps_port")]
        ftps_port: u16,
    },
    Moonraker {
        broker: String,
        instance: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
    },
    Virtual {
        #[serde(default = "default_speed")]
        speed: f64,
    },
}

fn default_baud() -> u32 {
    115_200
}
fn default_bambu_port() -> u16 {
    8883
}
fn default_ftps_port() -> u16 {
    990
}
fn default_speed() -> f64 {
    1.0
}

impl Connection {
    /// Network printers print on their own and any agent that reaches them can supervise
    /// them; serial and virtual printers belong to one machine.
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            Connection::Bambu { .. } | Connection::Moonraker { .. }
        )
    }

    /// The same connection with every secret removed, for API output.
    pub fn redacted(&self) -> Connection {
        let mut c = self.clone();
        match &mut c {
            Connection::Bambu { access_code, .. } => {
                *access_code = access_code.as_ref().map(|_| "********".to_string())
            }
            Connection::Moonraker { password, .. } => {
                *password = password.as_ref().map(|_| "********".to_string())
            }
            Connection::Serial { .. } | Connection::Virtual { .. } => {}
        }
        c
    }

    fn validate(&self) -> Result<(), DomainError> {
        let bad = |field: &str, message: &str| DomainError::InvalidField {
            field: format!("connection.{field}"),
            message: message.to_string(),
        };
        match self {
            Connection::Serial { port, baud } => {
                if port.trim().is_empty() {
                    return Err(bad(
                        "port",
                        "must name a serial device, e.g. /dev/serial/by-id/...",
                    ));
                }
                if *baud == 0 {
                    return Err(bad("baud", "must be a positive baud rate, e.g. 115200"));
                }
            }
            Connection::Bambu {
                host,
                serial,
                access_code,
                ..
            } => {
                if host.trim().is_empty() {
                    return Err(bad("host", "must be the printer's address"));
                }
                if serial.trim().is_empty() {
                    return Err(bad("serial", "must be the printer's serial number"));
                }
                if access_code.as_deref().is_none_or(|c| c.trim().is_empty()) {
                    return Err(bad(
                        "access_code",
                        "is required: the LAN access code shown on the printer's screen",
                    ));
                }
            }
            Connection::Moonraker {
                broker, instance, ..
            } => {
                if !broker.contains(':') {
                    return Err(bad("broker", "must be host:port"));
                }
                if instance.trim().is_empty() {
                    return Err(bad("instance", "must name the Moonraker instance"));
                }
            }
            Connection::Virtual { speed } => {
                if !(speed.is_finite() && *speed > 0.0 && *speed <= 10_000.0) {
                    return Err(bad("speed", "must be between 0 (exclusive) and 10000"));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Printer {
    pub id: String,
    pub company: String,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,
    pub created_at: String,
    /// Log index at which supervision moved to `node_id` (network printers after a
    /// failover); jobs that were `Running` before it were started by another agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_since: Option<u64>,
}

impl Printer {
    /// The printer as the API shows it: secrets replaced.
    pub fn redacted(&self) -> Printer {
        let mut p = self.clone();
        p.connection = p.connection.as_ref().map(Connection::redacted);
        p
    }
}

/// `POST /api/v1/printers` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPrinter {
    pub id: Option<RawId>,
    pub company: String,
    pub model: String,
    pub node_id: Option<RawId>,
    pub connection: Option<Connection>,
}

impl NewPrinter {
    /// Validates the request; `id` is the client's or one generated before proposing.
    pub fn into_printer(self, generated_id: String, now: &str) -> Result<Printer, DomainError> {
        let id = match self.id {
            Some(raw) => parse_id("id", &raw.into_string())?,
            None => generated_id,
        };
        if let Some(c) = &self.connection {
            c.validate()?;
        }
        let node_id = optional_id("node_id", self.node_id)?;
        if self.connection.is_some() && node_id.is_none() {
            return Err(DomainError::InvalidField {
                field: "node_id".into(),
                message:
                    "a printer with a connection needs the node_id of the agent that drives it"
                        .into(),
            });
        }
        Ok(Printer {
            id,
            company: text("company", self.company)?,
            model: text("model", self.model)?,
            node_id,
            connection: self.connection,
            created_at: now.to_string(),
            supervisor_since: None,
        })
    }
}

/// Filament material; input in any case, output canonical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FilamentType {
    #[serde(rename = "PLA")]
    Pla,
    #[serde(rename = "PETG")]
    Petg,
    #[serde(rename = "ABS")]
    Abs,
    #[serde(rename = "TPU")]
    Tpu,
}

impl std::str::FromStr for FilamentType {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, DomainError> {
        match s.trim().to_ascii_uppercase().as_str() {
            "PLA" => Ok(FilamentType::Pla),
            "PETG" => Ok(FilamentType::Petg),
            "ABS" => Ok(FilamentType::Abs),
            "TPU" => Ok(FilamentType::Tpu),
            _ => Err(DomainError::InvalidField {
                field: "type".into(),
                message: format!("must be one of PLA, PETG, ABS, TPU (got {s:?})"),
            }),
        }
    }
}

impl<'de> Deserialize<'de> for FilamentType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Filament {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: FilamentType,
    pub color: String,
    pub total_weight_in_grams: Grams,
    pub remaining_weight_in_grams: Grams,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /api/v1/filaments` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewFilament {
    pub id: Option<RawId>,
    #[serde(rename = "type")]
    pub kind: FilamentType,
    pub color: String,
    pub total_weight_in_grams: Grams,
    pub remaining_weight_in_grams: Option<Grams>,
}

impl NewFilament {
    pub fn into_filament(self, generated_id: String, now: &str) -> Result<Filament, DomainError> {
        let id = match self.id {
            Some(raw) => parse_id("id", &raw.into_string())?,
            None => generated_id,
        };
        let total = self.total_weight_in_grams;
        let remaining = self.remaining_weight_in_grams.unwrap_or(total);
        if remaining > total {
            return Err(DomainError::InvalidField {
                field: "remaining_weight_in_grams".into(),
                message: format!("must not exceed total_weight_in_grams ({remaining} > {total})"),
            });
        }
        Ok(Filament {
            id,
            kind: self.kind,
            color: text("color", self.color)?,
            total_weight_in_grams: total,
            remaining_weight_in_grams: remaining,
            created_at: now.to_string(),
            updated_at: now.to_string(),
        })
    }
}

/// A job's life-cycle state; input in any case (`Cancelled` accepted), output canonical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum JobStatus {
    Queued,
    Running,
    Done,
    Canceled,
    Failed,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Done,
        JobStatus::Canceled,
        JobStatus::Failed,
    ];

    /// Queued and Running jobs hold a reservation on their filament.
    pub fn reserves_filament(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "Queued",
            JobStatus::Running => "Running",
            JobStatus::Done => "Done",
            JobStatus::Canceled => "Canceled",
            JobStatus::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobStatus {
    type Err = DomainError;
    /// Accepts any case, surrounding quotes (`"running"`) and the spelling `Cancelled`.
    fn from_str(s: &str) -> Result<Self, DomainError> {
        let t = s.trim().trim_matches('"').trim().to_ascii_lowercase();
        match t.as_str() {
            "queued" => Ok(JobStatus::Queued),
            "running" => Ok(JobStatus::Running),
            "done" => Ok(JobStatus::Done),
            "canceled" | "cancelled" => Ok(JobStatus::Canceled),
            "failed" => Ok(JobStatus::Failed),
            _ => Err(DomainError::InvalidField {
                field: "status".into(),
                message: format!("must be one of Queued, Running, Done, Canceled, Failed (got {s:?}; Failed is set by the printer's agent)"),
            }),
        }
    }
}

impl<'de> Deserialize<'de> for JobStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrintJob {
    pub id: String,
    pub printer_id: String,
    pub filament_id: String,
    pub filepath: String,
    pub print_weight_in_grams: Grams,
    pub status: JobStatus,
    pub created_at: String,
    pub updated_at: String,
    /// Log index of the entry that made this job Running: the fence for its dispatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u64>,
    /// Why the job failed or was canceled, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /api/v1/print_jobs` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    pub id: Option<RawId>,
    pub printer_id: RawId,
    pub filament_id: RawId,
    pub filepath: String,
    pub print_weight_in_grams: Grams,
    pub status: Option<JobStatus>,
}

impl NewJob {
    pub fn into_job(self, generated_id: String, now: &str) -> Result<PrintJob, DomainError> {
        let id = match self.id {
            Some(raw) => parse_id("id", &raw.into_string())?,
            None => generated_id,
        };
        if let Some(status) = self.status {
            if status != JobStatus::Queued {
                return Err(DomainError::InvalidField {
                    field: "status".into(),
                    message: format!(
                        "a new job is always Queued; leave status out or send \"Queued\" (got {status})"
                    ),
                });
            }
        }
        if self.print_weight_in_grams == Grams::ZERO {
            return Err(DomainError::InvalidField {
                field: "print_weight_in_grams".into(),
                message: "must be greater than 0".into(),
            });
        }
        Ok(PrintJob {
            id,
            printer_id: parse_id("printer_id", &self.printer_id.into_string())?,
            filament_id: parse_id("filament_id", &self.filament_id.into_string())?,
            filepath: text("filepath", self.filepath)?,
            print_weight_in_grams: self.print_weight_in_grams,
            status: JobStatus::Queued,
            created_at: now.to_string(),
            updated_at: now.to_string(),
            attempt: None,
            reason: None,
        })
    }
}
