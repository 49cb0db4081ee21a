//! Data: reading records from files, and mapping columns to training roles.

pub mod records;
