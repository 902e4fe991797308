//! The one time source for everything hyve writes: `SOURCE_DATE_EPOCH`, never the clock.

/// `SOURCE_DATE_EPOCH` is set but is not a number of seconds.
#[derive(Debug, thiserror::Error, serde::Serialize)]
#[error("SOURCE_DATE_EPOCH={value:?} is not a whole number of seconds since 1970; unset it or set e.g. SOURCE_DATE_EPOCH=1700000000")]
#[serde(tag = "kind", rename = "bad_epoch")]
pub struct BadEpoch {
    pub value: String,
}

/// The value of `SOURCE_DATE_EPOCH`, if set.
pub fn source_date_epoch() -> Result<Option<u64>, BadEpoch> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v.trim().parse().map(Some).map_err(|_| BadEpoch { value: v }),
        Err(_) => Ok(None),
    }
}

/// A Unix time as a UTC calendar date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

/// Howard Hinnant's days-to-civil (proleptic Gregorian, UTC).
pub fn civil(epoch: u64) -> Civil {
    let (days, secs) = ((epoch / 86_400) as i64, epoch % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    Civil {
        year: yoe + era * 400 + i64::from(month <= 2),
        month,
        day,
        hour: (secs / 3600) as u32,
        minute: (secs / 60 % 60) as u32,
        second: (secs % 60) as u32,
    }
}

/// `YYYY-MM-DDThh:mm:ssZ`, the form SPDX and ISO 8601 want.
pub fn iso8601(epoch: u64) -> String {
    let c = civil(epoch);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", c.year, c.month, c.day, c.hour, c.minute, c.second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
