//! The `korv` command line.

fn main() {}
