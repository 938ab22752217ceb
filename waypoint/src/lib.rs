//! waypoint
