//! Signet: an HSM-backed certificate authority and e-signature service for banks.
//!
//! Layers, each calling only downward: `ra` (what may be issued, and what it says) →
//! `ca` (record, sign in the HSM, store) → `store` / `hsm`; `audit` chains every state change.

pub mod api;
pub mod app;
pub mod audit;
pub mod ca;
pub mod clock;
pub mod config;
pub mod der_limits;
pub mod ecdsa;
pub mod hsm;
pub mod loadgen;
pub mod policy;
pub mod ra;
pub mod sign;
pub mod store;
pub mod text;
pub mod verify;
pub mod watched;
