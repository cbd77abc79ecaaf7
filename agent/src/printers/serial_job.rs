//! One print streamed over a serial port: the codec's `Sender` fed lazily from the file, and the
//! mapping from acknowledged line numbers back to file bytes for progress. Owns no port and
//! sends no event: the session writes what `transmit` returns and reports outcomes.

use super::codec::{LineError, Sender, SenderConfig};
use super::gcode_file::{FileError, GcodeReader};
use super::progress::Progress;
use super::{DriverOptions, PrintRequest, Telemetry};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub(super) enum JobError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("line {line} of {path} cannot be sent: {source}")]
    Line {
        line: u64,
        path: PathBuf,
        source: LineError,
    },
}

#[derive(Debug)]
pub(super) struct SerialJob {
    pub req: PrintRequest,
    pub sender: Sender,
    pub progress: Progress,
    reader: GcodeReader,
    /// Numbered commands not yet acknowledged: (line number, file bytes up to its end).
    fed: VecDeque<(u64, u64)>,
    /// Line number of the last command handed to the sender (`M110 N0` is line 0).
    last_line: u64,
    eof: bool,
    started: Instant,
}

impl SerialJob {
    /// Open the file; nothing is read or sent yet.
    pub async fn open(
        req: PrintRequest,
        cfg: SenderConfig,
        now: Instant,
    ) -> Result<SerialJob, FileError> {
        let reader = GcodeReader::open(&req.file).await?;
        let progress = Progress::new(reader.bytes_total(), now);
        Ok(SerialJob {
            req,
            sender: Sender::new(cfg),
            progress,
            reader,
            fed: VecDeque::new(),
            last_line: 0,
            eof: false,
            started: now,
        })
    }

    /// Read file lines while the sender wants more (a few commands ahead, never the whole file).
    pub async fn fill(&mut self) -> Result<(), JobError> {
        while self.sender.wants_command() {
            let Some(raw) = self.reader.next_line().await? else {
                self.sender.end_of_input();
                self.eof = true;
                break;
            };
            match self.sender.next_command(raw) {
                Ok(true) => {
                    self.last_line += 1;
                    self.fed
                        .push_back((self.last_line, self.reader.bytes_read()));
                }
                Ok(false) => {}
                Err(source) => {
                    let path = self.reader.path().to_path_buf();
                    return Err(JobError::Line {
                        line: self.reader.lines_read(),
                        path,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Append every line that may go out now to `out`.
    pub fn transmit(&mut self, out: &mut Vec<u8>) {
        while let Some(bytes) = self.sender.poll_transmit() {
            out.extend_from_slice(&bytes);
        }
    }

    pub fn tick(&mut self, now: Instant) {
        let ms = now.saturating_duration_since(self.started).as_millis();
        self.sender.on_tick(u64::try_from(ms).unwrap_or(u64::MAX));
        self.update(now);
    }

    /// Move acknowledged commands into the progress and follow the pause state.
    pub fn update(&mut self, now: Instant) {
        let acked = self.sender.acked();
        while let Some(&(line, bytes)) = self.fed.front() {
            if line >= acked {
                break;
            }
            self.fed.pop_front();
            self.progress.advance(bytes, line);
        }
        self.progress.set_paused(self.sender.is_paused(), now);
    }

    /// The sender's settings for a job: one line in flight unless the firmware has ADVANCED_OK.
    pub fn sender_config(o: &DriverOptions, advanced_ok: bool) -> SenderConfig {
        let window = if advanced_ok { o.window.max(1) } else { 1 };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        SenderConfig {
            window,
            history: SenderConfig::default().history.max(window * 4),
            silence_timeout_ms: ms(o.silence_timeout),
            long_command_timeout_ms: ms(o.long_command_timeout),
            max_probes: o.max_probes,
            ..SenderConfig::default()
        }
    }

    /// Copy the progress into the telemetry.
    pub fn show(&self, tel: &mut Telemetry, now: Instant) {
        let p = &self.progress;
        tel.state = self.state().into();
        tel.bytes_sent = p.bytes_done();
        tel.bytes_total = p.bytes_total();
        tel.lines_sent = p.lines_done();
        tel.progress_percent = Some(p.percent());
        tel.time_left_s = p.time_left_s(now);
    }

    /// Telemetry state while streaming.
    pub fn state(&self) -> &'static str {
        if self.sender.is_paused() {
            "paused"
        } else if self.eof {
            "finishing"
        } else {
            "printing"
        }
    }
}
