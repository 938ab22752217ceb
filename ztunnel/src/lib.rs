//! ztunnel
