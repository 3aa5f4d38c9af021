//! The HTTP headers a media request carries, as the server reads them
//! (`dak_proto::blob`): `Range`, tus's `Upload-Offset`, `Authorization:
//! Bearer` and the blob id in the path. Whatever the bytes, no panic; a
//! range that resolves lies inside the blob and is not empty; an offset
//! that parses is within its limit; a token or id that parses is exactly
//! the hex it was given.
#![no_main]

use dak_proto::blob::{parse_bearer, parse_blob_id, parse_range, parse_upload_offset, to_hex};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, header)) = data.split_first_chunk::<8>() else {
        return;
    };
    let len = u64::from_le_bytes(*len);
    if let Ok(r) = parse_range(Some(header), len) {
        assert!(r.start < r.end && r.end <= len, "{r:?} outside 0..{len}");
    }
    if let Ok(offset) = parse_upload_offset(Some(header), len) {
        assert!(offset <= len);
    }
    if let Ok(token) = parse_bearer(Some(header)) {
        let text = std::str::from_utf8(header).expect("a parsed token was text");
        assert!(text.to_ascii_lowercase().contains(&to_hex(&token)));
    }
    if let Ok(text) = std::str::from_utf8(header)
        && let Ok(id) = parse_blob_id(text)
    {
        assert_eq!(to_hex(&id), text.to_ascii_lowercase());
    }
});
