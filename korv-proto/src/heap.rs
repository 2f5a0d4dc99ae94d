//! Large frames and glibc's malloc.
//!
//! A request or answer of a megabyte passes through a few buffers of about
//! its size: the frame read, the parsed body, the encoded answer. glibc
//! serves blocks above its *mmap threshold* with a fresh mapping each, and
//! hands back the top of its heap once more than its *trim threshold*
//! (twice the first) lies free there. Both start at 128 KiB and rise, while
//! the process runs, to the size of the largest mapped block freed so far.
//! Which blocks a process happened to free first therefore decides whether
//! every large request's buffers are given back to the kernel and faulted
//! in again, page by page, on the next one: a 1 MiB echo cost `korv serve`
//! 1.5–2.1 ms of CPU in one state and 2.4–3.7 ms, with 117 to 734 page
//! faults, in the other (BENCHMARKS.md).
//!
//! So the first time a process reads or writes a frame of [`LARGE_FRAME`]
//! or more, it frees one mapped block of [`KEEP_BELOW`] bytes (never
//! written, so never faulted in): glibc's own rule then raises its
//! thresholds to 4 and 8 MiB, the state in which the buffers of a large
//! request stay in the heap from one request to the next. A process that
//! never sees a large frame keeps glibc's defaults and its small footprint.
//! Thresholds an operator set (`MALLOC_MMAP_THRESHOLD_`,
//! `MALLOC_TRIM_THRESHOLD_`) turn glibc's rule off, and are kept. With
//! another allocator the block is one allocation and its free.

use std::sync::Once;

/// Frames of at least this many bytes (payload) count as large.
const LARGE_FRAME: usize = 512 * 1024;

/// The size of the block freed: glibc's mmap threshold becomes this, and
/// its trim threshold twice this.
const KEEP_BELOW: usize = 4 * 1024 * 1024;

static SEEN: Once = Once::new();

/// Notes a frame of `len` payload bytes, read or written.
#[inline]
pub(crate) fn frame(len: usize) {
    if len >= LARGE_FRAME {
        SEEN.call_once(keep_large_blocks);
    }
}

#[cold]
fn keep_large_blocks() {
    // `black_box` keeps the allocation and its free from being optimised
    // away as unused.
    let block: Vec<u8> = std::hint::black_box(Vec::with_capacity(KEEP_BELOW));
    drop(block);
}
