//! Re-encodes between stores on temporary directories.
