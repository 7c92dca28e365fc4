//! Outbound HTTP for one attempt: the `wasi:http` hook every request a
//! guest sends passes through. A request goes out only when its origin
//! (scheme, host and port) is granted, the attempt has requests left, and
//! every secret placeholder in its headers is headed to one of that
//! secret's hosts (then the value replaces it). The name is resolved here
//! and the address checked is the one connected to: a loopback, private or
//! link-local address is refused unless the grants name it (or
//! `localhost`, for loopback). No redirect is followed, each response body
//! is cut at the grant's size, a secret's value coming back is replaced by
//! its placeholder, and the attempt's deadline bounds all of it. A denied
//! request fails in the guest with `HTTP-request-denied`; the reason is kept
//! for the task's error.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::grants::{Grants, Host, HttpGrant, Origin, Scheme, Secret};

/// Reasons for denials kept per attempt; the rest are counted.
const KEPT_DENIALS: usize = 4;

/// What a response hands back beside its head: the connection's own task.
type Connection = Box<dyn Future<Output = Result<(), Error>> + Send>;
type Sent = Box<dyn Future<Output = Result<(http::Response<WasiBody>, Connection), Error>> + Send>;

/// The hook state of one attempt.
pub(crate) struct Outbound {
    grants: Arc<Grants>,
    deadline: Instant,
    /// Requests asked for so far, denied ones included.
    asked: u32,
    /// Shared with requests in flight, which may be denied after name
    /// lookup. Made on the first request: an attempt that sends none pays
    /// nothing.
    denials: Option<Arc<Mutex<Denials>>>,
}

/// Why requests of one attempt were denied.
#[derive(Debug, Default)]
pub(crate) struct Denials {
    reasons: Vec<String>,
    more: usize,
}

impl Denials {
    fn record(&mut self, reason: String) {
        if self.reasons.len() < KEPT_DENIALS {
            self.reasons.push(reason);
        } else {
            self.more += 1;
        }
    }

    /// `the host denied …`, or `None` when nothing was denied.
    pub(crate) fn summary(&self) -> Option<String> {
        if self.reasons.is_empty() {
            return None;
        }
        let mut text = format!("the host denied {}", self.reasons.join("; "));
        if self.more > 0 {
            text.push_str(&format!("; and {} more", self.more));
        }
        Some(text)
    }
}

impl Outbound {
    pub(crate) fn new(grants: Arc<Grants>, deadline: Instant) -> Self {
        Outbound {
            grants,
            deadline,
            asked: 0,
            denials: None,
        }
    }

    /// The attempt's denials, if it sent any request.
    pub(crate) fn denials(&self) -> Option<String> {
        let denials = self.denials.as_ref()?;
        denials.lock().unwrap_or_else(|e| e.into_inner()).summary()
    }

    /// Check a request against the grants and put secrets in; the reason
    /// when it may not go.
    fn admit(
        &mut self,
        mut request: http::Request<WasiBody>,
    ) -> Result<(http::Request<WasiBody>, Origin), String> {
        self.asked = self.asked.saturating_add(1);
        let uri = request.uri().to_string();
        let origin = Origin::of_uri(request.uri())
            .ok_or_else(|| format!("`{uri}`: not an http or https URL with a host"))?;
        let Some(http) = &self.grants.http else {
            return Err(format!("{origin}: the plugin has no [http] grant"));
        };
        if !http.allows(&origin) {
            return Err(format!("{origin}: not granted"));
        }
        if self.asked > http.max_requests {
            return Err(format!(
                "{origin}: more than {} requests in one attempt ([http] max_requests)",
                http.max_requests
            ));
        }
        for secret in &self.grants.secrets {
            let placeholder = secret.placeholder.as_bytes();
            if find(uri.as_bytes(), placeholder).is_some() {
                return Err(format!(
                    "{origin}: secret `{}` in the URL (secrets travel in headers only)",
                    secret.name
                ));
            }
            for value in request.headers_mut().values_mut() {
                if find(value.as_bytes(), placeholder).is_none() {
                    continue;
                }
                if !secret.hosts.contains(&origin) {
                    return Err(format!(
                        "{origin}: secret `{}` may be sent to {} only",
                        secret.name,
                        join(&secret.hosts)
                    ));
                }
                let Some(real) = &secret.value else {
                    return Err(format!(
                        "{origin}: secret `{}` is not set in the worker's environment ({})",
                        secret.name, secret.env
                    ));
                };
                let swapped = replace_all(value.as_bytes(), placeholder, real.as_bytes())
                    .expect("the placeholder was found");
                *value = http::HeaderValue::from_bytes(&swapped).map_err(|_| {
                    format!(
                        "{origin}: a header with secret `{}` is malformed",
                        secret.name
                    )
                })?;
            }
        }
        Ok((request, origin))
    }

