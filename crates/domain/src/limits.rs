//! Size bounds of every input. They keep one event well under sled's blob threshold (see the log
//! module) and keep hostile input cheap to reject.

/// Longest party id or topic slug.
pub const MAX_SLUG: usize = 64;
/// Names, roles, publishers, reviewers, aliases.
pub const MAX_NAME: usize = 200;
pub const MAX_ALIASES: usize = 32;
pub const MAX_AFFILIATIONS: usize = 32;
pub const MAX_DESCRIPTION: usize = 2000;
pub const MAX_TITLE: usize = 500;
pub const MAX_URL: usize = 2048;
/// Source text, in UTF-8 bytes. With JSON escaping this keeps an event below the log's record limit.
pub const MAX_SOURCE_TEXT_BYTES: usize = 65536;
pub const MAX_VENUE: usize = 500;
pub const MAX_VERB: usize = 64;
/// Statement content and review explanations.
pub const MAX_CONTENT: usize = 4000;
pub const MAX_SPANS: usize = 32;
pub const MAX_SPAN_TEXT: usize = 4096;
pub const MAX_STANCE: usize = 2000;
pub const MAX_CONDITIONS: usize = 16;
pub const MAX_CONDITION: usize = 500;
pub const MAX_RATING_LABEL: usize = 100;
pub const MAX_REASON: usize = 2000;
/// Commands in one batch.
pub const MAX_BATCH: usize = 256;
/// Tolerated clock difference for "not in the future" checks.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;
