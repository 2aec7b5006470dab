//! snapshot-testsuite (in progress).
