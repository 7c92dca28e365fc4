//! `taskbox queue`: pause and resume a queue on every worker, set its
//! limits and rate, and list the queues with their counts and settings.

use super::args::QueueAction;
use super::{CliError, input, print_json, print_out};
use crate::store::TaskStore;
use crate::store::flow::FlowChange;

pub(super) async fn queue<S: TaskStore>(store: &S, action: QueueAction) -> Result<(), CliError> {
    // The queue settings live in tables a database made by an older
    // taskbox lacks.
    store.migrate().await?;
    match action {
        QueueAction::Pause { name } => set_paused(store, &name, true).await,
        QueueAction::Resume { name } => set_paused(store, &name, false).await,
        QueueAction::Limit { name, limit } => {
            set_flow(store, &name, FlowChange::Limit(limit)).await
        }
        QueueAction::KeyLimit { name, limit } => {
            set_flow(store, &name, FlowChange::KeyLimit(limit)).await
        }
        QueueAction::Rate {
            name,
            rate,
            per_key,
        } => set_flow(store, &name, FlowChange::Rate { rate, per_key }).await,
        QueueAction::List { json } => {
            let queues = store.queues().await?;
            if json {
                return print_json(&queues);
            }
            let mut out = format!(
                "{:<24} {:>9} {:>9} {:>7} {:>9} {:>16}  state\n",
                "queue", "waiting", "running", "limit", "key limit", "rate"
            );
            let shown = |n: Option<u32>| n.map_or("-".to_owned(), |n| n.to_string());
            for queue in &queues {
                let state = if queue.paused { "paused" } else { "serving" };
                let rate = match &queue.rate {
                    Some(rate) if queue.rate_per_key => format!("{rate} per key"),
                    Some(rate) => rate.clone(),
                    None => "-".to_owned(),
                };
                out.push_str(&format!(
                    "{:<24} {:>9} {:>9} {:>7} {:>9} {:>16}  {state}\n",
                    queue.name,
                    queue.waiting,
                    queue.running,
                    shown(queue.limit),
                    shown(queue.key_limit),
                    rate
                ));
            }
            print_out(&out)
        }
    }
}

async fn set_paused<S: TaskStore>(store: &S, name: &str, paused: bool) -> Result<(), CliError> {
    if !store.set_paused(name, paused).await? {
        return Err(input(format!(
            "there is no queue named `{name}`: no task was ever enqueued in it"
        )));
    }
    let said = if paused {
        "paused: no worker claims its tasks; running ones finish"
    } else {
        "resumed"
    };
    print_out(&format!("queue {name}: {said}\n"))
}

async fn set_flow<S: TaskStore>(store: &S, name: &str, change: FlowChange) -> Result<(), CliError> {
    store.set_flow(name, &change).await?;
    let said = match &change {
        FlowChange::Limit(Some(n)) => format!("at most {n} running at once, on all workers"),
        FlowChange::Limit(None) => "no limit".to_owned(),
        FlowChange::KeyLimit(Some(n)) => format!("at most {n} running at once per key"),
        FlowChange::KeyLimit(None) => "no key limit".to_owned(),
        FlowChange::Rate {
            rate: Some(rate),
            per_key,
        } => format!(
            "at most {} starts per {}{}",
            rate.count,
            humantime::format_duration(rate.window),
            if *per_key { " per key" } else { "" }
        ),
        FlowChange::Rate { rate: None, .. } => "no rate".to_owned(),
    };
    print_out(&format!("queue {name}: {said}\n"))
}
