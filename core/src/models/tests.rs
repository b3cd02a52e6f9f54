//! Property tests: sufficient statistics from any split of the same rows
//! across nodes pool to the same answer as the rows in one place.
