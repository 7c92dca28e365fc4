//! `taskbox queue`: pause and resume a queue on every worker, and list the
//! queues with their counts.

use super::args::QueueAction;
use super::{CliError, input, print_json, print_out};
use crate::store::TaskStore;

pub(super) async fn queue<S: TaskStore>(store: &S, action: QueueAction) -> Result<(), CliError> {
    // The queue settings live in tables a database made by an older
    // taskbox lacks.
    store.migrate().await?;
    match action {
        QueueAction::Pause { name } => set_paused(store, &name, true).await,
        QueueAction::Resume { name } => set_paused(store, &name, false).await,
        QueueAction::List { json } => {
            let queues = store.queues().await?;
            if json {
                return print_json(&queues);
            }
            let mut out = format!("{:<24} {:>9} {:>9}  state\n", "queue", "waiting", "running");
            for queue in &queues {
                let state = if queue.paused { "paused" } else { "serving" };
                out.push_str(&format!(
                    "{:<24} {:>9} {:>9}  {state}\n",
                    queue.name, queue.waiting, queue.running
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
