//! Grants, against real HTTP servers on loopback: a plugin reaches exactly
//! the origins its `NAME.toml` grants, within its request and response
//! limits and its deadline, while the worker serves other tasks; a secret
//! reaches only its hosts and nothing the task leaves behind.

use crate::common;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::http_server::Loopback;
use common::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use taskbox::sandbox::{Plugins, SandboxConfig};
use taskbox::store::{NewTask, PgStore, Status, TaskRecord, TaskStore};

fn grant(folder: &Path, plugin: &str, grants: &str) {
    std::fs::write(folder.join(format!("{plugin}.toml")), grants).expect("writes the grants file");
}

/// `[http]` granting `server`'s origin, then `more`.
fn allowing(server: &Loopback, more: &str) -> String {
    format!("[http]\nallow = [\"{}\"]\n{more}", server.origin())
}

/// A plugins folder holding `plugin` (granted `grants`) and `add`, and a
/// sandbox loading from it.
fn granted(plugin: &str, grants: &str) -> (tempfile::TempDir, Arc<Plugins>) {
    let folder = plugins_folder_with(&[plugin, "add"]);
    grant(folder.path(), plugin, grants);
    let plugins = plugins_in(folder.path(), SandboxConfig::default());
    (folder, plugins)
}

fn fetch_args(url: &str) -> Value {
    json!({"url": url, "method": null, "headers": [], "body": null, "max_body": null})
}

/// Run `tasks` and ten `add` tasks beside them on one worker; the rows of
/// `tasks`, after checking every `add` succeeded.
async fn run_beside_others(
    store: &PgStore,
    plugins: &Arc<Plugins>,
    tasks: Vec<NewTask>,
) -> Vec<TaskRecord> {
    let ids = store.enqueue(&tasks).await.unwrap();
    let mut others = Vec::new();
    for n in 0..10 {
        others.push(task(plugins, "add", json!({"a": n, "b": 1})).await);
    }
    let other_ids = store.enqueue(&others).await.unwrap();
    drain(store, plugins, worker_config(4)).await;
    for id in other_ids {
        let row = record(store, id).await;
        assert_eq!(
            row.status,
            Status::Success,
            "an ordinary task beside them: {:?}",
            row.error
        );
    }
    let mut rows = Vec::new();
    for id in ids {
        rows.push(record(store, id).await);
    }
    rows
}

/// One `fetch` of `url`, run beside others.
async fn fetch_beside_others(store: &PgStore, plugins: &Arc<Plugins>, url: &str) -> TaskRecord {
    let fetch = task(plugins, "fetch", fetch_args(url)).await;
    let mut rows = run_beside_others(store, plugins, vec![fetch]).await;
    rows.remove(0)
}

fn error_of(row: &TaskRecord) -> &str {
    row.error.as_deref().unwrap_or_default()
}

#[sqlx::test(migrations = false)]
async fn only_the_granted_origin_is_reached(pool: PgPool) {
    let store = store(pool).await;
    let allowed = Loopback::on_loopback().await;
    let other = Loopback::on_loopback().await;
    let (_folder, plugins) = granted("fetch", &allowing(&allowed, ""));
    let port = allowed.addr.port();
    let denied = [
        (other.url("/ok"), other.origin()),
        (
            format!("http://localhost:{port}/ok"),
            format!("http://localhost:{port}"),
        ),
        (
            format!("https://127.0.0.1:{port}/ok"),
            format!("https://127.0.0.1:{port}"),
        ),
    ];
    let mut tasks = vec![task(&plugins, "fetch", fetch_args(&allowed.url("/ok"))).await];
    for (url, _) in &denied {
        tasks.push(task(&plugins, "fetch", fetch_args(url)).await);
    }
    let rows = run_beside_others(&store, &plugins, tasks).await;

    assert_eq!(rows[0].status, Status::Success, "{:?}", rows[0].error);
    let fetched = result_json(&plugins, "fetch", rows[0].result.as_deref().unwrap()).await;
    assert_eq!(
        (fetched["status"].clone(), fetched["body"].clone()),
        (json!(200), json!("ok"))
    );
    for (row, (url, origin)) in rows[1..].iter().zip(&denied) {
        assert_eq!(row.status, Status::Error, "{url}: {:?}", row.error);
        assert!(
            error_of(row).contains(&format!("the host denied {origin}: not granted")),
            "{url}: {}",
            error_of(row)
        );
    }
    assert_eq!(
        allowed.seen().len(),
        1,
        "the granted server saw {:?}",
        allowed.seen()
    );
    assert!(
        other.seen().is_empty(),
        "a denied server was reached: {:?}",
        other.seen()
    );
}

