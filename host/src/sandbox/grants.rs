//! A plugin's grants: what `NAME.toml` beside `NAME.wasm` lets it reach.
//! No file grants nothing. The file is read whole and checked before the
//! plugin serves: a key this module does not know, an origin that is not
//! `scheme://host[:port]`, a secret whose hosts are not granted all refuse
//! the plugin with one sentence, as a bad wasm file does. Secrets are read
//! from the worker's environment here and reach the guest only as a
//! placeholder (see [`Secret`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;

use super::outbound::Scrub;
use wasmtime_wasi_config::WasiConfigVariables;

/// The extension of grants files.
pub const GRANTS_EXTENSION: &str = "toml";
/// Requests an attempt may send when `[http]` does not say.
pub const DEFAULT_MAX_REQUESTS: u32 = 16;
/// Bytes of each response body a plugin may read when `[http]` does not say.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 1024 * 1024;
/// A grants file is a few lines; a larger one is refused unread.
pub const MAX_GRANTS_FILE: u64 = 64 * 1024;

/// What a plugin was granted.
#[derive(Default)]
pub struct Grants {
    /// Outbound HTTP; `None`: every request is denied.
    pub http: Option<HttpGrant>,
    /// `[config]`: what `wasi:config/store` answers, besides secrets.
    pub config: BTreeMap<String, String>,
    pub secrets: Vec<Secret>,
    /// `config` and each secret's placeholder, as the guest reads them.
    pub(crate) variables: WasiConfigVariables,
    /// What takes the secrets' values out of responses; `None` without a
    /// secret set here.
    pub(crate) scrub: Option<Arc<Scrub>>,
}

/// `[http]`: the origins a plugin may send requests to, and how much.
#[derive(Debug, Clone)]
pub struct HttpGrant {
    pub allow: Vec<Origin>,
    /// Requests per attempt.
    pub max_requests: u32,
    /// Bytes of each response body.
    pub max_response_bytes: u64,
}

/// A secret: the guest reads [`Secret::placeholder`] under its name; the
/// host puts the value in place of it only in the headers of a request to
/// one of `hosts`.
pub struct Secret {
    pub name: String,
    pub hosts: Vec<Origin>,
    /// The environment variable the value is read from.
    pub env: String,
    /// `None` when that variable is not set here.
    pub(crate) value: Option<String>,
    /// What the guest reads in its place; not secret itself.
    pub placeholder: String,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The value is left out of every rendering, on purpose.
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grants")
            .field("http", &self.http)
            .field("config", &self.config.keys().collect::<Vec<_>>())
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

/// The scheme of an origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// The host of an origin: a name (lowercase) or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl Host {
    /// The host part of a URI (`[::1]` for IPv6), as compared with grants.
    pub fn parse(text: &str) -> Host {
        let bare = text.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(text.to_ascii_lowercase()),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// `scheme://host:port`: what a grant names and a request is checked
/// against, all three parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: Scheme,
    pub host: Host,
    pub port: u16,
}

impl Origin {
    /// The origin of an absolute URI; `None` without a scheme we speak or
    /// a host.
    pub fn of_uri(uri: &http::Uri) -> Option<Origin> {
        let scheme = match uri.scheme_str()? {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return None,
        };
        let host = Host::parse(uri.host()?);
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        Some(Origin { scheme, host, port })
    }

