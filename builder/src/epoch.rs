//! The one time source for everything hyve writes: `SOURCE_DATE_EPOCH`, never the clock.

/// `SOURCE_DATE_EPOCH` is set but is not a number of seconds.
#[derive(Debug, thiserror::Error)]
#[error("SOURCE_DATE_EPOCH={value:?} is not a whole number of seconds since 1970; unset it or set e.g. SOURCE_DATE_EPOCH=1700000000")]
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
