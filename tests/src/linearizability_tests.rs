//! The checker on hand-written histories that must be accepted or rejected, and on random
//! small histories against a brute-force search over every order.

use super::*;
use JobInput::*;
use JobOutput::*;

const BUDGET: u64 = 1_000_000;

fn op<I, O>(client: usize, invoke: u64, response: u64, input: I, output: O) -> Operation<I, O> {
    Operation::known(client, invoke, response, input, output)
}

fn jobs(ops: &[Operation<JobInput, JobOutput>]) -> Verdict {
    check(&JobModel, ops, BUDGET)
}

fn spool(start: u64, ops: &[Operation<SpoolInput, SpoolOutput>]) -> Verdict {
    check(
        &SpoolModel {
            start_milligrams: start,
        },
        ops,
        BUDGET,
    )
}

fn rejected(v: Verdict) -> bool {
    matches!(v, Verdict::Violation(_))
}

#[test]
fn a_sequential_job_life_is_linearizable() {
    let h = [
        op(0, 0, 1, Create, Created),
        op(
            0,
            2,
            3,
            SetStatus(JobState::Running),
            Status(JobState::Running),
        ),
        op(1, 4, 5, Read, Status(JobState::Running)),
        op(0, 6, 7, SetStatus(JobState::Done), Status(JobState::Done)),
        op(0, 8, 9, SetStatus(JobState::Canceled), InvalidTransition),
        op(1, 10, 11, Create, Duplicate),
    ];
    assert_eq!(jobs(&h), Verdict::Linearizable);
}

#[test]
fn concurrent_operations_may_take_effect_in_either_order() {
    // The read overlaps the create: it may see the job absent or queued.
    for seen in [NotFound, Status(JobState::Queued)] {
        let h = [op(0, 0, 10, Create, Created), op(1, 2, 8, Read, seen)];
        assert_eq!(jobs(&h), Verdict::Linearizable, "{seen:?}");
    }
}

#[test]
fn a_read_after_an_acknowledged_create_must_see_it() {
    let h = [op(0, 0, 10, Create, Created), op(1, 11, 12, Read, NotFound)];
    assert!(rejected(jobs(&h)));
}

#[test]
fn a_job_created_twice_is_rejected() {
    let h = [
        op(0, 0, 10, Create, Created),
        op(1, 20, 30, Create, Created),
    ];
    assert!(rejected(jobs(&h)));
}

#[test]
fn a_duplicate_answer_before_the_job_existed_is_rejected() {
    let h = [
        op(1, 0, 5, Create, Duplicate),
        op(0, 10, 20, Create, Created),
    ];
    assert!(rejected(jobs(&h)));
}

#[test]
fn a_client_told_duplicate_for_its_own_only_create_is_rejected() {
    // What a server that retries a write it already applied would answer.
    let h = [
        op(0, 0, 10, Create, Duplicate),
        op(1, 20, 30, Read, Status(JobState::Queued)),
    ];
    assert!(rejected(jobs(&h)));
}

#[test]
fn a_refused_transition_that_the_state_allowed_is_rejected() {
    let h = [
        op(0, 0, 1, Create, Created),
        op(0, 2, 3, SetStatus(JobState::Running), InvalidTransition),
    ];
    assert!(rejected(jobs(&h)));
}

#[test]
fn an_applied_transition_that_was_not_allowed_is_rejected() {
    let h = [
        op(0, 0, 1, Create, Created),
        op(0, 2, 3, SetStatus(JobState::Done), Status(JobState::Done)),
    ];
    assert!(rejected(jobs(&h)));
}

