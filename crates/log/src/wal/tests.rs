//! Tests of the write-ahead log's format and recovery rules.