#[sqlx::test(migrations = false)]
async fn a_redirect_to_a_denied_origin_is_not_followed(pool: PgPool) {
    let store = store(pool).await;
    let allowed = Loopback::on_loopback().await;
    let denied = Loopback::on_loopback().await;
    let (_folder, plugins) = granted("fetch", &allowing(&allowed, ""));
    let url = allowed.url(&format!("/redirect?to={}", denied.url("/ok")));
    let rows = [fetch_beside_others(&store, &plugins, &url).await];

    assert_eq!(rows[0].status, Status::Success, "{:?}", rows[0].error);
    let fetched = result_json(&plugins, "fetch", rows[0].result.as_deref().unwrap()).await;
    assert_eq!(fetched["status"], json!(302), "{fetched}");
    assert!(
        denied.seen().is_empty(),
        "the redirect was followed: {:?}",
        denied.seen()
    );
}

/// This machine's name, which its hosts file maps to a loopback or private
/// address: a name a grant may use that leads inside.
async fn a_name_for_this_machine() -> (String, IpAddr) {
    let name = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let resolved: Vec<_> = tokio::net::lookup_host((name.as_str(), 0))
        .await
        .unwrap()
        .collect();
    let ip = resolved
        .iter()
        .map(|a| a.ip())
        .find(|ip| ip.is_ipv4())
        .unwrap_or_else(|| panic!("{name} resolves to no IPv4 address: {resolved:?}"));
    let internal = match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        IpAddr::V6(_) => false,
    };
    assert!(
        internal,
        "this test needs the machine's name to resolve inside; {name} is {ip}"
    );
    (name, ip)
}

#[sqlx::test(migrations = false)]
async fn a_granted_name_leading_inside_is_refused_unless_the_address_is_granted(pool: PgPool) {
    let store = store(pool).await;
    let (name, ip) = a_name_for_this_machine().await;
    let server = Loopback::start(IpAddr::from([0, 0, 0, 0])).await;
    let port = server.addr.port();
    let by_name = format!("http://{name}:{port}");
    let folder = plugins_folder_with(&["fetch", "add"]);
    grant(
        folder.path(),
        "fetch",
        &format!("[http]\nallow = [\"{by_name}\"]\n"),
    );
    let plugins = plugins_in(folder.path(), SandboxConfig::default());
    let url = format!("{by_name}/ok");
    let rows = [fetch_beside_others(&store, &plugins, &url).await];
    assert_eq!(rows[0].status, Status::Error, "{:?}", rows[0].error);
    assert!(
        error_of(&rows[0]).contains(&format!(
            "the host denied {}: it resolves to {ip}, an internal address the grants do not name",
            by_name.to_ascii_lowercase()
        )),
        "{}",
        error_of(&rows[0])
    );
    assert!(server.seen().is_empty(), "reached: {:?}", server.seen());

    // Granting the address too lets the name through; the edited grants
    // file is picked up without a restart.
    grant(
        folder.path(),
        "fetch",
        &format!("[http]\nallow = [\"{by_name}\", \"http://{ip}:{port}\"]\n"),
    );
    let rows = [fetch_beside_others(&store, &plugins, &url).await];
    assert_eq!(rows[0].status, Status::Success, "{:?}", rows[0].error);
    assert_eq!(server.seen().len(), 1);
}

#[sqlx::test(migrations = false)]
async fn a_response_past_the_cap_is_cut_there(pool: PgPool) {
    let store = store(pool).await;
    let server = Loopback::on_loopback().await;
    let (_folder, plugins) = granted(
        "fetch",
        &allowing(
            &server,
            "max_response_bytes = \"256KiB\"
",
        ),
    );
    let hundred_mb = 100 * 1024 * 1024;
    let mut args = fetch_args(&server.url(&format!("/bytes/{hundred_mb}")));
    // The plugin would keep all of it: the host's cap is what cuts.
    args["max_body"] = json!(2 * hundred_mb);
    let mut fetch = task(&plugins, "fetch", args).await;
    fetch.timeout = Some(Duration::from_secs(30));
    let rows = run_beside_others(&store, &plugins, vec![fetch]).await;

    assert_eq!(rows[0].status, Status::Success, "{:?}", rows[0].error);
    let fetched = result_json(&plugins, "fetch", rows[0].result.as_deref().unwrap()).await;
    assert_eq!(fetched["truncated"], json!(true));
    assert_eq!(fetched["body"].as_str().unwrap().len(), 256 * 1024);
}