#[test]
fn printer_busy_needs_a_queued_job_and_changes_nothing() {
    let ok = [
        op(0, 0, 1, Create, Created),
        op(0, 2, 3, SetStatus(JobState::Running), PrinterBusy),
        op(1, 4, 5, Read, Status(JobState::Queued)),
    ];
    assert_eq!(jobs(&ok), Verdict::Linearizable);
    let busy_but_changed = [
        op(0, 0, 1, Create, Created),
        op(0, 2, 3, SetStatus(JobState::Running), PrinterBusy),
        op(1, 4, 5, Read, Status(JobState::Running)),
    ];
    assert!(rejected(jobs(&busy_but_changed)));
    let busy_when_running = [
        op(0, 0, 1, Create, Created),
        op(
            0,
            2,
            3,
            SetStatus(JobState::Running),
            Status(JobState::Running),
        ),
        op(0, 4, 5, SetStatus(JobState::Running), PrinterBusy),
    ];
    assert!(rejected(jobs(&busy_when_running)));
}

#[test]
fn real_time_order_is_respected() {
    let overlapping = [
        op(0, 0, 1, Create, Created),
        op(
            0,
            2,
            10,
            SetStatus(JobState::Running),
            Status(JobState::Running),
        ),
        op(1, 5, 15, Read, Status(JobState::Queued)),
    ];
    assert_eq!(jobs(&overlapping), Verdict::Linearizable);
    let after = [
        op(0, 0, 1, Create, Created),
        op(
            0,
            2,
            10,
            SetStatus(JobState::Running),
            Status(JobState::Running),
        ),
        op(1, 11, 15, Read, Status(JobState::Queued)),
    ];
    assert!(rejected(jobs(&after)));
}

#[test]
fn a_read_cannot_go_back_in_time() {
    let h = [
        op(0, 0, 1, Create, Created),
        op(
            0,
            2,
            100,
            SetStatus(JobState::Running),
            Status(JobState::Running),
        ),
        op(1, 10, 20, Read, Status(JobState::Running)),
        op(2, 30, 40, Read, Status(JobState::Queued)),
    ];
    assert!(rejected(jobs(&h)));
}

#[test]
fn an_unknown_operation_may_or_may_not_take_effect() {
    let seen = [
        Operation::unknown(0, 0, Create),
        op(1, 50, 60, Read, Status(JobState::Queued)),
    ];
    assert_eq!(jobs(&seen), Verdict::Linearizable);
    let never = [
        Operation::unknown(0, 0, Create),
        op(1, 50, 60, Read, NotFound),
    ];
    assert_eq!(jobs(&never), Verdict::Linearizable);
    let late = [
        Operation::unknown(0, 0, Create),
        op(1, 50, 60, Read, NotFound),
        op(1, 70, 80, Read, Status(JobState::Queued)),
    ];
    assert_eq!(jobs(&late), Verdict::Linearizable);
}

#[test]
fn an_unknown_operation_cannot_take_effect_before_it_was_sent_or_twice() {
    let before = [
        op(1, 0, 10, Read, Status(JobState::Queued)),
        Operation::unknown(0, 20, Create),
    ];
    assert!(rejected(jobs(&before)));
    let flapping = [
        Operation::unknown(0, 0, Create),
        op(1, 50, 60, Read, Status(JobState::Queued)),
        op(1, 70, 80, Read, NotFound),
    ];
    assert!(rejected(jobs(&flapping)));
}

#[test]
fn a_spool_loses_each_deduction_exactly_once() {
    let ok = [
        op(
            0,
            0,
            10,
            SpoolInput::Deduct { milligrams: 5 },
            SpoolOutput::Deducted,
        ),
        op(
            1,
            11,
            12,
            SpoolInput::Read,
            SpoolOutput::Remaining { milligrams: 95 },
        ),
    ];
    assert_eq!(spool(100, &ok), Verdict::Linearizable);
    let lost = [
        op(
            0,
            0,
            10,
            SpoolInput::Deduct { milligrams: 5 },
            SpoolOutput::Deducted,
        ),
        op(
            1,
            11,
            12,
            SpoolInput::Read,
            SpoolOutput::Remaining { milligrams: 100 },
        ),
    ];
    assert!(rejected(spool(100, &lost)));
    let twice = [
        op(
            0,
            0,
            10,
            SpoolInput::Deduct { milligrams: 5 },
            SpoolOutput::Deducted,
        ),
        op(
            1,
            11,
            12,
            SpoolInput::Read,
            SpoolOutput::Remaining { milligrams: 90 },
        ),
    ];
    assert!(rejected(spool(100, &twice)));
}

