//! meshcore