    fn denials_handle(&mut self) -> Arc<Mutex<Denials>> {
        self.denials.get_or_insert_with(Default::default).clone()
    }
}

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        let denials = self.denials_handle();
        match self.admit(request) {
            Ok((request, origin)) => {
                let exchange = Exchange {
                    origin,
                    grants: self.grants.clone(),
                    denials,
                };
                let deadline = self.deadline;
                Box::new(async move {
                    tokio::time::timeout_at(deadline.into(), exchange.run(request))
                        .await
                        .unwrap_or(Err(Error::ConnectionTimeout))
                })
            }
            Err(reason) => {
                denials
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(reason);
                Box::new(async { Err(Error::HttpRequestDenied) })
            }
        }
    }
}

/// One admitted request on its way.
struct Exchange {
    origin: Origin,
    grants: Arc<Grants>,
    denials: Arc<Mutex<Denials>>,
}

impl Exchange {
    fn http(&self) -> &HttpGrant {
        self.grants
            .http
            .as_ref()
            .expect("admitted under an [http] grant")
    }

    async fn run(
        self,
        request: http::Request<WasiBody>,
    ) -> Result<(http::Response<WasiBody>, Connection), Error> {
        let (parts, body) = request.into_parts();
        let mut request = http::Request::from_parts(parts, outgoing_body(body).await?);
        let addresses = self.addresses().await?;
        let stream = TcpStream::connect(&addresses[..])
            .await
            .map_err(Error::Connect)?;
        let stream: Box<dyn Stream> = match self.origin.scheme {
            Scheme::Http => Box::new(stream),
            Scheme::Https => Box::new(tls(&self.origin.host, stream).await?),
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let connection = wasmtime_wasi::runtime::spawn(connection);
        // A request to the origin itself carries the path alone.
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        *request.uri_mut() = http::Uri::builder()
            .path_and_query(path)
            .build()
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        let response = sender.send_request(request).await?;
        let (mut head, body) = response.into_parts();
        if let Some(scrub) = &self.grants.scrub {
            for value in head.headers.values_mut() {
                if let Some(clean) = scrub.scrubbed(value.as_bytes()) {
                    *value = http::HeaderValue::from_bytes(&clean)
                        .map_err(|_| Error::HttpProtocolError)?;
                }
            }
        }
        let cap = self.http().max_response_bytes;
        let body = CappedBody {
            incoming: body,
            left: cap,
            cap,
            scrub: self.grants.scrub.clone().map(|scrub| (scrub, Vec::new())),
            state: BodyState::Open,
        };
        let connection: Connection = Box::new(async move { connection.await.map_err(Error::from) });
        Ok((
            http::Response::from_parts(head, body.boxed_unsync()),
            connection,
        ))
    }

    /// The addresses to connect to, each one checked.
    async fn addresses(&self) -> Result<Vec<SocketAddr>, Error> {
        let port = self.origin.port;
        let addresses: Vec<SocketAddr> = match &self.origin.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
            Host::Name(name) => tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|err| Error::DnsError {
                    rcode: Some(err.to_string()),
                    info_code: None,
                })?
                .collect(),
        };
        if addresses.is_empty() {
            return Err(Error::DestinationNotFound);
        }
        if let Some(refused) = addresses.iter().find(|a| !self.may_reach(a.ip())) {
            let reason = format!(
                "{}: it resolves to {}, an internal address the grants do not name",
                self.origin,
                refused.ip()
            );
            self.denials
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(reason);
            return Err(Error::HttpRequestDenied);
        }
        Ok(addresses)
    }

    /// A public address always; an internal one when a granted origin
    /// names it, or names `localhost` and it is a loopback address.
    fn may_reach(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !is_internal(ip)
            || self.http().allow.iter().any(|origin| match &origin.host {
                Host::Ip(granted) => granted.to_canonical() == ip,
                Host::Name(name) => name == "localhost" && ip.is_loopback(),
            })
    }
}

