//! Test-only switches for the deterministic simulator (`sim/`): known past
//! bugs it must find again, and one fault it injects (a racing submit). Off
//! unless a test turns them on, and compiled out (constant `false`, setting
//! them does nothing) without the `bug-switches` feature, which only
//! genq-sim's example and tests enable, as a dev-dependency: no build of the
//! binaries, `cargo build --workspace` included, carries them.

/// One switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// Fault, consumed by the next submit: its first idempotency-key lookup
    /// misses, as when a concurrent request with the same key commits just
    /// after it (the race the 402 bug lived in).
    StaleKeyLookup = 0,
    /// Bug: a refused submission does not look for a job with its key under
    /// the account lock, so an idempotent repeat is answered 402.
    Repeat402 = 1,
    /// Bug: a poll that finds its job canceled fails (and refunds) it again.
    RefundAfterCancel = 2,
    /// Bug: a transition does not check the job's current status.
    NoStatusCheck = 3,
}

#[cfg(feature = "bug-switches")]
static FLAGS: [std::sync::atomic::AtomicBool; 4] = [
    std::sync::atomic::AtomicBool::new(false),
    std::sync::atomic::AtomicBool::new(false),
    std::sync::atomic::AtomicBool::new(false),
    std::sync::atomic::AtomicBool::new(false),
];

/// Whether `switch` is on.
#[inline]
pub fn on(switch: Switch) -> bool {
    #[cfg(feature = "bug-switches")]
    {
        FLAGS[switch as usize].load(std::sync::atomic::Ordering::SeqCst)
    }
    #[cfg(not(feature = "bug-switches"))]
    {
        let _ = switch;
        false
    }
}

/// Whether `switch` was on, turning it off (a one-shot fault).
#[inline]
pub fn take(switch: Switch) -> bool {
    #[cfg(feature = "bug-switches")]
    {
        FLAGS[switch as usize].swap(false, std::sync::atomic::Ordering::SeqCst)
    }
    #[cfg(not(feature = "bug-switches"))]
    {
        let _ = switch;
        false
    }
}

/// Turns `switch` on or off (nothing without the feature).
pub fn set(switch: Switch, value: bool) {
    #[cfg(feature = "bug-switches")]
    FLAGS[switch as usize].store(value, std::sync::atomic::Ordering::SeqCst);
    #[cfg(not(feature = "bug-switches"))]
    let _ = (switch, value);
}

/// Whether the switches work in this build (the `bug-switches` feature).
pub const COMPILED_IN: bool = cfg!(feature = "bug-switches");
