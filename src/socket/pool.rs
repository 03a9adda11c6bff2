//! Buffers for busy connections, recycled per thread. A connection returns its buffers
//! whenever it goes idle (so idle connections hold none) and takes them again when bytes
//! arrive; recycling makes that cost no allocation on a busy server.

use std::cell::RefCell;

use bytes::BytesMut;

/// The size a buffer starts with.
pub const BUFFER: usize = 4096;
/// Buffers kept per thread; more are freed.
const KEEP: usize = 256;
/// Buffers that grew past this are freed rather than kept.
const MAX_KEPT: usize = 64 * 1024;

thread_local! {
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least [`BUFFER`] bytes.
pub fn take() -> BytesMut {
    FREE.with(|free| free.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(BUFFER))
}

/// Gives a buffer back for reuse.
pub fn give(mut buf: BytesMut) {
    buf.clear();
    // Reclaims space a reader advanced past, so the buffer is whole again.
    buf.reserve(BUFFER);
    if buf.capacity() > MAX_KEPT {
        return;
    }
    FREE.with(|free| {
        let mut free = free.borrow_mut();
        if free.len() < KEEP {
            free.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_whole() {
        let mut buf = take();
        buf.extend_from_slice(&[7; 100]);
        let _ = buf.split_to(50);
        give(buf);
        let again = take();
        assert!(again.is_empty());
        assert!(again.capacity() >= BUFFER);
    }
}
