//! Rule tests for the farm state machine: transitions, reservations, deduction, leniency.

use proptest::prelude::*;

use super::*;
use crate::domain::{NewFilament, NewJob, NewPrinter};

const AT: &str = "2026-12-03T00:00:00Z";

fn propose(state: &mut FarmState, index: u64, command: Command) -> ApplyResult {
    state.apply(
        &Proposal {
            at: AT.into(),
            command,
        },
        index,
    )
}

fn printer(id: &str) -> Command {
    let p: NewPrinter = serde_json::from_value(serde_json::json!({
        "id": id, "company": "Prusa", "model": "MK4"
    }))
    .unwrap();
    Command::CreatePrinter(p.into_printer("unused".into(), AT).unwrap())
}

fn filament(id: &str, total: f64) -> Command {
    let f: NewFilament = serde_json::from_value(serde_json::json!({
        "id": id, "type": "pla", "color": "red", "total_weight_in_grams": total
    }))
    .unwrap();
    Command::CreateFilament(f.into_filament("unused".into(), AT).unwrap())
}

fn job(id: &str, printer: &str, filament: &str, weight: f64) -> Command {
    let j: NewJob = serde_json::from_value(serde_json::json!({
        "id": id, "printer_id": printer, "filament_id": filament,
        "filepath": "/prints/cube.gcode", "print_weight_in_grams": weight
    }))
    .unwrap();
    Command::CreateJob(j.into_job("unused".into(), AT).unwrap())
}

fn status(id: &str, to: JobStatus) -> Command {
    Command::SetJobStatus {
        job_id: id.into(),
        status: to,
        origin: Origin::Client,
        reason: None,
    }
}

fn farm() -> FarmState {
    let mut s = FarmState::default();
    propose(&mut s, 1, printer("p1")).unwrap();
    propose(&mut s, 2, printer("p2")).unwrap();
    propose(&mut s, 3, filament("f1", 100.0)).unwrap();
    s
}

fn remaining(s: &FarmState, f: &str) -> u64 {
    s.filament(f)
        .unwrap()
        .remaining_weight_in_grams
        .milligrams()
}

/// Puts job `j1` (10 g on p1/f1) into `status` through allowed steps.
fn job_in(status_: JobStatus) -> FarmState {
    let mut s = farm();
    propose(&mut s, 10, job("j1", "p1", "f1", 10.0)).unwrap();
    let steps: &[JobStatus] = match status_ {
        JobStatus::Queued => &[],
        JobStatus::Running => &[JobStatus::Running],
        JobStatus::Done => &[JobStatus::Running, JobStatus::Done],
        JobStatus::Canceled => &[JobStatus::Canceled],
        JobStatus::Failed => &[JobStatus::Running],
    };
    for (i, st) in steps.iter().enumerate() {
        propose(&mut s, 11 + i as u64, status("j1", *st)).unwrap();
    }
    if status_ == JobStatus::Failed {
        let cmd = Command::SetJobStatus {
            job_id: "j1".into(),
            status: JobStatus::Failed,
            origin: Origin::Agent {
                node_id: "node1".into(),
                attempt: 11,
            },
            reason: Some("thermal runaway".into()),
        };
        propose(&mut s, 20, cmd).unwrap();
    }
    assert_eq!(s.job("j1").unwrap().status, status_);
    s
}

#[test]
fn every_client_transition_is_allowed_or_refused_as_the_table_says() {
    use JobStatus::*;
    let allowed = [
        (Queued, Running),
        (Running, Done),
        (Queued, Canceled),
        (Running, Canceled),
    ];
    for from in JobStatus::ALL {
        for to in JobStatus::ALL {
            let mut s = job_in(from);
            let before = serde_json::to_string(&s).unwrap();
            let r = propose(&mut s, 50, status("j1", to));
            if allowed.contains(&(from, to)) {
                let Ok(Applied::Job(j)) = r else {
                    panic!("{from} -> {to} should be allowed: {r:?}")
                };
                assert_eq!(j.status, to);
            } else {
                assert!(r.is_err(), "{from} -> {to} should be refused");
                assert_eq!(
                    serde_json::to_string(&s).unwrap(),
                    before,
                    "refusal changed state"
                );
                let code = r.unwrap_err().code();
                if to == Failed {
                    assert_eq!(code, "failed_reserved_for_agent");
                } else {
                    assert_eq!(code, "invalid_transition", "{from} -> {to}");
                }
            }
        }
    }
}

