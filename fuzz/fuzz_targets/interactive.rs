//! A business's buttons or list, as a receiving device reads them after
//! decrypting: decoding and `validate_interactive` never panic, and one
//! that passes keeps every limit a client relies on to draw it (at most 3
//! buttons or 10 rows, short one-line titles, unique ids), every choice is
//! found by its id, and it survives a round trip (also as the JSON that
//! `dak bot serve`'s API takes).
#![no_main]

use dak_proto::interactive::{self as ia, validate_interactive};
use dak_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(i) = v1::Interactive::decode(data) else {
        return;
    };
    if validate_interactive(&i).is_ok() {
        let choices = i.choices();
        assert!(!choices.is_empty());
        assert!(choices.len() <= ia::MAX_LIST_ROWS);
        assert!(i.buttons.len() <= ia::MAX_BUTTONS);
        for (id, title) in &choices {
            assert!(!id.is_empty() && id.len() <= ia::MAX_CHOICE_ID_BYTES);
            assert!(title.chars().count() <= ia::MAX_ROW_TITLE_CHARS);
            assert!(!title.chars().any(char::is_control));
            assert_eq!(i.find(id), Some(*title));
        }
        let again = v1::Interactive::decode(&i.encode_to_vec()[..]).expect("round trip");
        assert_eq!(again, i);
        let json = serde_json::to_string(&i).expect("to JSON");
        let back: v1::Interactive = serde_json::from_str(&json).expect("from JSON");
        assert_eq!(back, i);
    }
});
