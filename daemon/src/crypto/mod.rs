//! Software cryptography helpers used next to the hardware backends.

pub mod idos;
pub mod oaep;
