//! Progress of one job: bytes and commands done, paused time, and the time-left estimate from
//! the progress rate. Pure: the caller passes `Instant`s in; no I/O, no clock reads.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Progress {
    started: Instant,
    paused_since: Option<Instant>,
    paused_total: Duration,
    bytes_total: u64,
    bytes_done: u64,
    lines_done: u64,
}

/// Below this much active time or progress, a rate is noise: no estimate.
const MIN_ACTIVE: Duration = Duration::from_secs(1);

impl Progress {
    pub fn new(bytes_total: u64, now: Instant) -> Progress {
        Progress {
            started: now,
            paused_since: None,
            paused_total: Duration::ZERO,
            bytes_total,
            bytes_done: 0,
            lines_done: 0,
        }
    }

    /// Record progress; bytes never go backwards.
    pub fn advance(&mut self, bytes_done: u64, lines_done: u64) {
        self.bytes_done = self.bytes_done.max(bytes_done.min(self.bytes_total));
        self.lines_done = self.lines_done.max(lines_done);
    }

    pub fn complete(&mut self) {
        self.bytes_done = self.bytes_total;
    }

    pub fn set_paused(&mut self, paused: bool, now: Instant) {
        match (paused, self.paused_since) {
            (true, None) => self.paused_since = Some(now),
            (false, Some(since)) => {
                self.paused_total += now.saturating_duration_since(since);
                self.paused_since = None;
            }
            _ => {}
        }
    }

    pub fn bytes_done(&self) -> u64 {
        self.bytes_done
    }
    pub fn bytes_total(&self) -> u64 {
        self.bytes_total
    }
    pub fn lines_done(&self) -> u64 {
        self.lines_done
    }

    pub fn percent(&self) -> f64 {
        if self.bytes_total == 0 {
            return if self.bytes_done == 0 { 0.0 } else { 100.0 };
        }
        (self.bytes_done as f64 * 100.0 / self.bytes_total as f64).clamp(0.0, 100.0)
    }

    /// Time spent printing (not paused) up to `now`.
    pub fn active(&self, now: Instant) -> Duration {
        let paused_now = self
            .paused_since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        now.saturating_duration_since(self.started)
            .saturating_sub(self.paused_total + paused_now)
    }

    /// Seconds left at the average rate so far; `None` until there is enough to go on.
    pub fn time_left_s(&self, now: Instant) -> Option<u64> {
        if self.bytes_done >= self.bytes_total {
            return Some(0);
        }
        let active = self.active(now);
        if active < MIN_ACTIVE || self.bytes_done == 0 {
            return None;
        }
        let rate = self.bytes_done as f64 / active.as_secs_f64();
        let left = (self.bytes_total - self.bytes_done) as f64 / rate;
        left.is_finite().then_some(left.round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_excludes_paused_time() {
        let t0 = Instant::now();
        let mut p = Progress::new(1000, t0);
        assert_eq!(p.time_left_s(t0 + Duration::from_secs(5)), None);
        p.advance(100, 3);
        p.set_paused(true, t0 + Duration::from_secs(10));
        p.set_paused(false, t0 + Duration::from_secs(40));
        // 10 s active for 100 bytes: 900 bytes need 90 s more
        assert_eq!(p.time_left_s(t0 + Duration::from_secs(40)), Some(90));
        p.advance(50, 1); // never backwards
        assert_eq!((p.bytes_done(), p.lines_done()), (100, 3));
        assert!((p.percent() - 10.0).abs() < 1e-9);
        p.complete();
        assert_eq!((p.percent(), p.time_left_s(t0)), (100.0, Some(0)));
    }
}