/// Run `plugin` with `args` (its request to `/never` on a granted loopback
/// server) under a 500 ms deadline, beside others: it must end `timeout`
/// within 100 ms of the deadline, its request sent.
async fn ends_on_its_deadline(pool: PgPool, plugin: &str, args: impl Fn(&Loopback) -> Value) {
    const DEADLINE: Duration = Duration::from_millis(500);
    const SLACK: Duration = Duration::from_millis(100);
    let store = store(pool).await;
    let server = Loopback::on_loopback().await;
    let (_folder, plugins) = granted(plugin, &allowing(&server, ""));
    let mut stuck = task(&plugins, plugin, args(&server)).await;
    stuck.timeout = Some(DEADLINE);
    let rows = run_beside_others(&store, &plugins, vec![stuck]).await;

    assert_eq!(rows[0].status, Status::Timeout, "{:?}", rows[0].error);
    let ran = (rows[0].finished_at.unwrap() - rows[0].started_at.unwrap())
        .to_std()
        .unwrap();
    assert!(
        ran >= DEADLINE && ran <= DEADLINE + SLACK,
        "ended after {ran:?}"
    );
    assert_eq!(server.seen().len(), 1, "the request was sent");
}

#[sqlx::test(migrations = false)]
async fn a_server_that_never_answers_ends_the_task_on_its_deadline(pool: PgPool) {
    ends_on_its_deadline(pool, "fetch", |server| fetch_args(&server.url("/never"))).await;
}

/// A plugin writing a request body that never ends, to a server that never
/// reads it, soon blocks in the host's write: the deadline ends it there,
/// and the tasks beside it run.
#[sqlx::test(migrations = false)]
async fn a_request_body_that_never_ends_ends_the_task_on_its_deadline(pool: PgPool) {
    ends_on_its_deadline(pool, "flood", |server| json!({"url": server.url("/never")})).await;
}

#[sqlx::test(migrations = false)]
async fn requests_past_the_limit_are_denied(pool: PgPool) {
    let store = store(pool).await;
    let server = Loopback::on_loopback().await;
    let (_folder, plugins) = granted("barrage", &allowing(&server, "max_requests = 3\n"));
    let within = task(
        &plugins,
        "barrage",
        json!({"url": server.url("/ok"), "count": 3}),
    )
    .await;
    let over = task(
        &plugins,
        "barrage",
        json!({"url": server.url("/ok"), "count": 4}),
    )
    .await;
    let rows = run_beside_others(&store, &plugins, vec![within, over]).await;

    assert_eq!(rows[0].status, Status::Success, "{:?}", rows[0].error);
    assert_eq!(rows[1].status, Status::Error);
    assert!(
        error_of(&rows[1]).contains("request 4 of 4")
            && error_of(&rows[1])
                .contains("more than 3 requests in one attempt ([http] max_requests)"),
        "{}",
        error_of(&rows[1])
    );
    assert_eq!(server.seen().len(), 6, "three from each task");
}

#[sqlx::test(migrations = false)]
async fn config_is_read_from_the_grants_file(pool: PgPool) {
    let store = store(pool).await;
    let (_folder, plugins) = granted(
        "settings",
        "[config]
greeting = \"hello\"
",
    );
    let tasks = vec![
        task(&plugins, "settings", json!("greeting")).await,
        task(&plugins, "settings", json!("missing")).await,
    ];
    let rows = run_beside_others(&store, &plugins, tasks).await;
    for row in &rows {
        assert_eq!(row.status, Status::Success, "{:?}", row.error);
    }
    assert_eq!(
        result_json(&plugins, "settings", rows[0].result.as_deref().unwrap()).await,
        json!("hello")
    );
    assert_eq!(
        result_json(&plugins, "settings", rows[1].result.as_deref().unwrap()).await,
        json!(null)
    );
}

