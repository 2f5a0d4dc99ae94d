//! Korv client (work in progress).
