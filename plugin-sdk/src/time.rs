//! The gateway's clock.

use crate::__private::bindings::portcullis::policy::host;

/// The current time in milliseconds since the Unix epoch, from the
/// gateway's clock (which tests can control). Use it for windows and expiry
/// rather than `std::time::SystemTime`.
pub fn now_ms() -> u64 {
    host::now_ms()
}