#[test]
fn the_agent_may_fail_only_its_own_running_attempt() {
    let mut s = job_in(JobStatus::Running);
    let fail = |attempt| Command::SetJobStatus {
        job_id: "j1".into(),
        status: JobStatus::Failed,
        origin: Origin::Agent {
            node_id: "node1".into(),
            attempt,
        },
        reason: Some("unplugged".into()),
    };
    let stale = propose(&mut s, 30, fail(7)).unwrap_err();
    assert_eq!(stale.code(), "stale_attempt");
    let Ok(Applied::Job(j)) = propose(&mut s, 31, fail(11)) else {
        panic!("agent failure of its attempt refused")
    };
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.reason.as_deref(), Some("unplugged"));
    assert_eq!(remaining(&s, "f1"), 100_000, "Failed must not deduct");
    assert_eq!(s.available("f1").unwrap().milligrams(), 100_000);
}

#[test]
fn reservation_rule_holds_at_its_exact_boundary() {
    let mut s = farm();
    propose(&mut s, 10, job("j1", "p1", "f1", 60.0)).unwrap();
    // 100 - 60 = 40 available: 40.001 refused, 40 accepted, then nothing more.
    let err = propose(&mut s, 11, job("j2", "p2", "f1", 40.001)).unwrap_err();
    let DomainError::InsufficientFilament {
        available,
        requested,
        ..
    } = err
    else {
        panic!("wrong error {err:?}")
    };
    assert_eq!(
        (available.milligrams(), requested.milligrams()),
        (40_000, 40_001)
    );
    propose(&mut s, 12, job("j2", "p2", "f1", 40.0)).unwrap();
    assert_eq!(
        propose(&mut s, 13, job("j3", "p2", "f1", 0.001))
            .unwrap_err()
            .code(),
        "insufficient_filament"
    );
    // Canceling releases the reservation; Running keeps it.
    propose(&mut s, 14, status("j1", JobStatus::Running)).unwrap();
    assert_eq!(s.available("f1").unwrap(), Grams::ZERO);
    propose(&mut s, 15, status("j2", JobStatus::Canceled)).unwrap();
    assert_eq!(s.available("f1").unwrap().milligrams(), 40_000);
}

#[test]
fn a_job_needs_an_existing_printer_and_filament() {
    let mut s = farm();
    assert_eq!(
        propose(&mut s, 10, job("j1", "nope", "f1", 1.0))
            .unwrap_err()
            .code(),
        "not_found"
    );
    assert_eq!(
        propose(&mut s, 11, job("j1", "p1", "nope", 1.0))
            .unwrap_err()
            .code(),
        "not_found"
    );
    assert!(s.job("j1").is_none());
}

#[test]
fn duplicate_ids_are_conflicts_not_overwrites() {
    let mut s = farm();
    let before = s.printer("p1").unwrap().clone();
    assert_eq!(
        propose(&mut s, 10, printer("p1")).unwrap_err().code(),
        "duplicate_id"
    );
    assert_eq!(s.printer("p1").unwrap(), &before);
    assert_eq!(
        propose(&mut s, 11, filament("f1", 5.0)).unwrap_err().code(),
        "duplicate_id"
    );
    assert_eq!(remaining(&s, "f1"), 100_000);
    propose(&mut s, 12, job("j1", "p1", "f1", 1.0)).unwrap();
    assert_eq!(
        propose(&mut s, 13, job("j1", "p2", "f1", 1.0))
            .unwrap_err()
            .code(),
        "duplicate_id"
    );
}

