//! One job on a network printer (Moonraker, Bambu), which prints on its own: what the printer
//! reports is turned into the job's outcome. Pure: phases, answers and `Instant`s in, verdicts
//! out; no I/O, no clock reads.
//!
//! A printer keeps showing the end of its *previous* print (`complete`, `FINISH`, `FAILED`)
//! until the next one begins, so an end state counts only after this job was seen under way —
//! or, when the connection dropped meanwhile, if the printer names this job's file.

use super::{DriverOptions, PrintRequest};
use std::time::{Duration, Instant};

/// What a network printer says it is doing, common to every protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrinterPhase {
    Idle,
    /// Heating, levelling, slicing: the print has begun.
    Preparing,
    Printing,
    Paused,
    Finished,
    Canceled,
    Failed(String),
    /// A state this agent does not know; shown, never acted on.
    Unknown(String),
}

impl PrinterPhase {
    /// Telemetry `state` for this phase.
    pub fn state(&self) -> &'static str {
        match self {
            PrinterPhase::Preparing => "preparing",
            PrinterPhase::Printing => "printing",
            PrinterPhase::Paused => "paused",
            _ => "idle",
        }
    }

    fn active(&self) -> bool {
        matches!(
            self,
            PrinterPhase::Preparing | PrinterPhase::Printing | PrinterPhase::Paused
        )
    }
}

/// What the driver must do with the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    Finished,
    CanceledByPrinter,
    Failed(String),
}

#[derive(Debug)]
pub struct NetJob {
    pub req: PrintRequest,
    created: Instant,
    /// When the start command went out (`None`: waiting for the printer to be reachable).
    sent_at: Option<Instant>,
    seen_active: bool,
    /// The connection dropped after the start was sent: end states may have been missed.
    gap: bool,
    offline_since: Option<Instant>,
    /// Started by an earlier agent: this one only tracks it.
    attached: bool,
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

impl NetJob {
    pub fn new(req: PrintRequest, now: Instant) -> NetJob {
        NetJob {
            req,
            created: now,
            sent_at: None,
            seen_active: false,
            gap: false,
            offline_since: None,
            attached: false,
        }
    }

    /// A print an earlier agent started: already sent, and end states that name this job's
    /// file count (its start may have been missed).
    pub fn attached(req: PrintRequest, now: Instant) -> NetJob {
        NetJob {
            sent_at: Some(now),
            gap: true,
            attached: true,
            ..NetJob::new(req, now)
        }
    }

    pub fn file(&self) -> String {
        self.req.file.to_string_lossy().into_owned()
    }

    pub fn is_sent(&self) -> bool {
        self.sent_at.is_some()
    }

    pub fn seen_active(&self) -> bool {
        self.seen_active
    }

    pub fn sent(&mut self, now: Instant) {
        self.sent_at = Some(now);
    }

    pub fn disconnected(&mut self, now: Instant) {
        self.offline_since.get_or_insert(now);
        if self.sent_at.is_some() {
            self.gap = true;
        }
    }

    pub fn connected(&mut self) {
        self.offline_since = None;
    }

    /// The printer's phase, and whether its current file is this job's (`None`: unknown).
    pub fn observe(&mut self, phase: &PrinterPhase, file_matches: Option<bool>) -> Verdict {
        if self.sent_at.is_none() {
            return Verdict::Continue;
        }
        if phase.active() {
            if file_matches != Some(false) {
                self.seen_active = true;
            }
            return Verdict::Continue;
        }
        let ours = self.seen_active || (self.gap && file_matches == Some(true));
        match phase {
            PrinterPhase::Finished if ours => Verdict::Finished,
            PrinterPhase::Canceled if ours => Verdict::CanceledByPrinter,
            PrinterPhase::Failed(why) if ours => Verdict::Failed(why.clone()),
            PrinterPhase::Idle if self.seen_active => Verdict::Failed(
                "the printer went idle without reporting how the print ended".into(),
            ),
            _ => Verdict::Continue,
        }
    }

    /// The printer refused the start command.
    pub fn rejected(&mut self, reason: &str) -> Verdict {
        if self.seen_active {
            return Verdict::Continue;
        }
        Verdict::Failed(reason.to_string())
    }

