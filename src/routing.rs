//! Routing: which route a request takes (`matcher`), the ordered table of routes bound to
//! live services (`table`), the binding itself (`bind`), and which TCP route an opaque
//! connection takes (`tcp`).

pub mod bind;
pub mod matcher;
pub mod normalize;
pub mod table;
pub mod tcp;

pub use matcher::{host_without_port, Mismatch, RequestView, RouteMatch};
pub use table::{
    ActionSpec, HeaderEdits, Rewrite, Route, RouteSpec, RouteTable, Target, Unmatched,
    WeightedService,
};
