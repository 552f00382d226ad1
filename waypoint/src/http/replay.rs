//! A request body that can be sent again: the first attempt streams it
//! from the caller and keeps a copy of what passed, up to a bound; a retry
//! sends the copy, then goes on reading from the caller where the last
//! attempt stopped. Past the bound the copy is dropped and the request
//! cannot be retried, as Envoy gives up retrying past its buffer limit.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use super::upstream::{Body, BoxError};

/// Most of a request body kept for retries. Envoy keeps up to its buffer
/// limit (1 MiB); a smaller copy bounds what many slow uploads can hold.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// A request body, for as many attempts as it can be sent in.
pub struct Replayable {
    shared: Arc<Mutex<Shared>>,
}

/// The body of one attempt.
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
    /// Which attempt this body is for: an older attempt's body, still held
    /// by a connection going away, reads nothing more.
    attempt: u32,
    /// Kept chunks this attempt has sent.
    sent: usize,
    trailers_sent: bool,
}

struct Shared {
    source: Body,
    chunks: Vec<Bytes>,
    kept: usize,
    /// More than the limit passed: nothing can be sent again.
    overflowed: bool,
    trailers: Option<HeaderMap>,
    ended: bool,
    attempt: u32,
}

impl Replayable {
    pub fn new(source: Body) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                source,
                chunks: Vec::new(),
                kept: 0,
                overflowed: false,
                trailers: None,
                ended: false,
                attempt: 0,
            })),
        }
    }

    /// The body for the next attempt (the first one always), unless what
    /// was sent before is gone.
    pub fn attempt(&self) -> Option<Replay> {
        let mut shared = lock(&self.shared);
        if shared.overflowed {
            return None;
        }
        shared.attempt += 1;
        Some(Replay {
            shared: self.shared.clone(),
            attempt: shared.attempt,
            sent: 0,
            trailers_sent: false,
        })
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut shared = lock(&this.shared);
        if shared.attempt != this.attempt {
            return Poll::Ready(None);
        }
        if !shared.overflowed && this.sent < shared.chunks.len() {
            this.sent += 1;
            return Poll::Ready(Some(Ok(Frame::data(shared.chunks[this.sent - 1].clone()))));
        }
        if shared.ended {
            return Poll::Ready(match (&shared.trailers, this.trailers_sent) {
                (Some(trailers), false) => {
                    this.trailers_sent = true;
                    Some(Ok(Frame::trailers(trailers.clone())))
                }
                _ => None,
            });
        }
        let frame = match Pin::new(&mut shared.source).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        let shared = &mut *shared;
        match &frame {
            None => shared.ended = true,
            Some(Err(_)) => shared.overflowed = true,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    shared.kept += data.len();
                    if shared.kept > REPLAY_LIMIT {
                        shared.overflowed = true;
                        shared.chunks = Vec::new();
                    } else if !shared.overflowed {
                        shared.chunks.push(data.clone());
                        this.sent += 1;
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    shared.trailers = Some(trailers.clone());
                    shared.ended = true;
                    this.trailers_sent = true;
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        let shared = lock(&self.shared);
        let replayed = shared.overflowed || self.sent == shared.chunks.len();
        replayed
            && match shared.ended {
                true => shared.trailers.is_none() || self.trailers_sent,
                false => shared.source.is_end_stream(),
            }
    }

    fn size_hint(&self) -> SizeHint {
        let shared = lock(&self.shared);
        let unsent: usize = match shared.overflowed {
            true => 0,
            false => shared.chunks[self.sent.min(shared.chunks.len())..]
                .iter()
                .map(Bytes::len)
                .sum(),
        };
        let mut hint = match shared.ended {
            true => SizeHint::with_exact(0),
            false => shared.source.size_hint(),
        };
        // Upper first: a lower bound may never pass the upper one.
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + unsent as u64);
        }
        hint.set_lower(hint.lower() + unsent as u64);
        hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn body(chunks: &[&'static [u8]], trailers: bool) -> Body {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        if trailers {
            let mut map = HeaderMap::new();
            map.insert("grpc-timeout", "1S".parse().unwrap());
            frames.push(Ok(Frame::trailers(map)));
        }
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    async fn read(body: Replay) -> (Vec<u8>, bool) {
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().is_some();
        (collected.to_bytes().to_vec(), trailers)
    }

    #[tokio::test]
    async fn a_retry_sends_the_same_body_and_trailers() {
        let body = Replayable::new(body(&[b"hello ", b"world"], true));
        let mut first = body.attempt().unwrap();
        // The first attempt reads part of the body, then fails.
        let chunk = first.frame().await.unwrap().unwrap();
        assert_eq!(chunk.into_data().unwrap(), "hello ");
        let second = body.attempt().unwrap();
        // The superseded attempt reads nothing more (its connection is
        // going away).
        assert_eq!(read(first).await, (Vec::new(), false));
        // What it has yet to send: the copy, then the rest.
        assert_eq!(http_body::Body::size_hint(&second).lower(), 6);
        assert_eq!(read(second).await, (b"hello world".to_vec(), true));
        let third = body.attempt().unwrap();
        assert_eq!(read(third).await, (b"hello world".to_vec(), true));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_not_sent_again() {
        static BIG: [u8; REPLAY_LIMIT] = [7; REPLAY_LIMIT];
        let body = Replayable::new(body(&[&BIG, b"!"], false));
        let (sent, _) = read(body.attempt().unwrap()).await;
        assert_eq!(sent.len(), REPLAY_LIMIT + 1);
        assert!(body.attempt().is_none());
    }
}
