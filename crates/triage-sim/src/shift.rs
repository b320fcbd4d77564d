//! Domain shift: which tasks the traffic shifts to, and the traffic itself.
//!
//! The starting policy knows some tasks of the table; the traffic is drawn, with replacement and
//! seeded, from the training prompts of the others, and the serving policy is judged on their
//! test prompts. Without a shift the traffic is one split's prompts in a shuffled order.

use triage_train::Prepared;

use crate::SimError;
use crate::run::SimOptions;

/// Whether prompt `p` is in one of `tasks` (every prompt is, without a shift).
pub(crate) fn in_tasks(table: &Prepared, tasks: Option<&[String]>, p: usize) -> bool {
    tasks.is_none_or(|tasks| {
        table.outcomes.prompts[p]
            .task
            .as_ref()
            .is_some_and(|t| tasks.contains(t))
    })
}

/// The prompts to replay, in order: under a shift, `o.requests` draws with replacement from the
/// shifted tasks' training prompts; otherwise the traffic split shuffled, cut to `o.requests`
/// or, past its size, topped up with draws with replacement.
pub(crate) fn traffic(o: &SimOptions, table: &Prepared, shifted: Option<&[String]>) -> Vec<usize> {
    let mut rng = fastrand::Rng::with_seed(o.seed);
    if shifted.is_some() {
        let pool: Vec<usize> = triage_train::training_prompts(&table.outcomes)
            .into_iter()
            .filter(|&p| in_tasks(table, shifted, p))
            .collect();
        if pool.is_empty() {
            return pool;
        }
        let n = o.requests.unwrap_or(pool.len());
        return (0..n).map(|_| pool[rng.usize(..pool.len())]).collect();
    }
    let mut traffic = table.outcomes.indices(o.traffic_split);
    rng.shuffle(&mut traffic);
    match o.requests {
        Some(n) if n > traffic.len() && !traffic.is_empty() => {
            let extra: Vec<usize> = (traffic.len()..n)
                .map(|_| traffic[rng.usize(..traffic.len())])
                .collect();
            traffic.extend(extra);
        }
        Some(n) => traffic.truncate(n),
        None => {}
    }
    traffic
}

/// `shift`, or the table's tasks other than `start` (an error when either names a task the table
/// lacks, when they overlap, or when nothing is left to shift to).
pub(crate) fn shifted_tasks(
    table: &Prepared,
    start: &[String],
    shift: Option<&[String]>,
) -> Result<Vec<String>, SimError> {
    let mut tasks: Vec<String> = table
        .outcomes
        .prompts
        .iter()
        .filter_map(|p| p.task.clone())
        .collect();
    tasks.sort_unstable();
    tasks.dedup();
    let named = start.iter().chain(shift.unwrap_or_default());
    let unknown: Vec<&String> = named.filter(|t| !tasks.contains(t)).collect();
    if !unknown.is_empty() {
        return Err(SimError::Usage(format!(
            "--start-tasks/--shift-tasks: {unknown:?} not in the table, whose tasks are: {}",
            tasks.join(", ")
        )));
    }
    if let Some(shift) = shift {
        if shift.iter().any(|t| start.contains(t)) {
            return Err(SimError::Usage(
                "--shift-tasks and --start-tasks overlap: the shift is to tasks the start has not seen"
                    .into(),
            ));
        }
        tasks.retain(|t| shift.contains(t));
    }
    tasks.retain(|t| !start.contains(t));
    if tasks.is_empty() {
        return Err(SimError::Usage(
            "--start-tasks names every task of the table: nothing to shift to".into(),
        ));
    }
    Ok(tasks)
}
