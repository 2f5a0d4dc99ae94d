//! Dates for people to read, as certificate checks print them.

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`, or `forever`
/// from `i64::MAX` on: OpenSSH writes `u64::MAX` for a certificate that
/// never expires, and no later time is representable.
///
/// ```
/// assert_eq!(korv_proto::utc_date(0), "1970-01-01 00:00:00 UTC");
/// assert_eq!(korv_proto::utc_date(1_893_456_000), "2030-01-01 00:00:00 UTC");
/// assert_eq!(korv_proto::utc_date(u64::MAX), "forever");
/// ```
#[must_use]
pub fn utc_date(seconds: u64) -> String {
    if seconds >= i64::MAX as u64 {
        return "forever".to_owned();
    }
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Civil date from a day count (Howard Hinnant's algorithm): eras of
    // 400 years, years starting on March 1 so that leap days fall last.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc_date;

    #[test]
    fn dates_print_in_utc() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(951_868_861), "2000-03-01 00:01:01 UTC");
        // The leap day of a century year divisible by 400.
        assert_eq!(utc_date(951_868_799), "2000-02-29 23:59:59 UTC");
        assert_eq!(utc_date(1_893_456_000), "2030-01-01 00:00:00 UTC");
        assert_eq!(utc_date(i64::MAX as u64), "forever");
        assert_eq!(utc_date(u64::MAX), "forever");
    }
}
