//! Routing: which route a request takes (`matcher`) and the ordered table of routes bound to
//! live services (`table`).

pub mod matcher;
pub mod table;

pub use matcher::{host_without_port, Mismatch, RequestView, RouteMatch};
pub use table::{
    ActionSpec, HeaderEdits, Rewrite, Route, RouteSpec, RouteTable, Target, Unmatched,
    WeightedService,
};
