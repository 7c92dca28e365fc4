//! A real HTTP/1.1 server on loopback for the grants tests (plain, or TLS
//! with a certificate from a CA of the test's own), answering by
//! path: `/ok` says `ok`; `/echo` sends back the request's headers;
//! `/redirect?to=URL` answers 302 to that URL; `/bytes/N` streams N bytes;
//! `/never` accepts and never answers. It records every request it reads.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use wasmtime_wasi_http::io::TokioIo;

/// A request as the server read it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: http::HeaderMap,
}

pub struct Loopback {
    pub addr: SocketAddr,
    scheme: &'static str,
    seen: Arc<Mutex<Vec<Seen>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

const CHUNK: usize = 64 * 1024;

impl Loopback {
    /// A server on `ip` at a free port, on the current runtime.
    pub async fn start(ip: IpAddr) -> Loopback {
        Loopback::serve(ip, None).await
    }

    /// A TLS server on 127.0.0.1 and the PEM of the CA its certificate
    /// comes from, which no system trusts.
    pub async fn with_tls() -> (Loopback, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let server = Loopback::serve(IpAddr::from([127, 0, 0, 1]), Some(acceptor)).await;
        (server, ca_pem)
    }

    async fn serve(ip: IpAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> Loopback {
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .expect("binds a loopback port");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request| answer(request, log.clone()));
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), service).await
                            }
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Loopback {
            addr,
            scheme,
            seen,
            accepting,
        }
    }

    pub async fn on_loopback() -> Loopback {
        Loopback::start(IpAddr::from([127, 0, 0, 1])).await
    }

    /// `http://127.0.0.1:PORT` (`https` with TLS).
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    /// Every request read so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

type Reply = Response<BoxBody<Bytes, Infallible>>;

async fn answer(
    request: Request<hyper::body::Incoming>,
    log: Arc<Mutex<Vec<Seen>>>,
) -> Result<Reply, Infallible> {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    log.lock().unwrap().push(Seen {
        path: path.clone(),
        headers: request.headers().clone(),
    });
    let text = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(body)).boxed())
            .unwrap()
    };
    if path == "/ok" {
        return Ok(text(200, "ok".into()));
    }
    if path == "/echo" {
        let headers: Vec<String> = request
            .headers()
            .iter()
            .map(|(name, value)| format!("{name}: {}", String::from_utf8_lossy(value.as_bytes())))
            .collect();
        let mut reply = text(200, headers.join("\n"));
        reply.headers_mut().extend(request.headers().clone());
        reply.headers_mut().remove(http::header::CONTENT_LENGTH);
        reply.headers_mut().remove(http::header::HOST);
        return Ok(reply);
    }
    if let Some(to) = path.strip_prefix("/redirect?to=") {
        let mut reply = text(302, String::new());
        reply
            .headers_mut()
            .insert(http::header::LOCATION, to.parse().unwrap());
        return Ok(reply);
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let total: usize = n.parse().unwrap();
        let chunk = Bytes::from(vec![b'x'; CHUNK]);
        let frames = futures::stream::iter((0..total).step_by(CHUNK))
            .map(move |at| Ok(Frame::data(chunk.slice(..CHUNK.min(total - at)))));
        return Ok(Response::new(BodyExt::boxed(StreamBody::new(frames))));
    }
    if path == "/never" {
        std::future::pending::<()>().await;
    }
    Ok(text(404, format!("no such path: {path}")))
}
