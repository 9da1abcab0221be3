//! Configuration: TOML on disk -> raw serde structs -> validated [`Config`] (SPEC §2).

mod model;

pub use model::*;
