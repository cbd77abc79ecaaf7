//! Pure model of a printer for the virtual driver: how long each cleaned G-code command takes
//! (moves at their feed rate, dwells, heat-up waits) and how the heaters follow their targets.
//! No I/O, no clock: simulated seconds come out, the caller scales and sleeps. Acceleration,
//! firmware queues and kinematics are deliberately ignored.

pub const AMBIENT: f64 = 25.0;
/// Feed rate until the file sets one (mm/s).
const DEFAULT_FEED: f64 = 50.0;
/// Homing speed (mm/s); `G28` moves every axis back to 0 at it.
const HOMING_FEED: f64 = 50.0;

#[derive(Debug, Clone, PartialEq)]
pub struct Heater {
    pub temp: f64,
    /// 0 = off.
    pub target: f64,
    heat_rate: f64,
    cool_rate: f64,
}

impl Heater {
    fn new(heat_rate: f64, cool_rate: f64) -> Heater {
        Heater {
            temp: AMBIENT,
            target: 0.0,
            heat_rate,
            cool_rate,
        }
    }

    fn goal(&self) -> f64 {
        if self.target > 0.0 {
            self.target
        } else {
            AMBIENT
        }
    }

    /// Linear approach to the target (or ambient when off) over `dt` seconds.
    pub fn advance(&mut self, dt: f64) {
        let goal = self.goal();
        self.temp = if self.temp < goal {
            (self.temp + self.heat_rate * dt).min(goal)
        } else {
            (self.temp - self.cool_rate * dt).max(goal)
        };
    }

    /// Seconds until a heat-up wait (`M109`/`M190`) is satisfied: within 1 °C of the target.
    /// Like Marlin's `S`, only waits while heating.
    fn wait_time(&self) -> f64 {
        if self.target <= 0.0 || self.temp >= self.target - 1.0 {
            0.0
        } else {
            (self.target - 1.0 - self.temp) / self.heat_rate
        }
    }
}

#[derive(Debug, Clone)]
pub struct MachineModel {
    pos: [f64; 4],
    relative: bool,
    relative_e: bool,
    /// mm/s
    feed: f64,
    pub hotend: Heater,
    pub bed: Heater,
}

impl Default for MachineModel {
    fn default() -> Self {
        MachineModel {
            pos: [0.0; 4],
            relative: false,
            relative_e: false,
            feed: DEFAULT_FEED,
            hotend: Heater::new(2.5, 1.0),
            bed: Heater::new(0.5, 0.2),
        }
    }
}

fn param(cmd: &str, letter: char) -> Option<f64> {
    cmd.split_whitespace().skip(1).find_map(|w| {
        let mut chars = w.chars();
        let first = chars.next()?;
        (first.eq_ignore_ascii_case(&letter))
            .then(|| chars.as_str().parse().ok())
            .flatten()
    })
}

fn code(cmd: &str) -> Option<(char, u32)> {
    let word = cmd.split_whitespace().next()?;
    let mut chars = word.chars();
    let letter = chars.next()?.to_ascii_uppercase();
    Some((letter, chars.as_str().split('.').next()?.parse().ok()?))
}

impl MachineModel {
    /// Simulated time passes with nothing executing (idle or paused).
    pub fn idle(&mut self, dt: f64) {
        self.hotend.advance(dt);
        self.bed.advance(dt);
    }

    pub fn heaters_off(&mut self) {
        self.hotend.target = 0.0;
        self.bed.target = 0.0;
    }

