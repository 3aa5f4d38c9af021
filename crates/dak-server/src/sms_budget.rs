//! SMS budgets: how many verification codes may be sent, by whom and to
//! where, so that neither toll fraud (SMS pumping: bots asking for codes to
//! premium numbers whose operator shares the fee) nor one attacker can run
//! up the operator's bill or lock a number's owner out.
//!
//! Each budget is a cluster-wide GCRA bucket in the store
//! (`Store::take_token`), taken in this order, each refusal answered with
//! RATE_LIMITED and a retry_after:
//! 1. the requester's network (IPv4 /24, IPv6 /56): one attacker's reach;
//! 2. the number: a burst, then one per `hour / codes_per_phone_per_hour`,
//!    which is also the longest anyone can keep the owner waiting;
//! 3. the number's range (all but its last `number_range_digits` digits):
//!    pumping walks consecutive numbers of a premium range;
//! 4. the country calling code, and 5. everything: the operator's ceiling.
//!
//! The network comes first so that an attacker refused there spends none
//! of a victim number's budget. Codes sent are counted per country in
//! `dak_sms_codes_by_country_total`; refusals per budget in
//! `dak_rate_limited_total{limit="sms_..."}`.

use std::net::IpAddr;

use crate::error::ApiResult;
use crate::state::AppState;

const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

/// Two-digit ITU-T E.164 country calling codes; of the rest, 1 and 7 are
/// one digit and every other code is three.
const TWO_DIGIT_CODES: &[&str] = &[
    "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47",
    "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65",
    "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
];

/// The country calling code of an E.164 number ("+919800000001" → "91").
pub fn country_code(phone: &str) -> &str {
    let digits = phone.strip_prefix('+').unwrap_or(phone);
    let take = match digits.as_bytes().first() {
        Some(b'1') | Some(b'7') => 1,
        _ if digits.len() >= 2 && TWO_DIGIT_CODES.contains(&&digits[..2]) => 2,
        _ => 3,
    };
    &digits[..take.min(digits.len())]
}

/// The number without its last `hidden` digits: the range it belongs to.
pub fn number_range(phone: &str, hidden: u32) -> &str {
    let keep = phone.len().saturating_sub(hidden as usize).max(1);
    &phone[..keep.min(phone.len())]
}

/// Takes one code from every budget, or says which one is spent.
pub async fn spend(state: &AppState, ip: IpAddr, phone: &str) -> ApiResult<()> {
    let c = &state.config;
    let network = state.prefix(ip);
    let country = country_code(phone);
    let budgets = [
        (
            format!("sms:net:{network}"),
            c.codes_per_ip_per_hour,
            c.codes_per_ip_per_hour,
            "sms_network",
            "too many code requests from your network; try again later".to_string(),
        ),
        (
            format!("sms:phone:{phone}"),
            c.codes_per_phone_per_hour,
            c.codes_per_phone_burst,
            "sms_number",
            format!(
                "codes were just sent to {}; wait for the SMS, or ask again later",
                crate::sms::mask(phone)
            ),
        ),
        (
            format!("sms:range:{}", number_range(phone, c.number_range_digits)),
            c.codes_per_range_per_hour,
            c.codes_per_range_per_hour,
            "sms_range",
            "too many codes were sent to numbers like this one; try again later".to_string(),
        ),
        (
            format!("sms:country:{country}"),
            c.codes_per_country_per_hour,
            c.codes_per_country_per_hour,
            "sms_country",
            format!("too many codes were sent to +{country} numbers; try again later"),
        ),
        (
            "sms:all".to_string(),
            c.codes_per_hour,
            c.codes_per_hour,
            "sms_global",
            "the server has sent all the codes it may this hour; try again later".to_string(),
        ),
    ];
    // This node's copy of the network budget first: a flood from one
    // network is refused without touching the store.
    state.code_requests.check(network).map_err(|secs| {
        state.limited(
            "sms_network",
            "too many code requests from your network; try again later",
            secs,
        )
    })?;
    for (key, per_hour, burst, limit, message) in budgets {
        state
            .take_cluster_token(&key, HOUR, per_hour, burst, limit, &message)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_codes_and_ranges() {
        assert_eq!(country_code("+919800000001"), "91");
        assert_eq!(country_code("+14155550100"), "1");
        assert_eq!(country_code("+79001234567"), "7");
        assert_eq!(country_code("+8801712345678"), "880");
        assert_eq!(country_code("+447700900123"), "44");
        assert_eq!(country_code("+3"), "3");
        assert_eq!(number_range("+919800000001", 3), "+919800000");
        assert_eq!(number_range("+91", 5), "+");
    }
}
