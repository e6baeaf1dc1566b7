//! Properties of the staged-rollout planner (`sidecar_core::rollout::plan`): never more than
//! `maxConcurrent` rolling, paused moves nobody, canaries first, a failure stops everyone, and a
//! healthy rollout reaches every Deployment.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use sidecar_core::rollout::{Decision, Member, Phase, Progress, Settings, plan};

const TARGET: &str = "r2";

/// A generated Deployment: its name index, whether it carries the target (else the old
/// revision, or nothing), its progress, canary, granted before.
#[derive(Clone, Debug)]
struct Generated {
    carries: Option<bool>,
    progress: Progress,
    canary: bool,
    granted: bool,
}

fn progress() -> impl Strategy<Value = Progress> {
    prop_oneof![
        4 => Just(Progress::Complete),
        3 => Just(Progress::Rolling),
        2 => Just(Progress::Idle),
        1 => Just(Progress::Failed("timed out".into())),
    ]
}

fn fleet() -> impl Strategy<Value = Vec<Generated>> {
    prop::collection::vec(
        (
            prop::option::of(any::<bool>()),
            progress(),
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.2),
        )
            .prop_map(|(carries, progress, canary, granted)| Generated {
                carries,
                progress,
                canary,
                granted,
            }),
        0..40,
    )
}

fn settings() -> impl Strategy<Value = Settings> {
    (1usize..8, any::<bool>(), prop::bool::weighted(0.2)).prop_map(|(max, paused, acknowledged)| Settings {
        max_concurrent: max,
        paused,
        acknowledged,
        deadline: None,
    })
}

struct Fleet {
    names: Vec<String>,
    generated: Vec<Generated>,
}

impl Fleet {
    fn new(generated: Vec<Generated>) -> Self {
        let names = (0..generated.len()).map(|i| format!("d{i:02}")).collect();
        Fleet { names, generated }
    }

    fn members(&self) -> Vec<Member<'_>> {
        self.names
            .iter()
            .zip(&self.generated)
            .map(|(name, g)| Member {
                name,
                carries: g.carries.map(|t| if t { TARGET } else { "r1" }),
                progress: &g.progress,
                canary: g.canary,
                rolling_for: None,
            })
            .collect()
    }

    fn granted(&self) -> BTreeSet<String> {
        self.names
            .iter()
            .zip(&self.generated)
            .filter(|(_, g)| g.granted)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Deployments the decision lets move that do not carry the target yet.
fn moving<'a>(decision: &'a Decision, members: &'a [Member<'_>]) -> Vec<&'a Member<'a>> {
    members
        .iter()
        .filter(|m| m.carries != Some(TARGET) && decision.allows(m.name))
        .collect()
}

