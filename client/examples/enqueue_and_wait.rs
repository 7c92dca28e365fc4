//! Enqueue an `add` task with typed args and wait for its typed result,
//! with a `taskbox worker` serving the same database:
//!
//! ```text
//! DATABASE_URL=postgres://localhost/app cargo run -p taskbox-client --example enqueue_and_wait -- 40 2
//! ```

use std::time::Duration;

use serde::Serialize;
use taskbox_client::{Client, NewTask};

/// The `add` plugin's args, field for field (a plugin crate would share
/// its own type instead).
#[derive(Serialize)]
struct Pair {
    a: i64,
    b: i64,
}

/// How long the example waits for the worker.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")?;
    let numbers: Vec<i64> = std::env::args()
        .skip(1)
        .map(|arg| arg.parse())
        .collect::<Result<_, _>>()?;
    let [a, b] = numbers[..] else {
        anyhow::bail!("usage: enqueue_and_wait A B");
    };
    let client = Client::connect(&url).await?;
    let id = client
        .enqueue(NewTask::with_args("add", &Pair { a, b })?.max_attempts(2))
        .await?;
    let sum: i64 = client.wait(id, Some(WAIT)).await?;
    println!("{sum}");
    Ok(())
}
