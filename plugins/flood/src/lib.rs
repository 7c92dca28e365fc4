//! `flood` (hostile): sends a `POST` whose body never ends, to prove the
//! deadline ends a task blocked writing to the network as surely as one
//! spinning in its own code. Returns only if the request somehow ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use taskbox_sdk::http::{Body, Method, Request, send};
use taskbox_sdk::serde::{Deserialize, Serialize};
use taskbox_sdk::{Schema, Task};
use wstd::http::Error;
use wstd::http::body::{Bytes, Frame, HttpBody};

#[derive(Debug, Deserialize, Serialize, Schema)]
#[serde(crate = "taskbox_sdk::serde")]
#[postcard(crate = taskbox_sdk::postcard_schema)]
pub struct Target {
    pub url: String,
}

/// A body of 64 KiB chunks, forever.
struct Endless;

static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

impl HttpBody for Endless {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))))
    }
}

struct Flood;

impl Task for Flood {
    type Args = Target;
    type Output = u16;

    fn run(target: Target) -> Result<u16, String> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(target.url.as_str())
            .body(Body::from_http_body(Endless))
            .map_err(|err| format!("bad request: {err}"))?;
        Ok(send(request, 1024)?.status)
    }
}

taskbox_sdk::export_task!(Flood);