#[test]
fn one_running_job_per_printer() {
    let mut s = farm();
    propose(&mut s, 10, job("j1", "p1", "f1", 1.0)).unwrap();
    propose(&mut s, 11, job("j2", "p1", "f1", 1.0)).unwrap();
    propose(&mut s, 12, job("j3", "p2", "f1", 1.0)).unwrap();
    propose(&mut s, 13, status("j1", JobStatus::Running)).unwrap();
    let err = propose(&mut s, 14, status("j2", JobStatus::Running)).unwrap_err();
    assert_eq!(err.code(), "printer_busy");
    propose(&mut s, 15, status("j3", JobStatus::Running)).unwrap();
    propose(&mut s, 16, status("j1", JobStatus::Done)).unwrap();
    propose(&mut s, 17, status("j2", JobStatus::Running)).unwrap();
}

#[test]
fn done_deducts_exactly_once_and_never_below_zero() {
    let mut s = farm();
    propose(&mut s, 10, job("j1", "p1", "f1", 5.02)).unwrap();
    propose(&mut s, 11, status("j1", JobStatus::Running)).unwrap();
    propose(&mut s, 12, status("j1", JobStatus::Done)).unwrap();
    assert_eq!(remaining(&s, "f1"), 94_980);
    let again = propose(&mut s, 13, status("j1", JobStatus::Done)).unwrap_err();
    assert_eq!(again.code(), "invalid_transition");
    let agent_again = Command::SetJobStatus {
        job_id: "j1".into(),
        status: JobStatus::Done,
        origin: Origin::Agent {
            node_id: "node1".into(),
            attempt: 11,
        },
        reason: None,
    };
    assert!(propose(&mut s, 14, agent_again).is_err());
    assert_eq!(remaining(&s, "f1"), 94_980);
}

#[test]
fn input_is_lenient_and_output_canonical() {
    for (input, canonical) in [
        ("running", "Running"),
        ("\"RUNNING\"", "Running"),
        ("Cancelled", "Canceled"),
        ("canceled", "Canceled"),
        (" Done ", "Done"),
        ("queued", "Queued"),
    ] {
        let st: JobStatus = input.parse().unwrap();
        assert_eq!(serde_json::to_value(st).unwrap(), canonical);
    }
    assert!("paused".parse::<JobStatus>().is_err());
    let f: NewFilament = serde_json::from_value(serde_json::json!({
        "id": 7, "type": "pEtG", "color": "blue", "total_weight_in_grams": 1000
    }))
    .unwrap();
    let f = f.into_filament("x".into(), AT).unwrap();
    let out = serde_json::to_value(&f).unwrap();
    assert_eq!(out["id"], "7");
    assert_eq!(out["type"], "PETG");
    assert_eq!(out["remaining_weight_in_grams"], 1000);
}

#[test]
fn a_new_job_asking_for_another_status_is_refused() {
    let j: NewJob = serde_json::from_value(serde_json::json!({
        "printer_id": "p1", "filament_id": "f1", "filepath": "a.gcode",
        "print_weight_in_grams": 1, "status": "Running"
    }))
    .unwrap();
    let err = j.into_job("gen".into(), AT).unwrap_err();
    assert_eq!(err.code(), "invalid_field");
    assert!(err.to_string().starts_with("status:"));
}

#[test]
fn remaining_above_total_is_refused() {
    let f: NewFilament = serde_json::from_value(serde_json::json!({
        "type": "PLA", "color": "red", "total_weight_in_grams": 10,
        "remaining_weight_in_grams": 11
    }))
    .unwrap();
    assert!(f.into_filament("g".into(), AT).is_err());
}

#[derive(Debug, Clone)]
enum Op {
    Create { printer: u8, weight_mg: u32 },
    Set { job: u8, to: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 1u32..60_000).prop_map(|(printer, weight_mg)| Op::Create { printer, weight_mg }),
        (0u8..40, 0usize..5).prop_map(|(job, to)| Op::Set { job, to }),
    ]
}

