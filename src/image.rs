//! The OS-image pipeline: references and sources, registry and OCI-layout access, the tar
//! reader, the changeset applier, the two-thread unpack pipeline, and slot images.

pub mod apply;
pub mod auth;
pub mod digest;
pub mod dirstream;
pub mod fingerprint;
pub mod layout;
pub mod pull;
pub mod registry;
pub mod sample;
pub mod slot;
pub mod source;
pub mod spec;
pub mod tar;
pub mod tarwrite;
pub mod unpack;

pub use digest::Digest;
pub use source::Source;
