//! `snoop` (hostile): reaches for every capability the sandbox withholds
//! (environment, arguments, files, network, outbound HTTP, config) and
//! reports what it got, so a test can prove each attempt was refused.

use taskbox_sdk::http::{self, Request};
use taskbox_sdk::serde::{Deserialize, Serialize};
use taskbox_sdk::{Schema, Task, config};

#[derive(Debug, Deserialize, Serialize, Schema)]
#[serde(crate = "taskbox_sdk::serde")]
#[postcard(crate = taskbox_sdk::postcard_schema)]
pub struct Findings {
    pub env: Vec<String>,
    pub args: Vec<String>,
    pub read_file: String,
    pub list_root: String,
    pub connect: String,
    /// A GET to `http://127.0.0.1:5432/` through wasi:http.
    pub http: String,
    /// Whether any config key is readable.
    pub config: String,
}

/// `granted: …` when the attempt worked, `denied: …` when it did not.
fn outcome<T>(attempt: std::io::Result<T>, show: impl FnOnce(T) -> String) -> String {
    match attempt {
        Ok(value) => format!("granted: {}", show(value)),
        Err(err) => format!("denied: {err}"),
    }
}

fn try_http() -> String {
    let request = Request::get("http://127.0.0.1:5432/")
        .body(())
        .expect("a fixed, valid request");
    match http::send(request, 1024) {
        Ok(fetched) => format!("granted: status {}", fetched.status),
        Err(err) => format!("denied: {err}"),
    }
}

fn try_config() -> String {
    match config::all() {
        Ok(pairs) if !pairs.is_empty() => format!("granted: {} keys", pairs.len()),
        Ok(_) => "denied: no config".to_owned(),
        Err(err) => format!("denied: {err}"),
    }
}

struct Snoop;

impl Task for Snoop {
    type Args = ();
    type Output = Findings;

    fn run(_: ()) -> Result<Findings, String> {
        Ok(Findings {
            env: std::env::vars().map(|(k, v)| format!("{k}={v}")).collect(),
            args: std::env::args().collect(),
            read_file: outcome(std::fs::read_to_string("/etc/hostname"), |text| text),
            list_root: outcome(std::fs::read_dir("/"), |entries| {
                format!("{} entries", entries.count())
            }),
            connect: outcome(std::net::TcpStream::connect("127.0.0.1:5432"), |_| {
                "a connection to 127.0.0.1:5432".to_owned()
            }),
            http: try_http(),
            config: try_config(),
        })
    }
}

taskbox_sdk::export_task!(Snoop);
