//! Aquarium: a whole Atlantis cluster on one machine, for development and end-to-end tests.
//!
//! The cluster command (`aquarium up`) arrives with the aquarium work; this crate reserves its place.