proptest! {
    #[test]
    fn remaining_never_negative_and_reservations_never_exceed_it(ops in prop::collection::vec(op(), 1..120)) {
        let mut s = FarmState::default();
        for p in 0..3 { propose(&mut s, 1, printer(&format!("p{p}"))).unwrap(); }
        propose(&mut s, 2, filament("f1", 200.0)).unwrap();
        let mut created = 0u32;
        let mut done_weight = 0u64;
        for (i, op) in ops.iter().enumerate() {
            let index = 10 + i as u64;
            match op {
                Op::Create { printer, weight_mg } => {
                    let cmd = job(&format!("j{created}"), &format!("p{printer}"), "f1", *weight_mg as f64 / 1000.0);
                    if propose(&mut s, index, cmd).is_ok() { created += 1; }
                }
                Op::Set { job, to } => {
                    let id = format!("j{job}");
                    let weight = s.job(&id).map(|j| j.print_weight_in_grams.milligrams());
                    if let Ok(Applied::Job(j)) = propose(&mut s, index, status(&id, JobStatus::ALL[*to])) {
                        if j.status == JobStatus::Done { done_weight += weight.unwrap_or(0); }
                    }
                }
            }
            let f = s.filament("f1").unwrap();
            prop_assert!(f.remaining_weight_in_grams <= f.total_weight_in_grams);
            prop_assert!(s.reserved("f1") <= f.remaining_weight_in_grams);
            prop_assert_eq!(f.remaining_weight_in_grams.milligrams(), 200_000 - done_weight);
            let mut rebuilt = s.clone();
            rebuilt.rebuild_indexes();
            prop_assert_eq!(rebuilt.reserved("f1"), s.reserved("f1"));
        }
    }
}

fn network_printer(id: &str, node: &str) -> Command {
    let p: NewPrinter = serde_json::from_value(serde_json::json!({
        "id": id, "company": "Bambu Lab", "model": "P1S", "node_id": node,
        "connection": {"kind": "moonraker", "broker": "127.0.0.1:1883", "instance": "k1"}
    }))
    .unwrap();
    Command::CreatePrinter(p.into_printer("unused".into(), AT).unwrap())
}

fn move_printer(id: &str, from: &str, to: &str) -> Command {
    Command::MovePrinter {
        printer_id: id.into(),
        from: from.into(),
        to: to.into(),
    }
}

fn agent_done(node: &str, attempt: u64) -> Command {
    Command::SetJobStatus {
        job_id: "j1".into(),
        status: JobStatus::Done,
        origin: Origin::Agent {
            node_id: node.into(),
            attempt,
        },
        reason: None,
    }
}

#[test]
fn a_network_printer_moves_once_and_only_its_supervisor_reports() {
    let mut s = FarmState::default();
    propose(&mut s, 1, network_printer("k1", "node2")).unwrap();
    propose(&mut s, 2, filament("f1", 100.0)).unwrap();
    propose(&mut s, 3, job("j1", "k1", "f1", 10.0)).unwrap();
    propose(&mut s, 4, status("j1", JobStatus::Running)).unwrap();

    // A compare-and-set: the second of two moves decided on the same knowledge is refused.
    let Ok(Applied::Printer(p)) = propose(&mut s, 5, move_printer("k1", "node2", "node1")) else {
        panic!("move refused")
    };
    assert_eq!(
        (p.node_id.as_deref(), p.supervisor_since),
        (Some("node1"), Some(5))
    );
    let again = propose(&mut s, 6, move_printer("k1", "node2", "node3")).unwrap_err();
    assert_eq!(again.code(), "not_supervisor");
    assert_eq!(s.printer("k1").unwrap().node_id.as_deref(), Some("node1"));

    // The old supervisor's report is fenced off; the new one's finishes the job once.
    let old = propose(&mut s, 7, agent_done("node2", 4)).unwrap_err();
    assert_eq!(old.code(), "not_supervisor");
    assert_eq!(remaining(&s, "f1"), 100_000);
    propose(&mut s, 8, agent_done("node1", 4)).unwrap();
    assert_eq!(remaining(&s, "f1"), 90_000);
    assert_eq!(
        propose(&mut s, 9, agent_done("node1", 4))
            .unwrap_err()
            .code(),
        "stale_attempt",
        "Done is final: deducted once"
    );
    assert_eq!(remaining(&s, "f1"), 90_000);
}

#[test]
fn only_network_printers_move() {
    let mut s = farm();
    let err = propose(&mut s, 10, move_printer("p1", "node1", "node2")).unwrap_err();
    assert_eq!(err.code(), "printer_not_movable");
    let err = propose(&mut s, 11, move_printer("nope", "node1", "node2")).unwrap_err();
    assert_eq!(err.code(), "not_found");
}
