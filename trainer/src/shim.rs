//! The calling convention of the C/C++ shim functions in `trainer/csrc/` (gradient hooks): zero
//! on success, otherwise non-zero with a NUL-terminated message written into the caller's buffer.

use std::ffi::c_char;

/// Calls a shim function with a message buffer; the message on failure.
pub(crate) fn call(f: impl FnOnce(*mut c_char, usize) -> i32) -> Result<(), String> {
    let mut buf = [0u8; 512];
    if f(buf.as_mut_ptr().cast(), buf.len()) == 0 {
        return Ok(());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Err(String::from_utf8_lossy(&buf[..end]).into_owned())
}