#[test]
fn a_spool_never_goes_below_zero() {
    let h = [
        op(
            0,
            0,
            1,
            SpoolInput::Deduct { milligrams: 8 },
            SpoolOutput::Deducted,
        ),
        op(
            0,
            2,
            3,
            SpoolInput::Deduct { milligrams: 8 },
            SpoolOutput::Deducted,
        ),
        op(
            0,
            4,
            5,
            SpoolInput::Read,
            SpoolOutput::Remaining { milligrams: 0 },
        ),
    ];
    assert_eq!(spool(10, &h), Verdict::Linearizable);
}

#[test]
fn unknown_deductions_are_optional_but_not_reversible() {
    let h = [
        Operation::unknown(0, 0, SpoolInput::Deduct { milligrams: 3 }),
        Operation::unknown(1, 0, SpoolInput::Deduct { milligrams: 4 }),
        op(
            2,
            10,
            11,
            SpoolInput::Read,
            SpoolOutput::Remaining { milligrams: 96 },
        ),
        op(
            2,
            12,
            13,
            SpoolInput::Read,
            SpoolOutput::Remaining { milligrams: 93 },
        ),
    ];
    assert_eq!(spool(100, &h), Verdict::Linearizable);
    let reversed = [
        Operation::unknown(0, 0, SpoolInput::Deduct { milligrams: 3 }),
        op(
            2,
            10,
            11,
            SpoolInput::Read,
            SpoolOutput::Remaining { milligrams: 97 },
        ),
        op(
            2,
            12,
            13,
            SpoolInput::Read,
            SpoolOutput::Remaining { milligrams: 100 },
        ),
    ];
    assert!(rejected(spool(100, &reversed)));
    let impossible_sum = [
        Operation::unknown(0, 0, SpoolInput::Deduct { milligrams: 3 }),
        Operation::unknown(1, 0, SpoolInput::Deduct { milligrams: 4 }),
        op(
            2,
            10,
            11,
            SpoolInput::Read,
            SpoolOutput::Remaining { milligrams: 95 },
        ),
    ];
    assert!(rejected(spool(100, &impossible_sum)));
}

#[test]
fn a_violation_names_what_could_not_be_placed() {
    let h = [op(0, 0, 10, Create, Created), op(1, 11, 12, Read, NotFound)];
    let Verdict::Violation(why) = jobs(&h) else {
        panic!("expected a violation")
    };
    assert!(why.contains("Read") && why.contains("NotFound"), "{why}");
}

#[test]
fn the_budget_makes_a_hard_search_inconclusive() {
    // Many concurrent unknown deductions of distinct weights and an impossible final read:
    // the search must try every subset before it can say no.
    let mut h: Vec<_> = (0..24)
        .map(|i| Operation::unknown(i, 0, SpoolInput::Deduct { milligrams: 1 << i }))
        .collect();
    h.push(op(
        99,
        10,
        11,
        SpoolInput::Read,
        SpoolOutput::Remaining { milligrams: 0 },
    ));
    assert_eq!(
        check(
            &SpoolModel {
                start_milligrams: u64::MAX
            },
            &h,
            10_000
        ),
        Verdict::Inconclusive
    );
}

#[test]
fn check_keys_counts_and_separates_keys() {
    let mut histories = BTreeMap::new();
    histories.insert("a", vec![op(0, 0, 1, Create, Created)]);
    histories.insert(
        "b",
        vec![op(0, 0, 1, Create, Created), op(1, 2, 3, Read, NotFound)],
    );
    histories.insert("c", vec![Operation::unknown(0, 0, Create)]);
    let r = check_keys(histories, |_| JobModel, BUDGET);
    assert_eq!((r.keys, r.operations, r.unknown), (3, 4, 1));
    assert_eq!(r.violations.len(), 1);
    assert_eq!(r.violations[0].0, "b");
    assert!(r.inconclusive.is_empty());
}

use crate::seeded::SeededRng as Rng;