/// Whether an address is not a public unicast one: loopback, private,
/// link-local, shared, unspecified, broadcast, multicast or reserved.
fn is_internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || a >= 240
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// TLS to `host` over `stream`, verified against the web's root
/// certificates and the system's (`SSL_CERT_FILE`, `SSL_CERT_DIR`, where a
/// private CA is added).
async fn tls(host: &Host, stream: TcpStream) -> Result<impl Stream, Error> {
    use rustls::pki_types::ServerName;
    static CONNECTOR: std::sync::LazyLock<tokio_rustls::TlsConnector> =
        std::sync::LazyLock::new(|| {
            let mut roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            // A system store that cannot be read leaves the web's roots.
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            tokio_rustls::TlsConnector::from(Arc::new(config))
        });
    let name = match host {
        Host::Ip(ip) => ServerName::from(*ip),
        Host::Name(name) => {
            ServerName::try_from(name.clone()).map_err(|_| Error::HttpRequestUriInvalid)?
        }
    };
    CONNECTOR.connect(name, stream).await.map_err(Error::Tls)
}

/// Each secret's value and placeholder, to take values out of what comes
/// back: a granted host that echoes a header must not hand the guest the
/// value. Made once per plugin load, with its grants.
pub(crate) struct Scrub {
    secrets: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bytes held back between frames, so a value split across two is
    /// still found: the longest value but one.
    hold: usize,
}

impl Scrub {
    pub(crate) fn of(secrets: &[Secret]) -> Option<Arc<Scrub>> {
        let secrets: Vec<_> = secrets
            .iter()
            .filter_map(|s| {
                Some((
                    s.value.clone()?.into_bytes(),
                    s.placeholder.clone().into_bytes(),
                ))
            })
            .collect();
        if secrets.is_empty() {
            return None;
        }
        let hold = secrets
            .iter()
            .map(|(value, _)| value.len())
            .max()
            .unwrap_or(1)
            - 1;
        Some(Arc::new(Scrub { secrets, hold }))
    }

    /// `bytes` with every secret's value replaced, if they held one.
    fn scrubbed(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for (secret, placeholder) in &self.secrets {
            let current = out.as_deref().unwrap_or(bytes);
            if let Some(replaced) = replace_all(current, secret, placeholder) {
                out = Some(replaced);
            }
        }
        out
    }

    /// Add `data` to `pending` and take out what can go to the guest: all
    /// of it at the `end`, else all but the held-back tail.
    fn body(&self, pending: &mut Vec<u8>, data: &[u8], end: bool) -> Bytes {
        pending.extend_from_slice(data);
        if let Some(clean) = self.scrubbed(pending) {
            *pending = clean;
        }
        let ready = if end {
            pending.len()
        } else {
            pending.len().saturating_sub(self.hold)
        };
        Bytes::from(pending.drain(..ready).collect::<Vec<u8>>())
    }
}