    /// An origin as a grants file writes it: `scheme://host[:port]`, with
    /// nothing before the host and nothing after the port.
    pub fn parse(text: &str) -> Result<Origin, String> {
        let bad =
            |why: &str| format!("`{text}` is not an origin ({why}); write scheme://host[:port]");
        let uri: http::Uri = text.parse().map_err(|_| bad("not a URL"))?;
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("it names a user"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("it has a path"));
        }
        Origin::of_uri(&uri).ok_or_else(|| bad("the scheme must be http or https"))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}", self.host)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// What `taskbox plugins` shows of a plugin's grants: origins, config
/// keys and secret names, never a value.
#[derive(Debug, serde::Serialize)]
pub struct GrantsShown {
    pub http: Option<HttpShown>,
    pub config: Vec<String>,
    pub secrets: Vec<SecretShown>,
}

#[derive(Debug, serde::Serialize)]
pub struct HttpShown {
    pub allow: Vec<String>,
    pub max_requests: u32,
    pub max_response_bytes: u64,
}

#[derive(Debug, serde::Serialize)]
pub struct SecretShown {
    pub name: String,
    pub env: String,
    pub hosts: Vec<String>,
    /// Whether `env` is set where this was loaded.
    pub set: bool,
}

impl GrantsShown {
    /// True when nothing was granted.
    pub fn is_empty(&self) -> bool {
        self.http.is_none() && self.config.is_empty() && self.secrets.is_empty()
    }
}

impl fmt::Display for GrantsShown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(http) = &self.http {
            parts.push(format!(
                "http {} ({} requests, {} per response)",
                http.allow.join(", "),
                http.max_requests,
                crate::size::show(http.max_response_bytes)
            ));
        }
        if !self.config.is_empty() {
            parts.push(format!("config {}", self.config.join(", ")));
        }
        for secret in &self.secrets {
            let unset = if secret.set { "" } else { ", unset here" };
            parts.push(format!(
                "secret {} from {} to {}{unset}",
                secret.name,
                secret.env,
                secret.hosts.join(", ")
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

/// The file as written; every table refuses keys it does not know.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantsFile {
    http: Option<HttpTable>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, SecretTable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpTable {
    allow: Vec<String>,
    max_requests: Option<u32>,
    max_response_bytes: Option<Size>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretTable {
    env: String,
    hosts: Vec<String>,
}

impl Grants {
    /// Parse a grants file, reading secrets with `env`.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Grants, String> {
        let file: GrantsFile = toml::from_str(text).map_err(|err| {
            // toml's message spans lines (it quotes the file); one sentence.
            let message = err.message().trim_end_matches('.').to_owned();
            match err.span() {
                Some(span) => {
                    let line = text[..span.start].lines().count().max(1);
                    format!("line {line}: {message}")
                }
                None => message,
            }
        })?;
        let http = file.http.map(HttpGrant::from_table).transpose()?;
        let mut variables = WasiConfigVariables::new();
        for (key, value) in &file.config {
            variables.insert(key, value);
        }
        let mut secrets = Vec::with_capacity(file.secrets.len());
        for (name, table) in file.secrets {
            if file.config.contains_key(&name) {
                return Err(format!("`{name}` is both a config key and a secret"));
            }
            let secret = Secret::from_table(name, table, http.as_ref(), &env)?;
            variables.insert(&secret.name, &secret.placeholder);
            secrets.push(secret);
        }
        Ok(Grants {
            http,
            config: file.config,
            scrub: Scrub::of(&secrets),
            secrets,
            variables,
        })
    }

    /// The secrets whose variable is not set here.
    pub fn unset_secrets(&self) -> impl Iterator<Item = &Secret> {
        self.secrets.iter().filter(|secret| secret.value.is_none())
    }

    /// What may be shown of these grants.
    pub fn shown(&self) -> GrantsShown {
        let origins = |list: &[Origin]| list.iter().map(ToString::to_string).collect();
        GrantsShown {
            http: self.http.as_ref().map(|http| HttpShown {
                allow: origins(&http.allow),
                max_requests: http.max_requests,
                max_response_bytes: http.max_response_bytes,
            }),
            config: self.config.keys().cloned().collect(),
            secrets: self
                .secrets
                .iter()
                .map(|secret| SecretShown {
                    name: secret.name.clone(),
                    env: secret.env.clone(),
                    hosts: origins(&secret.hosts),
                    set: secret.value.is_some(),
                })
                .collect(),
        }
    }
}

impl HttpGrant {
    fn from_table(table: HttpTable) -> Result<HttpGrant, String> {
        let allow = table
            .allow
            .iter()
            .map(|origin| Origin::parse(origin).map_err(|err| format!("[http] allow: {err}")))
            .collect::<Result<Vec<_>, _>>()?;
        let max_response_bytes = match table.max_response_bytes {
            None => DEFAULT_MAX_RESPONSE_BYTES,
            Some(Size::Bytes(0)) => return Err("[http] max_response_bytes must be above 0".into()),
            Some(Size::Bytes(n)) => n,
            Some(Size::Text(text)) => crate::size::parse(&text)
                .map_err(|err| format!("[http] max_response_bytes: {err}"))?
                as u64,
        };
        Ok(HttpGrant {
            allow,
            max_requests: table.max_requests.unwrap_or(DEFAULT_MAX_REQUESTS),
            max_response_bytes,
        })
    }

    /// Whether requests to `origin` are granted.
    pub fn allows(&self, origin: &Origin) -> bool {
        self.allow.contains(origin)
    }
}

impl Secret {
    fn from_table(
        name: String,
        table: SecretTable,
        http: Option<&HttpGrant>,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Secret, String> {
        let hosts = table
            .hosts
            .iter()
            .map(|origin| {
                Origin::parse(origin).map_err(|err| format!("[secrets.{name}] hosts: {err}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if hosts.is_empty() {
            return Err(format!(
                "[secrets.{name}] hosts is empty: name the origins it may be sent to"
            ));
        }
        if let Some(host) = hosts
            .iter()
            .find(|host| !http.is_some_and(|http| http.allows(host)))
        {
            return Err(format!(
                "[secrets.{name}] may be sent to {host}, which [http] allow does not grant"
            ));
        }
        // Unset is not a refusal: commands that only enqueue or show need
        // the plugin but not its secrets. A request that would carry an
        // unset secret is refused, naming the variable.
        let value = env(&table.env).filter(|value| !value.is_empty());
        if value
            .as_ref()
            .is_some_and(|value| http::HeaderValue::from_str(value).is_err())
        {
            return Err(format!(
                "secret `{name}` (from {}) holds characters a header value cannot carry",
                table.env
            ));
        }
        let placeholder = format!(
            "taskbox-secret-{name}-{}",
            hex::encode(rand::random::<[u8; 16]>())
        );
        Ok(Secret {
            name,
            hosts,
            env: table.env,
            value,
            placeholder,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Grants, String> {
        Grants::parse(text, |name| (name == "TOKEN").then(|| "s3cret".to_owned()))
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let origin = Origin::parse("https://API.example.com").unwrap();
        assert_eq!(origin.to_string(), "https://api.example.com");
        assert_eq!(origin.port, 443);
        assert_eq!(
            Origin::parse("http://127.0.0.1:8787").unwrap().to_string(),
            "http://127.0.0.1:8787"
        );
        assert_eq!(
            Origin::parse("http://[::1]:80/").unwrap().host,
            Host::Ip("::1".parse().unwrap())
        );
        for bad in [
            "api.example.com",
            "ftp://x",
            "https://u:p@x",
            "https://x/path",
            "https://x?q",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_full_file_parses_and_secrets_become_placeholders() {
        let grants = parse(
            r#"
            [http]
            allow = ["https://api.example.com", "http://127.0.0.1:8787"]
            max_requests = 4
            max_response_bytes = "1MiB"
            [config]
            greeting = "hello"
            [secrets.api_token]
            env = "TOKEN"
            hosts = ["https://api.example.com"]
            "#,
        )
        .unwrap();
        let http = grants.http.as_ref().unwrap();
        assert_eq!(
            (http.allow.len(), http.max_requests, http.max_response_bytes),
            (2, 4, 1 << 20)
        );
        let secret = &grants.secrets[0];
        assert_eq!(secret.value.as_deref(), Some("s3cret"));
        assert!(secret.placeholder.starts_with("taskbox-secret-api_token-"));
        assert!(!format!("{grants:?}").contains("s3cret"));
    }

    #[test]
    fn mistakes_are_refused_in_one_sentence() {
        let refused = |text: &str| parse(text).unwrap_err();
        assert!(refused("[htp]\nallow = []").contains("unknown field `htp`"));
        assert!(refused("[http]\nallow = [\"x\"]").contains("is not an origin"));
        assert!(refused("[http]\nallow = []\nmax_respons_bytes = 3").contains("unknown field"));
        let ungranted =
            "[http]\nallow = []\n[secrets.k]\nenv = \"TOKEN\"\nhosts = [\"https://a.b\"]";
        assert!(refused(ungranted).contains("which [http] allow does not grant"));
        assert!(refused("[config]\nk = 1").starts_with("line 2"));
        for text in [ungranted, "[config]\nk = 1", "[htp]"] {
            assert!(!refused(text).contains('\n'), "{text}");
        }
    }
}
