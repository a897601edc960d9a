//! When a failed GitHub request is worth repeating, and how long to wait first. Pure: the caller sleeps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use reqwest::StatusCode;

/// How hard a work source tries before giving up on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included (at least 1).
    pub max_attempts: u32,
    /// Backoff before the first retry; doubled for each further one.
    pub base_delay: Duration,
    /// Ceiling of the exponential backoff.
    pub max_delay: Duration,
    /// The longest wait for a rate limit to reset; a longer reset fails the request at once rather than
    /// stalling a fire (the next fire tries again).
    pub max_rate_limit_wait: Duration,
    /// Added to the wait until `x-ratelimit-reset`, for clock skew between us and GitHub.
    pub reset_margin: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            max_rate_limit_wait: Duration::from_secs(120),
            reset_margin: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `retry` (1 = the first retry): exponential, capped, with jitter
    /// between 75 % and 100 % of the step so that many clients do not retry in lockstep.
    pub(super) fn backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(20);
        let step = self
            .base_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay);
        step.mul_f64(0.75 + 0.25 * unit_random())
    }
}

/// What to do about a non-success answer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Disposition {
    /// Retry after the policy's backoff (5xx, 408).
    RetryWithBackoff,
    /// A rate limit: retry after this wait (from `retry-after` or `x-ratelimit-reset`), or after the
    /// backoff when GitHub did not say.
    RateLimited(Option<Duration>),
    /// Not worth repeating (401, 403 that is not a rate limit, 404, 422, other 4xx).
    Fatal,
}

/// Classifies a non-success answer by its status and headers; `now` is the wall clock, because
/// `x-ratelimit-reset` is an absolute epoch second.
pub(super) fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
    policy: &RetryPolicy,
) -> Disposition {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    };
    let exhausted = header("x-ratelimit-remaining") == Some("0");
    let retry_after = header("retry-after").and_then(|v| v.parse::<u64>().ok());
    let is_rate_limit = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN && (exhausted || retry_after.is_some()));
    if is_rate_limit {
        if let Some(seconds) = retry_after {
            return Disposition::RateLimited(Some(Duration::from_secs(seconds)));
        }
        let until_reset = header("x-ratelimit-reset")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|_| exhausted)
            .map(|reset| {
                let reset_at = UNIX_EPOCH + Duration::from_secs(reset);
                reset_at.duration_since(now).unwrap_or_default() + policy.reset_margin
            });
        return Disposition::RateLimited(until_reset);
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return Disposition::RetryWithBackoff;
    }
    Disposition::Fatal
}

/// A number in [0, 1) for jitter.
fn unit_random() -> f64 {
    fastrand::f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stays_under_the_cap() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for _ in 0..50 {
            let first = policy.backoff(1);
            assert!((75..=100).contains(&first.as_millis()), "{first:?}");
            let third = policy.backoff(3);
            assert!((300..=400).contains(&third.as_millis()), "{third:?}");
            let late = policy.backoff(30);
            assert!((750..=1000).contains(&late.as_millis()), "{late:?}");
        }
    }

    #[test]
    fn rate_limits_wait_for_the_reset_or_retry_after() {
        let policy = RetryPolicy::default();
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let reset = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1010"),
        ]);
        assert_eq!(
            classify(StatusCode::FORBIDDEN, &reset, now, &policy),
            Disposition::RateLimited(Some(Duration::from_secs(11)))
        );
        let past_reset = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "900")]);
        assert_eq!(
            classify(StatusCode::FORBIDDEN, &past_reset, now, &policy),
            Disposition::RateLimited(Some(Duration::from_secs(1)))
        );
        let secondary = headers(&[("retry-after", "3")]);
        assert_eq!(
            classify(StatusCode::FORBIDDEN, &secondary, now, &policy),
            Disposition::RateLimited(Some(Duration::from_secs(3)))
        );
        assert_eq!(
            classify(
                StatusCode::TOO_MANY_REQUESTS,
                &HeaderMap::new(),
                now,
                &policy
            ),
            Disposition::RateLimited(None)
        );
    }

    #[test]
    fn server_errors_retry_and_client_errors_do_not() {
        let policy = RetryPolicy::default();
        let now = SystemTime::now();
        let none = HeaderMap::new();
        for status in [500, 502, 503, 504, 408] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                classify(status, &none, now, &policy),
                Disposition::RetryWithBackoff
            );
        }
        let remaining = headers(&[("x-ratelimit-remaining", "4999")]);
        for status in [401, 403, 404, 422, 400] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                classify(status, &remaining, now, &policy),
                Disposition::Fatal
            );
        }
    }
}
