//! A linearizability checker for recorded client histories, and the models of the objects the
//! torture tests exercise: print jobs (created once, moved through their status transitions)
//! and filament spools (a remaining weight that `Done` deducts from).
//!
//! The search is Wing & Gong's, with Lowe's memoization of (operations linearized, state)
//! pairs: events are walked in time order; a call may be linearized when the model accepts
//! its answer in the current state, a return whose call is still pending forces a backtrack.
//! Histories are checked per key (one job id, one spool), which is sound for operations that
//! touch a single object (P-compositionality). Operations that touch two objects are projected
//! onto each: a job's `Done` is a status change of the job and a deduction from its spool, and
//! the spool's projection is checked on its own, so the check is necessary, not sufficient;
//! the torture tests add a global check of the final state (remaining = start − Σ Done).
//!
//! An operation whose outcome the client never learned (timeout, connection lost mid-request,
//! 503 `outcome_unknown`) has no response time and no answer: it may take effect at any time
//! after its invocation, or never. Never is the same as "after everything else", which the
//! search can always choose because the return of such an operation is placed at infinity; so
//! a model only has to say what the operation would have done.
//!
//! Nothing here talks to a server: histories are plain data, so the checker is tested on
//! histories that must be accepted and histories that must be rejected.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;

/// One client operation as the client saw it. Times are nanoseconds since the recording
/// started, taken just before the request was sent and just after the answer was read.
#[derive(Clone, Debug, PartialEq)]
pub struct Operation<I, O> {
    pub client: usize,
    pub invoke: u64,
    /// `None`: the client never learned the outcome.
    pub response: Option<u64>,
    pub input: I,
    /// `None` exactly when `response` is `None`.
    pub output: Option<O>,
}

impl<I, O> Operation<I, O> {
    pub fn known(client: usize, invoke: u64, response: u64, input: I, output: O) -> Self {
        Operation {
            client,
            invoke,
            response: Some(response),
            input,
            output: Some(output),
        }
    }

    pub fn unknown(client: usize, invoke: u64, input: I) -> Self {
        Operation {
            client,
            invoke,
            response: None,
            input,
            output: None,
        }
    }
}

/// A sequential specification of one object.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;

    fn init(&self) -> Self::State;

    /// The state after `input` is applied to `state` and answered with `output`, or `None` if
    /// the object could not have given that answer in `state`. With `output == None` (outcome
    /// unknown) this must return the state the operation would have produced.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// The outcome of checking one history.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Linearizable,
    /// No linearization exists; the text names the operations that could not be placed.
    Violation(String),
    /// The search exceeded its step budget without deciding.
    Inconclusive,
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    call: bool,
    /// Index of the paired event (call <-> return).
    pair: usize,
}