/// The plugin's request body as it goes out. One the plugin finishes
/// without writing a byte (every body-less request through `wstd`, which
/// still writes its empty body) goes out as no body at all, read to its end
/// here first: handed to hyper as it was, the body of a `GET` without a
/// length was dropped as soon as the head went out, and a plugin still
/// writing its empty body found the stream closed and its request failed
/// ("connection reset") while the answer was on its way. A body with data
/// goes out as it comes.
async fn outgoing_body(mut body: WasiBody) -> Result<WasiBody, Error> {
    loop {
        match body.frame().await {
            None => {
                return Ok(http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync());
            }
            Some(Ok(frame)) if frame.data_ref().is_some_and(Bytes::is_empty) => {}
            Some(Ok(frame)) => {
                let first = futures::stream::once(std::future::ready(Ok(frame)));
                let rest = http_body_util::BodyStream::new(body);
                return Ok(http_body_util::StreamBody::new(first.chain(rest)).boxed_unsync());
            }
            Some(Err(err)) => return Err(err),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Open,
    /// The cap was reached: the guest is told next.
    Cut,
    Done,
}

/// A response body read no further than the grant's cap, with secrets'
/// values taken out.
struct CappedBody {
    incoming: hyper::body::Incoming,
    left: u64,
    cap: u64,
    scrub: Option<(Arc<Scrub>, Vec<u8>)>,
    state: BodyState,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        loop {
            match this.state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Cut => {
                    this.state = BodyState::Done;
                    return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(this.cap)))));
                }
                BodyState::Open => {}
            }
            let frame = match ready!(Pin::new(&mut this.incoming).poll_frame(cx)) {
                None => {
                    this.state = BodyState::Done;
                    return match this.scrub.as_mut() {
                        Some((scrub, pending)) if !pending.is_empty() => {
                            Poll::Ready(Some(Ok(Frame::data(scrub.body(pending, &[], true)))))
                        }
                        _ => Poll::Ready(None),
                    };
                }
                Some(Err(err)) => {
                    this.state = BodyState::Done;
                    return Poll::Ready(Some(Err(Error::from(err))));
                }
                Some(Ok(frame)) => frame,
            };
            let mut data = match frame.into_data() {
                Ok(data) => data,
                // Trailers pass as they are.
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            if data.len() as u64 > this.left {
                data.truncate(this.left as usize);
                this.state = BodyState::Cut;
            }
            this.left -= data.len() as u64;
            let end = this.state == BodyState::Cut;
            let data = match this.scrub.as_mut() {
                Some((scrub, pending)) => scrub.body(pending, &data, end),
                None => data,
            };
            if !data.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// `haystack` with every `from` replaced by `to`; `None` when it held none.
fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    let first = find(haystack, from)?;
    let mut out = Vec::with_capacity(haystack.len() + to.len());
    out.extend_from_slice(&haystack[..first]);
    let mut rest = &haystack[first..];
    while let Some(at) = find(rest, from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    Some(out)
}

fn join(origins: &[Origin]) -> String {
    origins
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_told_apart_from_public_ones() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn a_secret_split_across_frames_is_still_taken_out() {
        let scrub = Scrub {
            secrets: vec![(b"s3cret".to_vec(), b"PLACEHOLDER".to_vec())],
            hold: 5,
        };
        let mut pending = Vec::new();
        let mut out = Vec::new();
        for piece in [&b"xx s3"[..], b"cr", b"et yy s3cret", b""] {
            let end = piece.is_empty();
            out.extend_from_slice(&scrub.body(&mut pending, piece, end));
        }
        assert_eq!(out, b"xx PLACEHOLDER yy PLACEHOLDER");
    }

    /// A request body of `frames`, ended after the last.
    fn body_of(frames: Vec<Frame<Bytes>>) -> WasiBody {
        let frames = futures::stream::iter(frames.into_iter().map(Ok::<_, Error>));
        http_body_util::StreamBody::new(frames).boxed_unsync()
    }

    #[tokio::test]
    async fn a_body_finished_without_data_goes_out_as_none() {
        let empty = outgoing_body(body_of(vec![Frame::data(Bytes::new())]));
        let empty = empty.await.unwrap();
        assert!(
            empty.is_end_stream(),
            "hyper takes it for a body to come, and may drop it under the plugin"
        );
        let data = [&b"ab"[..], b"", b"cd"].map(|piece| Frame::data(Bytes::from_static(piece)));
        let sent = outgoing_body(body_of(data.into())).await.unwrap();
        assert!(!sent.is_end_stream());
        assert_eq!(sent.collect().await.unwrap().to_bytes(), "abcd");
    }

    #[test]
    fn replacing_leaves_text_without_the_needle_alone() {
        assert_eq!(replace_all(b"abc", b"x", b"y"), None);
        assert_eq!(replace_all(b"axbxc", b"x", b"yy").unwrap(), b"ayybyyc");
    }
}
