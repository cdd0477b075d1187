//! The iptables fallback: the chains kube-proxy's iptables mode installs, with the same
//! names and the same probabilities, so that operators can read them with the tutorials
//! they know and both modes can be compared.
//!
//! This is the rendering half: chain names (`names`), probabilities for weighted
//! endpoints (`probability`), and the `iptables-restore` text for the nat table
//! (`render`). Installing it is the dataplane's job.

pub mod names;
pub mod probability;
pub mod render;
