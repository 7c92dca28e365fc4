//! Capped capture of a plugin's stdout and stderr. The guest may write as much
//! as it likes and never sees an error; the host keeps the first `cap` bytes
//! and counts the rest, so a chatty plugin costs neither memory nor a failure.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The most a single guest write may hand over (also what `check_write`
/// promises); large writes are split by the guest's std.
const WRITE_BUDGET: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Buffer {
    kept: Vec<u8>,
    dropped: u64,
}

/// One captured stream. Clones share the buffer.
#[derive(Debug, Clone)]
pub struct CappedOutput {
    cap: usize,
    buffer: Arc<Mutex<Buffer>>,
}

impl CappedOutput {
    pub fn new(cap: usize) -> Self {
        CappedOutput {
            cap,
            buffer: Arc::default(),
        }
    }

    fn append(&self, bytes: &[u8]) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.cap.saturating_sub(buffer.kept.len());
        let kept = bytes.len().min(room);
        buffer.kept.extend_from_slice(&bytes[..kept]);
        buffer.dropped += (bytes.len() - kept) as u64;
    }

    /// What was kept so far, without the cut marker.
    pub fn peek(&self) -> Vec<u8> {
        let buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        buffer.kept.clone()
    }

    /// What was kept, followed by a marker line when anything was cut.
    pub fn take(&self) -> Vec<u8> {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = std::mem::take(&mut buffer.kept);
        if buffer.dropped > 0 {
            if !out.ends_with(b"\n") && !out.is_empty() {
                out.push(b'\n');
            }
            out.extend_from_slice(
                format!(
                    "[taskbox: output cut at {} bytes; {} more bytes dropped]\n",
                    self.cap, buffer.dropped
                )
                .as_bytes(),
            );
        }
        out
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.append(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_cap_and_marks_the_cut() {
        let out = CappedOutput::new(4);
        out.append(b"abcdef");
        out.append(b"gh");
        let taken = String::from_utf8(out.take()).unwrap();
        assert_eq!(
            taken,
            "abcd\n[taskbox: output cut at 4 bytes; 4 more bytes dropped]\n"
        );
    }

    #[test]
    fn small_output_is_untouched() {
        let out = CappedOutput::new(64);
        out.append(b"hello\n");
        assert_eq!(out.take(), b"hello\n");
    }
}