fn rolling_before(members: &[Member<'_>], granted: &BTreeSet<String>) -> usize {
    members
        .iter()
        .filter(|m| {
            let was = granted.contains(m.name);
            if m.carries != Some(TARGET) {
                return was;
            }
            match m.progress {
                Progress::Rolling => true,
                Progress::Idle => was,
                _ => false,
            }
        })
        .count()
}

proptest! {
    #[test]
    fn never_more_than_max_concurrent_rolling(generated in fleet(), settings in settings()) {
        let fleet = Fleet::new(generated);
        let members = fleet.members();
        let granted = fleet.granted();
        let decision = plan(TARGET, &settings, &members, &granted);
        let new: Vec<_> = moving(&decision, &members).into_iter().filter(|m| !granted.contains(m.name)).collect();
        if !new.is_empty() {
            prop_assert!(decision.counts.rolling <= settings.max_concurrent, "{decision:?}");
            prop_assert_eq!(rolling_before(&members, &granted) + new.len(), decision.counts.rolling);
        }
        prop_assert_eq!(
            decision.counts.updated + decision.counts.waiting + moving(&decision, &members).len(),
            members.len()
        );
    }

    #[test]
    fn paused_moves_nobody(generated in fleet(), mut settings in settings()) {
        settings.paused = true;
        let fleet = Fleet::new(generated);
        let members = fleet.members();
        let decision = plan(TARGET, &settings, &members, &fleet.granted());
        prop_assert!(moving(&decision, &members).is_empty(), "{decision:?}");
        let held_back = matches!(decision.phase, Phase::Paused | Phase::Stopped { .. });
        prop_assert!(held_back, "{:?}", decision.phase);
    }

    #[test]
    fn canaries_go_first(generated in fleet(), mut settings in settings()) {
        settings.paused = false;
        let fleet = Fleet::new(generated);
        let members = fleet.members();
        let granted = fleet.granted();
        let decision = plan(TARGET, &settings, &members, &granted);
        let canaries_pending = members.iter().any(|m| {
            m.canary
                && !(m.carries == Some(TARGET)
                    && (m.progress == &Progress::Complete
                        || (m.progress == &Progress::Idle && !granted.contains(m.name))))
        });
        if canaries_pending {
            for m in moving(&decision, &members) {
                prop_assert!(m.canary || granted.contains(m.name), "{} moved before the canaries: {decision:?}", m.name);
            }
        }
    }

    #[test]
    fn a_failure_stops_everyone(generated in fleet(), mut settings in settings()) {
        settings.acknowledged = false;
        let fleet = Fleet::new(generated);
        let members = fleet.members();
        let failed = members
            .iter()
            .find(|m| m.carries == Some(TARGET) && matches!(m.progress, Progress::Failed(_)));
        let decision = plan(TARGET, &settings, &members, &fleet.granted());
        if let Some(failed) = failed {
            prop_assert!(moving(&decision, &members).is_empty(), "{decision:?}");
            let stopped = matches!(&decision.phase, Phase::Stopped { deployment, .. } if deployment == failed.name);
            prop_assert!(stopped, "{:?}", decision.phase);
        }
    }

    /// A healthy fleet, each granted Deployment written and its rollout completing a step later:
    /// every Deployment ends on the target, never more than the budget rolling, canaries first.
    #[test]
    fn a_healthy_rollout_reaches_everyone(n in 1usize..30, max in 1usize..6, canaries in prop::collection::vec(prop::bool::weighted(0.2), 30)) {
        let names: Vec<String> = (0..n).map(|i| format!("d{i:02}")).collect();
        let mut carries = vec![Some("r1"); n];
        let mut progress = vec![Progress::Complete; n];
        let settings = Settings { max_concurrent: max, paused: false, acknowledged: false, deadline: None };
        let mut granted = BTreeSet::new();
        let mut rounds = 0;
        loop {
            let members: Vec<Member<'_>> = (0..n)
                .map(|i| Member { name: &names[i], carries: carries[i], progress: &progress[i], canary: canaries[i], rolling_for: None })
                .collect();
            let decision = plan(TARGET, &settings, &members, &granted);
            if decision.phase == Phase::Complete {
                break;
            }
            prop_assert!(decision.counts.rolling <= max);
            let canary_waiting = (0..n).any(|i| canaries[i] && !(carries[i] == Some(TARGET) && progress[i] == Progress::Complete));
            // Rollouts under way complete; granted Deployments are written (and start rolling).
            for i in 0..n {
                if carries[i] == Some(TARGET) && progress[i] == Progress::Rolling {
                    progress[i] = Progress::Complete;
                } else if carries[i] != Some(TARGET) && decision.allows(&names[i]) {
                    prop_assert!(!canary_waiting || canaries[i], "non-canary {} moved first", names[i]);
                    carries[i] = Some(TARGET);
                    progress[i] = Progress::Rolling;
                }
            }
            granted = decision.granted;
            rounds += 1;
            prop_assert!(rounds <= 4 * n + 4, "no progress");
        }
        prop_assert!(carries.iter().all(|c| *c == Some(TARGET)));
    }
}

#[test]
fn a_deadline_fails_a_slow_rollout_and_says_when_to_look_again() {
    let rolling = Progress::Rolling;
    let complete = Progress::Complete;
    let settings = Settings {
        max_concurrent: 2,
        paused: false,
        acknowledged: false,
        deadline: Some(Duration::from_secs(60)),
    };
    let member = |name, carries, progress, took| Member {
        name,
        carries,
        progress,
        canary: false,
        rolling_for: took,
    };
    let members = [
        member("a", Some(TARGET), &rolling, Some(Duration::from_secs(20))),
        member("b", Some("r1"), &complete, None),
        member("c", Some("r1"), &complete, None),
    ];
    let decision = plan(TARGET, &settings, &members, &BTreeSet::new());
    assert_eq!(decision.recheck, Some(Duration::from_secs(40)));
    assert_eq!(decision.counts.rolling, 2, "a, and b in its place: {decision:?}");
    assert!(decision.allows("b") && !decision.allows("c"));

    let late = [
        member("a", Some(TARGET), &rolling, Some(Duration::from_secs(61))),
        member("b", Some("r1"), &complete, None),
    ];
    let decision = plan(TARGET, &settings, &late, &BTreeSet::new());
    match &decision.phase {
        Phase::Stopped { deployment, message } => {
            assert_eq!(deployment, "a");
            assert!(message.contains("progressDeadlineSeconds (60s)"), "{message}");
        }
        other => panic!("not stopped: {other:?}"),
    }
    assert!(!decision.allows("b"));
    assert_eq!(decision.counts.failed, 1);

    let acknowledged = Settings {
        acknowledged: true,
        ..settings
    };
    let decision = plan(TARGET, &acknowledged, &late, &BTreeSet::new());
    assert_eq!(decision.phase, Phase::Progressing);
    assert!(decision.allows("b"), "an acknowledged failure stops nothing");
}

#[test]
fn idle_deployments_need_no_grant_and_a_finished_rollout_is_complete() {
    let idle = Progress::Idle;
    let complete = Progress::Complete;
    let settings = Settings {
        max_concurrent: 1,
        paused: false,
        acknowledged: false,
        deadline: None,
    };
    let members = [
        Member {
            name: "new",
            carries: None,
            progress: &idle,
            canary: false,
            rolling_for: None,
        },
        Member {
            name: "web",
            carries: Some(TARGET),
            progress: &complete,
            canary: false,
            rolling_for: None,
        },
    ];
    let decision = plan(TARGET, &settings, &members, &BTreeSet::new());
    assert!(!decision.allows("new"), "idle Deployments move on their own");
    assert_eq!(decision.counts.waiting, 1);
    assert_eq!(decision.phase, Phase::Progressing);
    let done = [members[1].clone()];
    assert_eq!(
        plan(TARGET, &settings, &done, &BTreeSet::new()).phase,
        Phase::Complete
    );
}
