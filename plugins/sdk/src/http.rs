//! Outbound HTTP (`wasi:http` 0.2, through `wstd`) for plugins the worker
//! grants it to: build a [`Request`], [`send`] it, read the [`Fetched`]
//! response.
//!
//! ```no_run
//! use taskbox_sdk::http::{self, Fetched, Request};
//!
//! fn status_page() -> Result<Fetched, String> {
//!     let request = Request::get("https://status.example.com/")
//!         .header("accept", "text/plain")
//!         .body(())
//!         .map_err(|err| err.to_string())?;
//!     http::send(request, 16 * 1024)
//! }
//! ```
//!
//! The worker follows no redirects (a 3xx comes back as it is), may deny a
//! request, and may cut a response body short; a cut body comes back with
//! what arrived and `truncated` set.

use wstd::http::body::{Bytes, HttpBody};
use wstd::http::{BodyExt, Client, Error, ErrorCode};

pub use wstd::http::{Body, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};

/// A response, its body read up to a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub status: u16,
    /// In the order received; a value that is not UTF-8 is shown lossily.
    pub headers: Vec<(String, String)>,
    /// The body, or its first `max_body` bytes.
    pub body: Vec<u8>,
    /// The body went on past `body`: it was longer than `max_body`, or the
    /// worker cut it short.
    pub truncated: bool,
}

/// Send `request` and wait for the response, reading at most `max_body`
/// bytes of its body (the rest is left unread).
///
/// Errors say what failed; one reported by `wasi:http` shows its
/// `error-code`, e.g. `the request was denied (ErrorCode::HttpRequestDenied)`.
pub fn send(request: Request<impl Into<Body>>, max_body: usize) -> Result<Fetched, String> {
    wstd::runtime::block_on(async {
        let response = Client::new().send(request).await.map_err(|err| {
            match err.downcast_ref::<ErrorCode>() {
                Some(code @ ErrorCode::HttpRequestDenied) => {
                    format!("the request was denied ({code:?})")
                }
                _ => format!("the request failed: {}", describe(&err)),
            }
        })?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        let (body, truncated) =
            read_capped(response.into_body().into_boxed_body(), max_body).await?;
        Ok(Fetched {
            status,
            headers,
            body,
            truncated,
        })
    })
}

/// Read `body` frame by frame until it ends or holds more than `max_body`
/// bytes; the flag says whether there was more than was kept.
async fn read_capped<B>(mut body: B, max_body: usize) -> Result<(Vec<u8>, bool), String>
where
    B: HttpBody<Data = Bytes, Error = Error> + Unpin,
{
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) if cut_by_worker(&err) => return Ok((kept, true)),
            Err(err) => {
                return Err(format!(
                    "reading the response body failed: {}",
                    describe(&err)
                ));
            }
        };
        // Trailers are not part of what a plugin gets back.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let room = max_body - kept.len();
        if data.len() > room {
            kept.extend_from_slice(&data[..room]);
            return Ok((kept, true));
        }
        kept.extend_from_slice(&data);
    }
    Ok((kept, false))
}

/// Whether the worker ended the body for outgrowing its limit
/// (`error-code::http-response-body-size`). wstd passes a body stream's
/// error on as the host's text for it, so the text is checked as well as
/// the code.
fn cut_by_worker(err: &Error) -> bool {
    if let Some(ErrorCode::HttpResponseBodySize(_)) = err.downcast_ref::<ErrorCode>() {
        return true;
    }
    let text = format!("{err:#}");
    text.contains("HttpResponseBodySize") || text.contains("response body size exceeds limit")
}

/// The `wasi:http` error-code when there is one, else the error's chain.
fn describe(err: &Error) -> String {
    match err.downcast_ref::<ErrorCode>() {
        Some(code) => format!("{code:?}"),
        None => format!("{err:#}"),
    }
}

// The body reading is plain Rust over `http_body`, so it is tested natively.
#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::future::Future;
    use std::pin::{Pin, pin};
    use std::task::{Context, Poll, Waker};
    use wstd::http::HeaderMap;
    use wstd::http::body::Frame;

    /// A body whose frames are all ready at once.
    struct Frames(VecDeque<Result<Frame<Bytes>, Error>>);

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn data(text: &str) -> Result<Frame<Bytes>, Error> {
        Ok(Frame::data(Bytes::copy_from_slice(text.as_bytes())))
    }

    fn read<const N: usize>(
        frames: [Result<Frame<Bytes>, Error>; N],
        max_body: usize,
    ) -> Result<(Vec<u8>, bool), String> {
        let reading = pin!(read_capped(Frames(frames.into()), max_body));
        match reading.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(read) => read,
            Poll::Pending => unreachable!("every frame is ready at once"),
        }
    }

    #[test]
    fn reads_a_body_within_the_limit_whole() {
        let trailers = Ok(Frame::trailers(HeaderMap::new()));
        let read_all = read([data("hello, "), data("world"), trailers], 64);
        assert_eq!(read_all.unwrap(), (b"hello, world".to_vec(), false));
        assert_eq!(read([data("abcd")], 4).unwrap(), (b"abcd".to_vec(), false));
    }

    #[test]
    fn stops_past_the_limit() {
        let read_some = read([data("hello, "), data("world")], 9);
        assert_eq!(read_some.unwrap(), (b"hello, wo".to_vec(), true));
        let read_some = read([data("abcd"), data("e")], 4);
        assert_eq!(read_some.unwrap(), (b"abcd".to_vec(), true));
        assert_eq!(read([data("a")], 0).unwrap(), (Vec::new(), true));
    }

    #[test]
    fn keeps_what_arrived_before_the_worker_cut_the_body() {
        // As wstd passes on a stream error: the host's text for it.
        let cut_as_text = Error::msg("HTTP response body size exceeds limit: 4 bytes")
            .context("reading incoming body stream");
        let read_some = read([data("abcd"), Err(cut_as_text)], 64);
        assert_eq!(read_some.unwrap(), (b"abcd".to_vec(), true));

        let cut_as_code = Error::from(ErrorCode::HttpResponseBodySize(Some(4)));
        let read_some = read([data("abcd"), Err(cut_as_code)], 64);
        assert_eq!(read_some.unwrap(), (b"abcd".to_vec(), true));
    }

    #[test]
    fn other_body_errors_are_errors() {
        let reset = Error::from(ErrorCode::ConnectionTerminated);
        assert_eq!(
            read([data("abcd"), Err(reset)], 64).unwrap_err(),
            "reading the response body failed: ErrorCode::ConnectionTerminated"
        );
    }
}