/// Every order of every subset-with-all-known-ops, respecting real time: the definition.
fn brute_force<M: Model>(model: &M, ops: &[Operation<M::Input, M::Output>]) -> bool {
    fn go<M: Model>(
        model: &M,
        ops: &[Operation<M::Input, M::Output>],
        done: &mut Vec<bool>,
        state: &M::State,
    ) -> bool {
        // Finished when every known operation is placed (unknown ones may be left out).
        if ops
            .iter()
            .zip(done.iter())
            .all(|(o, d)| *d || o.response.is_none())
        {
            return true;
        }
        for i in 0..ops.len() {
            if done[i] {
                continue;
            }
            // `i` may go next only if no pending known operation returned before it began.
            let blocked = (0..ops.len())
                .any(|j| !done[j] && j != i && ops[j].response.is_some_and(|r| r < ops[i].invoke));
            if blocked {
                continue;
            }
            if let Some(next) = model.step(state, &ops[i].input, ops[i].output.as_ref()) {
                done[i] = true;
                let ok = go(model, ops, done, &next);
                done[i] = false;
                if ok {
                    return true;
                }
            }
        }
        false
    }
    go(model, ops, &mut vec![false; ops.len()], &model.init())
}

#[test]
fn random_job_histories_agree_with_brute_force() {
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let statuses = [
        JobState::Queued,
        JobState::Running,
        JobState::Done,
        JobState::Canceled,
    ];
    let (mut yes, mut no) = (0, 0);
    for _ in 0..3000 {
        let n = 1 + rng.below(6) as usize;
        let h: Vec<_> = (0..n)
            .map(|c| {
                let invoke = rng.below(20);
                let input = match rng.below(3) {
                    0 => Create,
                    1 => SetStatus(statuses[1 + rng.below(3) as usize]),
                    _ => Read,
                };
                if rng.below(6) == 0 {
                    return Operation::unknown(c, invoke, input);
                }
                let output = match rng.below(6) {
                    0 => Created,
                    1 => Duplicate,
                    2 => NotFound,
                    3 => InvalidTransition,
                    4 => PrinterBusy,
                    _ => Status(statuses[rng.below(4) as usize]),
                };
                op(c, invoke, invoke + rng.below(20), input, output)
            })
            .collect();
        let expected = brute_force(&JobModel, &h);
        let got = check(&JobModel, &h, BUDGET);
        assert_eq!(got == Verdict::Linearizable, expected, "{h:#?}\n{got:?}");
        if expected {
            yes += 1
        } else {
            no += 1
        }
    }
    // Random answers are mostly impossible; a couple of hundred accepted histories is enough
    // to exercise the accepting paths of the search.
    assert!(yes > 100 && no > 100, "both kinds generated: {yes} {no}");
}

#[test]
fn random_spool_histories_agree_with_brute_force() {
    let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
    let (mut yes, mut no) = (0, 0);
    for _ in 0..3000 {
        let n = 1 + rng.below(6) as usize;
        let h: Vec<_> = (0..n)
            .map(|c| {
                let invoke = rng.below(20);
                let input = if rng.below(2) == 0 {
                    SpoolInput::Deduct {
                        milligrams: 1 + rng.below(3),
                    }
                } else {
                    SpoolInput::Read
                };
                if rng.below(5) == 0 {
                    return Operation::unknown(c, invoke, input);
                }
                let output = match input {
                    SpoolInput::Deduct { .. } => SpoolOutput::Deducted,
                    SpoolInput::Read => SpoolOutput::Remaining {
                        milligrams: 4 + rng.below(7),
                    },
                };
                op(c, invoke, invoke + rng.below(20), input, output)
            })
            .collect();
        let model = SpoolModel {
            start_milligrams: 10,
        };
        let expected = brute_force(&model, &h);
        let got = check(&model, &h, BUDGET);
        assert_eq!(got == Verdict::Linearizable, expected, "{h:#?}\n{got:?}");
        if expected {
            yes += 1
        } else {
            no += 1
        }
    }
    assert!(yes > 300 && no > 300, "both kinds generated: {yes} {no}");
}