/// A secret whose variable is unset here is sent nowhere, and its
/// placeholder may not travel in a URL, even to its own host.
#[sqlx::test(migrations = false)]
async fn a_secret_that_is_unset_or_in_a_url_is_refused(pool: PgPool) {
    let store = store(pool).await;
    let server = Loopback::on_loopback().await;
    let secret = format!(
        "[secrets.api_token]\nenv = \"TASKBOX_TEST_NEVER_SET\"\nhosts = [\"{}\"]\n",
        server.origin()
    );
    let (_folder, plugins) = granted("fetch", &allowing(&server, &secret));
    let fetch = plugins.get("fetch").await.unwrap();
    let placeholder = &fetch.grants.secrets[0].placeholder;
    let mut in_a_header = fetch_args(&server.url("/echo"));
    in_a_header["headers"] = json!([["authorization", "Bearer {{api_token}}"]]);
    let in_a_url = fetch_args(&server.url(&format!("/echo?token={placeholder}")));
    let tasks = vec![
        task(&plugins, "fetch", in_a_header).await,
        task(&plugins, "fetch", in_a_url).await,
    ];
    let rows = run_beside_others(&store, &plugins, tasks).await;
    let origin = server.origin();
    for (row, said) in rows.iter().zip([
        format!(
            "{origin}: secret `api_token` is not set in the worker's environment (TASKBOX_TEST_NEVER_SET)"
        ),
        format!("{origin}: secret `api_token` in the URL (secrets travel in headers only)"),
    ]) {
        assert_eq!(row.status, Status::Error, "{:?}", row.error);
        assert!(error_of(row).contains(&said), "{}", error_of(row));
    }
    assert!(server.seen().is_empty(), "sent: {:?}", server.seen());
}

/// `taskbox` commands on a SQLite database of the test's own, with a
/// plugins folder of its own.
struct Setting {
    folder: tempfile::TempDir,
    db: tempfile::TempDir,
}

impl Setting {
    fn new(plugins: &[&str]) -> Setting {
        Setting {
            folder: plugins_folder_with(plugins),
            db: tempfile::tempdir().unwrap(),
        }
    }

    fn taskbox(&self) -> std::process::Command {
        let mut command = taskbox_at(&sqlite_url(self.db.path()));
        command.env("TASKBOX_PLUGINS", self.folder.path());
        command
    }

    fn enqueue(&self, plugin: &str, args: &Value) {
        let output = run(self.taskbox().args(["enqueue", plugin, &args.to_string()]));
        assert!(output.status.success(), "{}", stderr_of(&output));
    }

