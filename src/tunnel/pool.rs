//! Per-thread free list of copy buffers: taking and giving back is a `Vec` pop/push, so a
//! direction that goes idle between chunks costs no allocation when it wakes up.

use std::cell::RefCell;

/// Size of the copy buffer of one direction while bytes flow through it.
///
/// 16 KiB matches the largest TLS record (RFC 8446 §5.1), so one read drains one record.
pub(crate) const COPY_BUF_SIZE: usize = 16 * 1024;

/// At most this many spare buffers per worker thread (1 MiB).
const MAX_SPARE: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A [`COPY_BUF_SIZE`] buffer: a spare one if this thread has one, else a fresh allocation.
pub(super) fn take() -> Box<[u8]> {
    SPARE
        .try_with(|spare| spare.try_borrow_mut().ok().and_then(|mut s| s.pop()))
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0u8; COPY_BUF_SIZE].into_boxed_slice())
}

/// Hands `buf` back for the next [`take`] on this thread.
pub(super) fn give(buf: Box<[u8]>) {
    // If the thread is exiting or the list is full, the buffer is simply freed.
    let _ = SPARE.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut() {
            if spare.len() < MAX_SPARE {
                spare.push(buf);
            }
        }
    });
}