    /// Timeouts: a start the printer never took up, a printer unreachable for too long.
    /// `problem` is the last connection problem, quoted in the reason.
    pub fn tick(&mut self, now: Instant, o: &DriverOptions, problem: Option<&str>) -> Verdict {
        let why = problem.map(|p| format!(": {p}")).unwrap_or_default();
        if let Some(since) = self.offline_since {
            if self.sent_at.is_none() && now.duration_since(self.created) >= o.net_start_timeout {
                return Verdict::Failed(format!(
                    "printer not connected within {} s{why}",
                    secs(o.net_start_timeout)
                ));
            }
            if self.sent_at.is_some() && now.duration_since(since) >= o.net_offline_grace {
                return Verdict::Failed(format!(
                    "printer unreachable for {} s during the print{why}",
                    secs(o.net_offline_grace)
                ));
            }
            return Verdict::Continue;
        }
        match self.sent_at {
            Some(sent)
                if self.attached
                    && !self.seen_active
                    && now.duration_since(sent) >= o.net_start_timeout =>
            {
                Verdict::Failed(format!(
                    "the printer shows no print of '{}' to take over within {} s",
                    self.file(),
                    secs(o.net_start_timeout)
                ))
            }
            Some(sent) if !self.seen_active && now.duration_since(sent) >= o.net_start_timeout => {
                Verdict::Failed(format!(
                    "the printer did not start '{}' within {} s (is the file on the printer?)",
                    self.file(),
                    secs(o.net_start_timeout)
                ))
            }
            _ => Verdict::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PrinterPhase as P;

    fn job(now: Instant) -> NetJob {
        NetJob::new(
            PrintRequest {
                job_id: "j1".into(),
                attempt: 7,
                file: "cube.gcode".into(),
                upload: None,
            },
            now,
        )
    }

    #[test]
    fn the_previous_prints_end_state_is_not_this_jobs() {
        let t0 = Instant::now();
        let mut j = job(t0);
        assert_eq!(j.observe(&P::Finished, None), Verdict::Continue, "not sent");
        j.sent(t0);
        assert_eq!(j.observe(&P::Finished, Some(true)), Verdict::Continue);
        assert_eq!(j.observe(&P::Failed("old".into()), None), Verdict::Continue);
        assert_eq!(j.observe(&P::Printing, Some(false)), Verdict::Continue);
        assert_eq!(
            j.observe(&P::Finished, None),
            Verdict::Continue,
            "other file"
        );
        assert_eq!(j.observe(&P::Preparing, None), Verdict::Continue);
        assert_eq!(j.observe(&P::Unknown("X".into()), None), Verdict::Continue);
        assert_eq!(j.observe(&P::Finished, None), Verdict::Finished);
    }

    #[test]
    fn a_taken_over_print_ends_by_the_printers_word_or_times_out() {
        let t0 = Instant::now();
        let o = DriverOptions::default();
        let req = job(t0).req;
        // The print finished while nobody watched: the end state names this file, so it counts.
        let mut j = NetJob::attached(req.clone(), t0);
        assert_eq!(j.observe(&P::Finished, Some(false)), Verdict::Continue);
        assert_eq!(j.observe(&P::Finished, Some(true)), Verdict::Finished);
        // Still printing: tracked to its end.
        let mut j = NetJob::attached(req.clone(), t0);
        assert_eq!(j.observe(&P::Printing, Some(true)), Verdict::Continue);
        assert_eq!(j.observe(&P::Finished, None), Verdict::Finished);
        // The printer shows no such print: failed after the start timeout, saying so.
        let mut j = NetJob::attached(req, t0);
        assert_eq!(j.observe(&P::Idle, None), Verdict::Continue);
        let Verdict::Failed(why) = j.tick(t0 + o.net_start_timeout, &o, None) else {
            panic!("a print that is not there must fail")
        };
        assert!(why.contains("to take over"), "{why}");
    }

    #[test]
    fn end_states_map_to_outcomes() {
        let t0 = Instant::now();
        for (end, want) in [
            (P::Canceled, Verdict::CanceledByPrinter),
            (
                P::Failed("nozzle clog".into()),
                Verdict::Failed("nozzle clog".into()),
            ),
            (
                P::Idle,
                Verdict::Failed(
                    "the printer went idle without reporting how the print ended".into(),
                ),
            ),
        ] {
            let mut j = job(t0);
            j.sent(t0);
            j.observe(&P::Paused, None);
            assert_eq!(j.observe(&end, None), want);
        }
    }

    #[test]
    fn after_a_gap_the_end_counts_only_for_this_file() {
        let t0 = Instant::now();
        let mut j = job(t0);
        j.sent(t0);
        j.disconnected(t0);
        j.connected();
        assert_eq!(j.observe(&P::Finished, None), Verdict::Continue);
        assert_eq!(j.observe(&P::Finished, Some(false)), Verdict::Continue);
        assert_eq!(j.observe(&P::Finished, Some(true)), Verdict::Finished);
    }

    #[test]
    fn timeouts_name_their_cause() {
        let o = DriverOptions::default();
        let t0 = Instant::now();
        let mut j = job(t0);
        j.disconnected(t0);
        let late = t0 + o.net_start_timeout;
        match j.tick(late, &o, Some("connection refused")) {
            Verdict::Failed(r) => {
                assert!(r.contains("not connected") && r.contains("refused"), "{r}")
            }
            v => panic!("{v:?}"),
        }
        let mut j = job(t0);
        j.sent(t0);
        assert_eq!(
            j.tick(t0 + Duration::from_secs(1), &o, None),
            Verdict::Continue
        );
        match j.tick(late, &o, None) {
            Verdict::Failed(r) => assert!(r.contains("did not start 'cube.gcode'"), "{r}"),
            v => panic!("{v:?}"),
        }
        let mut j = job(t0);
        j.sent(t0);
        j.observe(&P::Printing, None);
        j.disconnected(t0);
        assert_eq!(
            j.tick(late, &o, None),
            Verdict::Continue,
            "within the grace"
        );
        match j.tick(t0 + o.net_offline_grace, &o, Some("timeout")) {
            Verdict::Failed(r) => assert!(r.contains("unreachable"), "{r}"),
            v => panic!("{v:?}"),
        }
        j.connected();
        assert_eq!(
            j.tick(t0 + o.net_offline_grace * 2, &o, None),
            Verdict::Continue
        );
        assert_eq!(j.rejected("no"), Verdict::Continue, "already under way");
    }
}