    fn show(&self, id: i64) -> Value {
        let output = run(self.taskbox().args(["show", &id.to_string(), "--json"]));
        assert!(output.status.success(), "{}", stderr_of(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

/// Every byte a test's SQLite database left in its folder, as text.
fn everything_stored(dir: &Path) -> String {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().is_file() {
            all.extend(std::fs::read(entry.path()).unwrap());
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// A worker process with the secret in its environment, logging at every
/// level: the value reaches the granted server and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_its_host_and_nothing_else() {
    let value = format!("sv-{}", hex::encode(rand::random::<[u8; 12]>()));
    let its_host = Loopback::on_loopback().await;
    let other = Loopback::on_loopback().await;
    let setting = Setting::new(&["fetch", "settings"]);
    let grants = format!(
        "[http]\nallow = [\"{0}\", \"{1}\"]\n[secrets.api_token]\nenv = \"TEST_API_TOKEN\"\nhosts = [\"{0}\"]\n",
        its_host.origin(),
        other.origin()
    );
    grant(setting.folder.path(), "fetch", &grants);
    grant(setting.folder.path(), "settings", &grants);
    let with_token = |url: &str| {
        let mut args = fetch_args(url);
        args["headers"] = json!([["authorization", "Bearer {{api_token}}"]]);
        args
    };
    // Enqueuing needs the plugin, not its secret: no value here.
    setting.enqueue("fetch", &with_token(&its_host.url("/echo")));
    setting.enqueue("fetch", &with_token(&other.url("/echo")));
    setting.enqueue("settings", &json!("api_token"));
    let output = drain_in_a_process(
        &setting,
        &[("TEST_API_TOKEN", &value), ("TASKBOX_LOG", "trace")],
    )
    .await;
    let sent = its_host.seen();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        sent[0].headers["authorization"],
        format!("Bearer {value}").as_str()
    );
    assert!(
        other.seen().is_empty(),
        "the other host got {:?}",
        other.seen()
    );

    let echoed = setting.show(1);
    assert_eq!(echoed["status"], json!("success"), "{echoed}");
    let placeholder = echoed["result"]["body"].as_str().unwrap();
    assert!(
        placeholder.contains("authorization: Bearer taskbox-secret-api_token-"),
        "{placeholder}"
    );
    let refused = setting.show(2);
    assert_eq!(refused["status"], json!("error"), "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains(&format!(
            "the host denied {}: secret `api_token` may be sent to {} only",
            other.origin(),
            its_host.origin()
        )),
        "{refused}"
    );
    let read = setting.show(3);
    assert!(
        read["result"]
            .as_str()
            .unwrap()
            .starts_with("taskbox-secret-api_token-"),
        "{read}"
    );

    let listed = run(setting
        .taskbox()
        .args(["plugins", "--json"])
        .env("TEST_API_TOKEN", &value));
    let listed = stdout_of(&listed);
    assert!(
        listed.contains("\"api_token\"") && listed.contains("TEST_API_TOKEN"),
        "{listed}"
    );
    for (place, text) in [
        ("the worker's log", stderr_of(&output)),
        ("the database", everything_stored(setting.db.path())),
        ("`plugins --json`", listed),
        ("`show`", format!("{echoed}{refused}{read}")),
    ] {
        assert!(!text.contains(&value), "the secret's value is in {place}");
    }
}

/// `taskbox worker --drain` in a process of its own with `env` added,
/// while the test's servers answer on this runtime.
async fn drain_in_a_process(setting: &Setting, env: &[(&str, &str)]) -> std::process::Output {
    let mut worker = setting.taskbox();
    worker.args(["worker", "--drain"]).envs(env.iter().copied());
    let output = tokio::task::spawn_blocking(move || run(&mut worker))
        .await
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    output
}

/// https is verified: a certificate from a CA the system does not trust is
/// refused before any request is sent; one the system store holds (added
/// with `SSL_CERT_FILE`) lets the request through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_is_verified_against_the_trusted_roots() {
    let (server, ca_pem) = Loopback::with_tls().await;
    let setting = Setting::new(&["fetch"]);
    grant(setting.folder.path(), "fetch", &allowing(&server, ""));
    let ca_file = setting.db.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();

    setting.enqueue("fetch", &fetch_args(&server.url("/ok")));
    drain_in_a_process(&setting, &[]).await;
    let untrusted = setting.show(1);
    assert_eq!(untrusted["status"], json!("error"), "{untrusted}");
    assert!(
        untrusted["error"].as_str().unwrap().contains("Tls"),
        "{untrusted}"
    );
    assert!(
        server.seen().is_empty(),
        "sent over an unverified connection: {:?}",
        server.seen()
    );

    setting.enqueue("fetch", &fetch_args(&server.url("/ok")));
    drain_in_a_process(&setting, &[("SSL_CERT_FILE", ca_file.to_str().unwrap())]).await;
    let trusted = setting.show(2);
    assert_eq!(trusted["status"], json!("success"), "{trusted}");
    assert_eq!(
        (
            trusted["result"]["status"].clone(),
            trusted["result"]["body"].clone()
        ),
        (json!(200), json!("ok"))
    );
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn a_bad_grants_file_refuses_its_plugin_alone() {
    let setting = Setting::new(&["fetch", "add"]);
    grant(setting.folder.path(), "fetch", "[htp]\nallow = []\n");
    let listed: Value =
        serde_json::from_slice(&run(setting.taskbox().args(["plugins", "--json"])).stdout).unwrap();
    let row = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["name"] == name)
            .unwrap()
            .clone()
    };
    let refusal = row("fetch")["error"].as_str().unwrap().to_owned();
    assert!(
        refusal.contains("fetch.toml: line 1: unknown field `htp`"),
        "{refusal}"
    );
    assert!(!refusal.contains('\n'), "{refusal}");
    assert_eq!(row("add")["error"], Value::Null, "{listed}");

    let args = fetch_args("http://127.0.0.1:9/").to_string();
    assert_refused(
        &run(setting.taskbox().args(["enqueue", "fetch", &args])),
        "unknown field `htp`",
    );
    setting.enqueue("add", &json!({"a": 1, "b": 2}));
    let output = run(setting.taskbox().args(["worker", "--drain"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(setting.show(1)["status"], json!("success"));

    // Mended, it serves, and the listing shows what it grants.
    grant(
        setting.folder.path(),
        "fetch",
        "[http]\nallow = [\"http://127.0.0.1:9\"]\n[config]\ngreeting = \"hi\"\n",
    );
    let listing = stdout_of(&run(setting.taskbox().arg("plugins")));
    assert!(
        listing.contains(
            "grants: http http://127.0.0.1:9 (16 requests, 1 MiB per response); config greeting"
        ),
        "{listing}"
    );
}
