//! The library half of korv-cli. The product is the `korv` binary; this
//! library holds what the benchmark peers (`benches/peers`) share with
//! `korv bench`, so that both count and report load the same way: the
//! [`load`] tally and its duration parsers. It is not a stable API.

#[doc(hidden)]
pub mod load;
