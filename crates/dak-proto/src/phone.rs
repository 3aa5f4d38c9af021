//! Phone numbers are account names, so both ends agree on one spelling:
//! E.164, a `+` and 8 to 15 digits, the first not zero.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a phone number in E.164 form: write it as + then the country code and number, e.g. +919800000001"
)]
pub struct PhoneError(pub String);

/// Accepts spaces, dashes, dots and parentheses as people type them and
/// returns the bare E.164 form; anything else is an error.
pub fn normalize_phone(input: &str) -> Result<String, PhoneError> {
    let err = || PhoneError(input.chars().take(40).collect());
    let trimmed = input.trim();
    let rest = trimmed.strip_prefix('+').ok_or_else(err)?;
    let mut digits = String::with_capacity(16);
    digits.push('+');
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return Err(err()),
        }
    }
    let count = digits.len() - 1;
    if !(8..=15).contains(&count) || digits.as_bytes()[1] == b'0' {
        return Err(err());
    }
    Ok(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typed_forms() {
        assert_eq!(normalize_phone("+91 98000-00001").unwrap(), "+919800000001");
        assert_eq!(
            normalize_phone("+1 (415) 555.0100").unwrap(),
            "+14155550100"
        );
    }

    #[test]
    fn refuses_non_e164() {
        for bad in [
            "919800000001",
            "+0123456789",
            "+12",
            "+1234567890123456",
            "+91abc00001",
            "",
        ] {
            assert!(normalize_phone(bad).is_err(), "{bad}");
        }
    }
}
