//! The page speaks English, Hindi and Bengali: every key of web/i18n.js
//! has words in all three, with the same {placeholders}, so no control
//! falls back to English (or shows a raw key) in one language.

use std::collections::{BTreeMap, BTreeSet};

/// Each language's keys and the placeholders each string uses.
fn strings() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../web/i18n.js");
    let source = std::fs::read_to_string(path).expect("web/i18n.js");
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in source.lines() {
        if let Some(lang) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(": {")) {
            current = Some(lang.to_string());
            continue;
        }
        if line == "  }," {
            current = None;
            continue;
        }
        let (Some(lang), Some(entry)) = (&current, line.strip_prefix("    ")) else {
            continue;
        };
        let Some((key, value)) = entry.split_once(": ") else {
            continue;
        };
        if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let placeholders = value
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_string()))
            .collect();
        out.entry(lang.clone())
            .or_insert_with(BTreeMap::new)
            .insert(key.to_string(), placeholders);
    }
    out
}

#[test]
fn every_key_has_words_in_english_hindi_and_bengali_with_the_same_placeholders() {
    let all = strings();
    assert_eq!(
        all.keys().map(String::as_str).collect::<Vec<_>>(),
        ["bn", "en", "hi"]
    );
    let en = &all["en"];
    assert!(en.len() > 100, "only {} English keys found", en.len());
    for lang in ["hi", "bn"] {
        let other = &all[lang];
        let missing: Vec<&String> = en.keys().filter(|k| !other.contains_key(*k)).collect();
        let extra: Vec<&String> = other.keys().filter(|k| !en.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{lang}: missing {missing:?}, not in English {extra:?}"
        );
        for (key, names) in en {
            assert_eq!(&other[key], names, "{lang}: {key}'s placeholders");
        }
    }
}