/// Checks one object's history. `budget` bounds the search steps.
pub fn check<M: Model>(model: &M, ops: &[Operation<M::Input, M::Output>], budget: u64) -> Verdict {
    let n = ops.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Events in time order; at equal times calls come first (they are treated as concurrent,
    // the permissive choice). Unknown operations return at infinity.
    let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.invoke, 0, i));
        let ret = op.response.unwrap_or(u64::MAX).max(op.invoke);
        order.push((ret, 1, i));
    }
    order.sort();
    let m = order.len();
    let mut events: Vec<Event> = order
        .iter()
        .map(|&(_, kind, op)| Event {
            op,
            call: kind == 0,
            pair: 0,
        })
        .collect();
    let mut call_at = vec![0usize; n];
    for (e, ev) in events.iter().enumerate() {
        if ev.call {
            call_at[ev.op] = e;
        }
    }
    for e in 0..m {
        if !events[e].call {
            let c = call_at[events[e].op];
            events[e].pair = c;
            events[c].pair = e;
        }
    }
    // A circular doubly linked list over the events; index `m` is the sentinel.
    let mut next: Vec<usize> = (1..=m).chain([0]).collect();
    let mut prev: Vec<usize> = [m].into_iter().chain(0..m).collect();
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize, r: usize| {
        for x in [e, r] {
            let (p, q) = (prev[x], next[x]);
            next[p] = q;
            prev[q] = p;
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize, r: usize| {
        for x in [r, e] {
            let (p, q) = (prev[x], next[x]);
            next[p] = x;
            prev[q] = x;
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut best: Vec<usize> = Vec::new();
    let mut steps = 0u64;
    let mut e = next[m];
    while next[m] != m {
        steps += 1;
        if steps > budget {
            return Verdict::Inconclusive;
        }
        let ev = events[e];
        if ev.call {
            let op = &ops[ev.op];
            if let Some(after) = model.step(&state, &op.input, op.output.as_ref()) {
                linearized[ev.op / 64] |= 1 << (ev.op % 64);
                if cache.insert((linearized.clone(), after.clone())) {
                    stack.push((e, std::mem::replace(&mut state, after)));
                    lift(&mut next, &mut prev, e, ev.pair);
                    if stack.len() > best.len() {
                        best = stack.iter().map(|(c, _)| events[*c].op).collect();
                    }
                    e = next[m];
                    continue;
                }
                linearized[ev.op / 64] &= !(1 << (ev.op % 64));
            }
            e = next[e];
        } else {
            let Some((c, before)) = stack.pop() else {
                return Verdict::Violation(explain(ops, &best));
            };
            state = before;
            let op = events[c].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut next, &mut prev, c, events[c].pair);
            e = next[c];
        }
    }
    Verdict::Linearizable
}

/// Names the longest linearizable prefix found and the operations left over.
fn explain<I: Debug, O: Debug>(ops: &[Operation<I, O>], best: &[usize]) -> String {
    let placed: HashSet<usize> = best.iter().copied().collect();
    let show = |i: usize| {
        let op = &ops[i];
        let resp = op
            .response
            .map(|r| format!("{:.3}s", r as f64 / 1e9))
            .unwrap_or_else(|| "unknown".into());
        format!(
            "  client {} [{:.3}s .. {}] {:?} -> {:?}",
            op.client,
            op.invoke as f64 / 1e9,
            resp,
            op.input,
            op.output
        )
    };
    let mut text = format!(
        "{} of {} operations linearized at best; that order:\n",
        best.len(),
        ops.len()
    );
    for &i in best {
        text.push_str(&show(i));
        text.push('\n');
    }
    text.push_str("could not place:\n");
    let mut rest: Vec<usize> = (0..ops.len()).filter(|i| !placed.contains(i)).collect();
    rest.sort_by_key(|&i| ops[i].invoke);
    for i in rest.into_iter().take(12) {
        text.push_str(&show(i));
        text.push('\n');
    }
    text
}

/// Totals of a per-key check.
#[derive(Debug, Default)]
pub struct Report<K> {
    pub keys: usize,
    pub operations: usize,
    pub unknown: usize,
    pub violations: Vec<(K, String)>,
    pub inconclusive: Vec<K>,
}

/// The recorded operations of one model's objects, by key.
pub type Histories<K, M> = BTreeMap<K, Vec<Operation<<M as Model>::Input, <M as Model>::Output>>>;

/// Checks each key's history on its own with the model `model_for(key)`.
pub fn check_keys<K, M>(
    histories: Histories<K, M>,
    model_for: impl Fn(&K) -> M,
    budget: u64,
) -> Report<K>
where
    K: Ord + Clone,
    M: Model,
{
    let mut report = Report {
        keys: 0,
        operations: 0,
        unknown: 0,
        violations: Vec::new(),
        inconclusive: Vec::new(),
    };
    for (key, ops) in histories {
        report.keys += 1;
        report.operations += ops.len();
        report.unknown += ops.iter().filter(|o| o.response.is_none()).count();
        match check(&model_for(&key), &ops, budget) {
            Verdict::Linearizable => {}
            Verdict::Violation(why) => report.violations.push((key, why)),
            Verdict::Inconclusive => report.inconclusive.push(key),
        }
    }
    report
}

/// A job's status, as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Queued,
    Running,
    Done,
    Canceled,
    Failed,
}

impl JobState {
    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "Queued" => JobState::Queued,
            "Running" => JobState::Running,
            "Done" => JobState::Done,
            "Canceled" => JobState::Canceled,
            "Failed" => JobState::Failed,
            _ => return None,
        })
    }

    pub fn as_query(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Canceled => "canceled",
            JobState::Failed => "failed",
        }
    }

    /// Transitions a client may ask for (brief §2, rule 3; `Failed` is the agent's).
    pub fn client_may_move(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Queued, Running) | (Running, Done) | (Queued, Canceled) | (Running, Canceled)
        )
    }
}

