//! An attachment descriptor, as a receiving device reads it after
//! decrypting a message: decoding and `validate_attachment` never panic,
//! and one that passes keeps every limit the receiver relies on (exact
//! key, hash, id and capability lengths, a size within the maximum, a
//! bounded thumbnail, waveform and name) and survives a round trip.
#![no_main]

use dak_proto::blob::{self, validate_attachment};
use dak_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(a) = v1::Attachment::decode(data) else {
        return;
    };
    if validate_attachment(&a).is_ok() {
        assert_eq!(a.key.len(), blob::MEDIA_KEY_BYTES);
        assert_eq!(a.sha256.len(), blob::SHA256_BYTES);
        assert_eq!(a.blob_id.len(), blob::BLOB_ID_BYTES);
        assert_eq!(a.capability.len(), blob::BLOB_SECRET_BYTES);
        assert!(a.size <= blob::MAX_FILE_BYTES);
        assert!(a.thumbnail.len() <= blob::MAX_THUMBNAIL_BYTES);
        assert!(a.waveform.len() <= blob::MAX_WAVEFORM_BYTES);
        assert!(a.file_name.chars().count() <= blob::MAX_FILE_NAME_CHARS);
        // The stored length of a valid size never overflows.
        let _ = blob::ciphertext_len(blob::padded_len(a.size));
        let again = v1::Attachment::decode(&a.encode_to_vec()[..]).expect("round trip");
        assert_eq!(again, a);
    }
});
