//! The engine's decisions on reviews that request changes (`Command::RequestChanges`).

use super::*;

fn review(f: &mut Fleet, id: i64, commit: &str) -> CommandOutcome {
    let command = Command::RequestChanges {
        pull: "acme/app#3".parse().unwrap(),
        by: "alice".into(),
        review_id: id,
        commit_id: commit.into(),
        body: "Rename it.".into(),
        notes: vec![ReviewNote { path: Some("src/a.rs".into()), line: Some(4), body: "here".into() }],
    };
    match f.engine.execute(command).unwrap() {
        Reply::Ran(outcome) => outcome,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_review_of_the_verified_head_is_a_round_once_and_one_of_another_head_is_stale() {
    let mut f = fleet();
    let (task, a1) = completed_with_pull(&mut f);
    let head = "b".repeat(40);
    assert_eq!(review(&mut f, 7, &"c".repeat(40)), CommandOutcome::Stale, "a review of another commit");
    assert_eq!(f.task(task).state, TaskState::Completed);

    assert_eq!(review(&mut f, 7, &head.to_uppercase()), CommandOutcome::Applied);
    let t = f.task(task);
    assert_eq!((t.state, t.attempt), (TaskState::Queued, 2));
    let round = t.follow_up.unwrap();
    assert_eq!((round.round, round.pr_number, round.review_id, round.by.as_str()), (1, 3, Some(7), "alice"));
    assert_eq!((round.instruction.as_str(), round.verified_head.as_str()), ("Rename it.", head.as_str()));
    assert_eq!(round.notes[0].path.as_deref(), Some("src/a.rs"));
    assert_eq!(review(&mut f, 7, &head), CommandOutcome::AlreadyRan, "the same review again");
    match review(&mut f, 8, &head) {
        CommandOutcome::NotApplicable(why) => assert!(why.contains("under way on #3"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.task(task).attempt, 2, "nothing more was queued");

    // The round's work completes on a new head: the reviews of the old one are spent.
    hand_in_verified(&mut f, a1, task, 'd');
    assert_eq!(f.task(task).state, TaskState::Completed);
    assert_eq!(review(&mut f, 7, &head), CommandOutcome::AlreadyRan);
    assert_eq!(review(&mut f, 8, &head), CommandOutcome::Stale);
    assert_eq!(f.task(task).attempt, 2);
}

#[test]
fn a_review_past_the_rounds_or_on_an_ended_or_unknown_pull_request_does_not_apply() {
    let clock = ManualClock::new(Timestamp(1_800_000_000_000));
    let settings = EngineSettings { review_rounds: 1, ..EngineSettings::default() };
    let mut f = Fleet { engine: Engine::new(Store::open_in_memory().unwrap(), settings, clock.clone()), clock };
    let pull: IssueRef = "acme/app#3".parse().unwrap();
    assert_eq!(review(&mut f, 1, &"b".repeat(40)), CommandOutcome::NoTask(pull), "no task's pull request");
    let (task, a1) = completed_with_pull(&mut f);
    assert_eq!(review(&mut f, 1, &"b".repeat(40)), CommandOutcome::Applied);
    hand_in_verified(&mut f, a1, task, 'd');
    assert_eq!(f.task(task).state, TaskState::Completed);
    match review(&mut f, 2, &"d".repeat(40)) {
        CommandOutcome::NotApplicable(why) => assert!(why.contains("review_rounds"), "{why}"),
        other => panic!("{other:?}"),
    }
    let merged = Command::ObservePull {
        repo: crate::core::RepoName::parse("acme/app").unwrap(),
        number: 3,
        closed: true,
        merged: true,
        by: Some("bob".into()),
    };
    f.engine.execute(merged).unwrap();
    match review(&mut f, 3, &"d".repeat(40)) {
        CommandOutcome::NotApplicable(why) => assert!(why.contains("merged"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.task(task).attempt, 2);
}
