//! `fetch`: makes one HTTP request and returns the response, its body cut
//! at `max_body` bytes. Header values may name config values as `{{key}}`,
//! which is how a request carries a secret (as a placeholder the worker
//! swaps for the real value on the way out). Redirects are not followed: a
//! 3xx comes back as it is.

use taskbox_sdk::http::{self, Method, Request};
use taskbox_sdk::serde::{Deserialize, Serialize};
use taskbox_sdk::{Schema, Task, config};

/// How much of a response body comes back when the args do not say.
pub const DEFAULT_MAX_BODY: u32 = 64 * 1024;

#[derive(Debug, Deserialize, Serialize, Schema)]
#[serde(crate = "taskbox_sdk::serde")]
#[postcard(crate = taskbox_sdk::postcard_schema)]
pub struct FetchArgs {
    pub url: String,
    /// `GET` when absent; case does not matter.
    pub method: Option<String>,
    /// Each `{{key}}` in a value becomes the config value of `key`.
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    /// [`DEFAULT_MAX_BODY`] when absent.
    pub max_body: Option<u32>,
}

#[derive(Debug, Deserialize, Serialize, Schema)]
#[serde(crate = "taskbox_sdk::serde")]
#[postcard(crate = taskbox_sdk::postcard_schema)]
pub struct Fetched {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body as UTF-8, invalid sequences replaced.
    pub body: String,
    /// The body went on past what is here.
    pub truncated: bool,
}

/// `template` with each `{{key}}` replaced by the config value of `key`;
/// a `{{` without a closing `}}` is kept as it is.
fn fill_in_config(template: &str) -> Result<String, String> {
    let mut filled = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let Some(close) = rest[open + 2..].find("}}") else {
            break;
        };
        let key = &rest[open + 2..open + 2 + close];
        let value =
            config::get(key)?.ok_or_else(|| format!("config key `{key}` is not configured"))?;
        filled.push_str(&rest[..open]);
        filled.push_str(&value);
        rest = &rest[open + 2 + close + 2..];
    }
    filled.push_str(rest);
    Ok(filled)
}

struct Fetch;

impl Task for Fetch {
    type Args = FetchArgs;
    type Output = Fetched;

    fn run(args: FetchArgs) -> Result<Fetched, String> {
        let method = match &args.method {
            Some(method) => Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .map_err(|err| format!("method `{method}`: {err}"))?,
            None => Method::GET,
        };
        let mut request = Request::builder().method(method).uri(args.url.as_str());
        for (name, value) in &args.headers {
            let value = fill_in_config(value).map_err(|err| format!("header `{name}`: {err}"))?;
            request = request.header(name.as_str(), value);
        }
        let request = request
            .body(args.body.unwrap_or_default())
            .map_err(|err| format!("the request is invalid: {err}"))?;
        let max_body = args.max_body.unwrap_or(DEFAULT_MAX_BODY);
        let fetched = http::send(request, max_body as usize)?;
        Ok(Fetched {
            status: fetched.status,
            headers: fetched.headers,
            body: String::from_utf8_lossy(&fetched.body).into_owned(),
            truncated: fetched.truncated,
        })
    }
}

taskbox_sdk::export_task!(Fetch);
