//! The supervisor with real processes and tasks.

use super::*;
use crate::supervise::reaper::Scope;
use crate::supervise::unit::Backoff;
use std::time::Duration;

fn fast(mut unit: Unit) -> Unit {
    let ms = Duration::from_millis;
    unit.backoff = Backoff::new(ms(10), ms(40), Duration::from_secs(60));
    unit.grace = ms(300);
    unit
}

fn sh(name: &str, script: &'static str) -> Unit {
    fast(Unit::process(name, move || {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }))
}

fn state(sup: &Supervisor, name: &str) -> Option<UnitState> {
    sup.states()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
}

/// Polls until `probe` holds; generous, since CI machines stall.
async fn eventually(mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if probe() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn running_pid(sup: &Supervisor, name: &str) -> Option<nix::unistd::Pid> {
    match state(sup, name) {
        Some(UnitState::Running { pid, .. }) => pid,
        _ => None,
    }
}

/// Whether a process is gone: not there at all, or a zombie nobody reaped yet.
fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'))
    })
}

#[tokio::test]
async fn restarts_a_failing_process_and_stops_a_running_one() {
    let sup = Supervisor::new(Reaper::start(Scope::Spawned).unwrap());
    sup.start(sh("fails", "exit 3")).unwrap();
    sup.start(sh("sleeps", "exec sleep 100")).unwrap();
    assert!(
        eventually(|| matches!(
            state(&sup, "fails"),
            Some(UnitState::Restarting { restarts: 3.., ref last_exit })
                if last_exit == "exited with status 3"
        ))
        .await,
        "{:?}",
        sup.states()
    );
    assert!(eventually(|| running_pid(&sup, "sleeps").is_some()).await);
    let pid = running_pid(&sup, "sleeps").unwrap();
    sup.stop_all().await;
    assert!(sup.states().is_empty(), "{:?}", sup.states());
    // SIGTERM ended the sleep and it was reaped: no process, not even a zombie.
    assert!(gone(pid.as_raw()), "sleep {pid} is still there");
}

#[tokio::test]
async fn stops_tasks_in_reverse_start_order() {
    let sup = Supervisor::new(Reaper::start(Scope::Spawned).unwrap());
    let order = Arc::new(Mutex::new(Vec::new()));
    for name in ["first", "second", "third"] {
        let order = order.clone();
        sup.start(fast(Unit::task(name, move |mut stop| {
            let order = order.clone();
            async move {
                stop.requested().await;
                order.lock().unwrap().push(name);
                Ok(())
            }
        })))
        .unwrap();
    }
    assert!(
        eventually(|| sup
            .states()
            .iter()
            .all(|(_, s)| matches!(s, UnitState::Running { .. })))
        .await
    );
    sup.stop_all().await;
    assert_eq!(*order.lock().unwrap(), ["third", "second", "first"]);
}

#[tokio::test]
async fn a_unit_is_restarted_and_stopped_by_name_while_the_others_run() {
    let sup = Supervisor::new(Reaper::start(Scope::Spawned).unwrap());
    sup.start(sh("one", "exec sleep 100")).unwrap();
    sup.start(sh("two", "exec sleep 100")).unwrap();
    assert!(
        eventually(|| running_pid(&sup, "one").is_some() && running_pid(&sup, "two").is_some())
            .await
    );
    let (one, two) = (
        running_pid(&sup, "one").unwrap(),
        running_pid(&sup, "two").unwrap(),
    );

    sup.restart("one").unwrap();
    assert!(
        eventually(|| running_pid(&sup, "one").is_some_and(|p| p != one)).await,
        "{:?}",
        sup.states()
    );
    assert!(gone(one.as_raw()), "the old run of one is still there");
    assert_eq!(running_pid(&sup, "two"), Some(two), "two was touched");
    assert!(sup
        .output("one", 10)
        .unwrap()
        .iter()
        .any(|l| l.contains("restarting unit one")));

    sup.stop("two").await.unwrap();
    assert!(gone(two.as_raw()));
    assert_eq!(sup.states().len(), 1);
    let err = sup.restart("two").unwrap_err().to_string();
    assert_eq!(err, "no unit named `two`; expected one of: one");
    let again = sup.start(sh("one", "exit 0")).unwrap_err().to_string();
    assert_eq!(again, "a unit named one is already running");
    sup.stop_all().await;
}

#[tokio::test]
async fn a_process_units_output_is_kept_and_its_whole_group_is_stopped() {
    let sup = Supervisor::new(Reaper::start(Scope::Spawned).unwrap());
    // The shell leaves a child of its own (in its group) and ignores SIGTERM itself.
    sup.start(sh(
        "chatty",
        "echo to stdout; echo to stderr >&2; sleep 100 & echo \"child $!\"; trap '' TERM; wait",
    ))
    .unwrap();
    let child = {
        let mut found = None;
        assert!(
            eventually(|| {
                found = sup.output("chatty", 10).unwrap().iter().find_map(|l| {
                    l.split_once("stdout: child ")
                        .and_then(|(_, pid)| pid.parse::<i32>().ok())
                });
                found.is_some()
            })
            .await,
            "{:?}",
            sup.output("chatty", 10)
        );
        found.unwrap()
    };
    let lines = sup.output("chatty", 10).unwrap();
    assert!(
        lines.iter().any(|l| l.ends_with("stdout: to stdout")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with("stderr: to stderr")),
        "{lines:?}"
    );
    let shell = running_pid(&sup, "chatty").unwrap();
    sup.stop("chatty").await.unwrap();
    assert!(gone(shell.as_raw()), "the unit's shell survived its stop");
    // The grandchild is not ours to reap on a host: it is killed, then init reaps it.
    assert!(
        eventually(|| gone(child)).await,
        "the unit's child {child} survived its stop"
    );
}
