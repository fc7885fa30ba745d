//! The response-envelope decoder, on any body with any HTTP status.
//!
//! Input layout: two bytes of status (little endian, folded into 100..=999 so that every
//! input is a possible response), then the body.
//!
//! Checked: no panic; a status outside 2xx is never decoded as a success; every error
//! reports the response's status; the error's message and accessors never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nemo_video::__fuzz::decode_envelope;

fuzz_target!(|data: &[u8]| {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let status = 100 + u16::from_le_bytes(*status) % 900;
    match decode_envelope(status, body) {
        Ok(()) => assert!(
            (200..300).contains(&status),
            "HTTP {status} was decoded as a success"
        ),
        Err(err) => {
            assert_eq!(
                err.http_status(),
                Some(status),
                "error {err:?} lost the HTTP status"
            );
            let message = err.to_string();
            assert!(!message.is_empty());
            let _ = format!("{err:?}");
            let _ = (
                err.api_code(),
                err.request_id(),
                err.info(),
                err.retry_policy(),
            );
            let _ = (
                err.is_transient(),
                err.is_rate_limited(),
                err.is_unauthorized(),
            );
        }
    }
});
