//! Korv server (work in progress).