/// An operation on one job id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobInput {
    Create,
    SetStatus(JobState),
    Read,
}

/// What the API answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutput {
    /// 201.
    Created,
    /// 409 `duplicate_id`.
    Duplicate,
    /// 200 with the job's status (a read, or a status change that was applied).
    Status(JobState),
    /// 404.
    NotFound,
    /// 409 `invalid_transition`.
    InvalidTransition,
    /// 409 `printer_busy`: another job runs on the printer; decided by another key, so the job
    /// model only requires the job to be `Queued` and unchanged.
    PrinterBusy,
}

/// The job at one id: absent, or present with a status.
pub struct JobModel;

impl Model for JobModel {
    type State = Option<JobState>;
    type Input = JobInput;
    type Output = JobOutput;

    fn init(&self) -> Option<JobState> {
        None
    }

    fn step(
        &self,
        state: &Option<JobState>,
        input: &JobInput,
        output: Option<&JobOutput>,
    ) -> Option<Option<JobState>> {
        use JobOutput::*;
        let (next, answer) = match (*input, *state) {
            (JobInput::Create, None) => (Some(JobState::Queued), Created),
            (JobInput::Create, Some(s)) => (Some(s), Duplicate),
            (JobInput::Read, None) => (None, NotFound),
            (JobInput::Read, Some(s)) => (Some(s), Status(s)),
            (JobInput::SetStatus(_), None) => (None, NotFound),
            (JobInput::SetStatus(to), Some(from)) if from.client_may_move(to) => {
                if output == Some(&PrinterBusy)
                    && from == JobState::Queued
                    && to == JobState::Running
                {
                    return Some(Some(from));
                }
                (Some(to), Status(to))
            }
            (JobInput::SetStatus(_), Some(from)) => (Some(from), InvalidTransition),
        };
        match output {
            None => Some(next),
            Some(o) if *o == answer => Some(next),
            Some(_) => None,
        }
    }
}

/// An operation on one spool: a deduction (the spool's side of a job's `Done`) or a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolInput {
    Deduct { milligrams: u64 },
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolOutput {
    Deducted,
    Remaining { milligrams: u64 },
}

/// A spool's remaining weight; deductions never go below zero.
pub struct SpoolModel {
    pub start_milligrams: u64,
}

impl Model for SpoolModel {
    type State = u64;
    type Input = SpoolInput;
    type Output = SpoolOutput;

    fn init(&self) -> u64 {
        self.start_milligrams
    }

    fn step(&self, state: &u64, input: &SpoolInput, output: Option<&SpoolOutput>) -> Option<u64> {
        let (next, answer) = match *input {
            SpoolInput::Deduct { milligrams } => {
                (state.saturating_sub(milligrams), SpoolOutput::Deducted)
            }
            SpoolInput::Read => (*state, SpoolOutput::Remaining { milligrams: *state }),
        };
        match output {
            None => Some(next),
            Some(o) if *o == answer => Some(next),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
#[path = "linearizability_tests.rs"]
mod tests;
