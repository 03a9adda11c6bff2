//! What chatd asks of the allocator (glibc's malloc), so that memory freed after a burst (an
//! attack, the peak of a load test) goes back to the system instead of staying resident:
//!
//! - Large buffers are always mmapped: each argon2 hash allocates ~19 MiB on a blocking thread,
//!   and glibc raises its mmap threshold after the first such buffer is freed, so later ones
//!   would come from per-thread heaps and stay resident (2,000 logins left ~600 MiB of RSS).
//!   [`tune`] pins the threshold at 1 MiB.
//! - Small chunks that were freed stay in malloc's arenas, scattered between live ones, where
//!   glibc's own trimming (only the free top of a heap) rarely reaches them: 20,000 HTTP
//!   connections that came and went left ~200 MiB resident. [`give_back`] looks every few
//!   seconds at how much the arenas hold free and, past [`FREE_TO_KEEP`], returns it with
//!   `malloc_trim`.
//!
//! Elsewhere (other platforms, other allocators) both are no-ops.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Free memory the arenas may keep for reuse before it is given back.
pub const FREE_TO_KEEP: usize = 16 << 20;
/// How often the arenas are looked at.
const EVERY: Duration = Duration::from_secs(5);

/// Pins malloc's mmap threshold (once; later calls do nothing).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes allocator tuning.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        });
    }
}

/// Until `stop`: gives the arenas' free memory back to the system whenever it passes
/// [`FREE_TO_KEEP`]. The looking and the trimming run on a blocking thread: both take the
/// arenas' locks, and trimming a few hundred MiB takes milliseconds.
pub async fn give_back(stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        if let Ok(Some(freed)) = tokio::task::spawn_blocking(trim_if_worth_it).await {
            tracing::debug!(free_mib = freed >> 20, "gave free heap memory back to the system");
        }
    }
}

/// Trims when the arenas hold more than [`FREE_TO_KEEP`] free; returns how much they held.
fn trim_if_worth_it() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 and malloc_trim only read and adjust malloc's own state.
        let free = unsafe { libc::mallinfo2() }.fordblks;
        if free > FREE_TO_KEEP {
            unsafe { libc::malloc_trim(0) };
            return Some(free);
        }
    }
    None
}

/// The process's resident memory in bytes (VmRSS), where the system tells (Linux).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
