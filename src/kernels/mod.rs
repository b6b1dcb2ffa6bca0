//! CPU compute. `scalar` is the reference implementation (the oracle): every faster kernel must
//! produce the same int32 accumulators bit for bit.

pub mod scalar;