    /// Execute one cleaned command (no comment, no line number); returns the simulated seconds
    /// it took, during which the heaters moved.
    pub fn execute(&mut self, cmd: &str) -> f64 {
        let secs = match code(cmd) {
            Some(('G', 0 | 1)) => self.travel(cmd),
            Some(('G', 4)) => param(cmd, 'P')
                .map(|ms| ms / 1000.0)
                .or_else(|| param(cmd, 'S'))
                .unwrap_or(0.0),
            Some(('G', 28)) => {
                let [x, y, z, _] = self.pos;
                self.pos[..3].fill(0.0);
                (x * x + y * y + z * z).sqrt() / HOMING_FEED + 1.0
            }
            Some(('G', 90)) => self.set_relative(false, false),
            Some(('G', 91)) => self.set_relative(true, true),
            Some(('M', 82)) => self.set_relative(self.relative, false),
            Some(('M', 83)) => self.set_relative(self.relative, true),
            Some(('G', 92)) => {
                for (i, axis) in ['X', 'Y', 'Z', 'E'].into_iter().enumerate() {
                    if let (Some(v), Some(p)) = (param(cmd, axis), self.pos.get_mut(i)) {
                        *p = v;
                    }
                }
                0.0
            }
            Some(('M', n @ (104 | 109))) => {
                if let Some(t) = param(cmd, 'S').or_else(|| param(cmd, 'R')) {
                    self.hotend.target = t.max(0.0);
                }
                if n == 109 {
                    self.hotend.wait_time()
                } else {
                    0.0
                }
            }
            Some(('M', n @ (140 | 190))) => {
                if let Some(t) = param(cmd, 'S').or_else(|| param(cmd, 'R')) {
                    self.bed.target = t.max(0.0);
                }
                if n == 190 {
                    self.bed.wait_time()
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        let secs = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
        self.idle(secs);
        secs
    }

    fn set_relative(&mut self, xyz: bool, e: bool) -> f64 {
        self.relative = xyz;
        self.relative_e = e;
        0.0
    }

    fn travel(&mut self, cmd: &str) -> f64 {
        if let Some(f) = param(cmd, 'F').filter(|f| *f > 0.0) {
            self.feed = f / 60.0;
        }
        let mut delta = [0.0; 4];
        for (i, axis) in ['X', 'Y', 'Z', 'E'].into_iter().enumerate() {
            let rel = if i == 3 {
                self.relative_e
            } else {
                self.relative
            };
            if let (Some(v), Some(p), Some(d)) =
                (param(cmd, axis), self.pos.get_mut(i), delta.get_mut(i))
            {
                let target = if rel { *p + v } else { v };
                *d = target - *p;
                *p = target;
            }
        }
        let [dx, dy, dz, de] = delta;
        let xyz = (dx * dx + dy * dy + dz * dz).sqrt();
        let dist = if xyz > 0.0 { xyz } else { de.abs() };
        dist / self.feed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn near(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn moves_take_distance_over_feed_rate() {
        let mut m = MachineModel::default();
        assert!(near(m.execute("G1 X30 Y40 F6000"), 0.5)); // 50 mm at 100 mm/s
        assert!(near(m.execute("G1 X30 Y40"), 0.0));
        assert!(near(m.execute("G1 E-2 F2400"), 0.05)); // retraction only: 2 mm at 40 mm/s
        m.execute("G91");
        assert!(near(m.execute("G1 X10 F600"), 1.0));
        m.execute("G90");
        assert!(near(m.execute("G1 X40"), 0.0), "relative move ended at X40");
        m.execute("G92 X0");
        assert!(near(m.execute("G1 X10"), 1.0));
        assert!(near(m.execute("G4 P250"), 0.25));
        assert!(near(m.execute("G4 S2"), 2.0));
    }

    #[test]
    fn heat_up_waits_follow_the_heater_model() {
        let mut m = MachineModel::default();
        assert!(near(m.execute("M104 S200"), 0.0));
        let wait = m.execute("M109 S200");
        assert!(near(wait, (199.0 - 25.0) / 2.5), "{wait}");
        assert!(m.hotend.temp >= 199.0);
        assert!(near(m.execute("M109 S180"), 0.0), "already hotter: no wait");
        let bed = m.execute("M190 S60");
        assert!(near(bed, (59.0 - 25.0) / 0.5), "{bed}");
        m.heaters_off();
        m.idle(10.0);
        assert!(m.hotend.temp < 199.0 && m.bed.temp < 59.0);
        assert!(near(m.execute("FOO"), 0.0));
    }
}
