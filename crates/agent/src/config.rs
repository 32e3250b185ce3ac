//! Configuration of `ferroscope run` (in progress).
