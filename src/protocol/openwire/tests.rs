//! Codec-level tests: round trips, partial input, limits, malformed input.
