//! `remora test`: request → expected route / backend / status cases run against a config,
//! so teams can gate routing changes in CI. Reports every mismatch and the routes no case
//! covered.
//!
//! ```yaml
//! cases:
//!   - name: canary header goes to v2
//!     request: { method: GET, url: http://inventory/api/items, headers: { x-canary: "true" } }
//!     expect: { route: inventory-canary, backend: inventory-v2, path: /v2/api/items }
//!   - request: { url: http://docs/ }
//!     expect: { status: 301, location: https://docs.example.com/ }
//! ```

use std::{collections::BTreeMap, fmt};

use serde::Deserialize;

use crate::{
    config::{spelling::closest, Compiled},
    explain::{explain, Action, Explanation, Outcome, Probe},
};

/// A file of route test cases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The cases, run in order.
    pub cases: Vec<Case>,
}

/// One request and what should happen to it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// A name for the report. Default: the request line.
    #[serde(default)]
    pub name: Option<String>,
    /// The request.
    pub request: CaseRequest,
    /// What should happen.
    pub expect: Expect,
}

/// The request of a case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    /// Method. Default: GET.
    #[serde(default = "get")]
    pub method: String,
    /// Absolute URL (`http://host/path?query`), or a path with a `host` header.
    pub url: String,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn get() -> String {
    "GET".into()
}

/// Expectations; every one given must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The route that takes the request.
    #[serde(default)]
    pub route: Option<String>,
    /// A backend service the request can go to (weight above 0).
    #[serde(default)]
    pub backend: Option<String>,
    /// The status Remora answers with itself: redirects, direct responses, 404 for no route.
    #[serde(default)]
    pub status: Option<u16>,
    /// The path and query sent upstream (after rewrites).
    #[serde(default)]
    pub path: Option<String>,
    /// A redirect's location.
    #[serde(default)]
    pub location: Option<String>,
    /// `true`: no route matches and the request is passed through.
    #[serde(default)]
    pub passthrough: Option<bool>,
}

/// The outcome of every case.
#[derive(Debug)]
pub struct Report {
    /// Each case's name and its failures (none: passed).
    pub results: Vec<(String, Vec<String>)>,
    /// Routes that no case's request matched.
    pub uncovered: Vec<String>,
    /// Routes in the config.
    pub routes: usize,
    /// The coverage required, in percent (`--min-coverage`).
    pub min_coverage: Option<f64>,
}

impl Report {
    /// Cases that failed.
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|(_, f)| !f.is_empty()).count()
    }

    /// Percent of the routes some case's request matched.
    pub fn coverage(&self) -> f64 {
        if self.routes == 0 {
            return 100.0;
        }
        (self.routes - self.uncovered.len()) as f64 * 100.0 / self.routes as f64
    }

    /// Every case passed and the coverage is at least the required.
    pub fn passed(&self) -> bool {
        self.failed() == 0 && self.min_coverage.is_none_or(|min| self.coverage() >= min)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, failures) in &self.results {
            if failures.is_empty() {
                writeln!(f, "ok    {name}")?;
            } else {
                writeln!(f, "FAIL  {name}: {}", failures.join("; "))?;
            }
        }
        let failed = self.failed();
        writeln!(f, "{} passed, {failed} failed", self.results.len() - failed)?;
        if !self.uncovered.is_empty() {
            writeln!(f, "routes no case covered: {}", self.uncovered.join(", "))?;
        }
        let covered = self.routes - self.uncovered.len();
        write!(
            f,
            "route coverage {:.1}% ({covered} of {} routes)",
            self.coverage(),
            self.routes
        )?;
        match self.min_coverage {
            Some(min) if self.coverage() < min => writeln!(f, ", below the required {min}%"),
            _ => writeln!(f),
        }
    }
}

/// Runs `cases` against `compiled`, requiring `min_coverage` percent of the routes to be
/// matched by some case; `Err` when the config has no routes to test or the file no cases.
pub fn run(
    compiled: &Compiled,
    cases: &CaseFile,
    min_coverage: Option<f64>,
) -> Result<Report, String> {
    let outbound = compiled
        .outbound
        .as_ref()
        .ok_or("the config has no outbound section, so no routes")?;
    if cases.cases.is_empty() {
        return Err("the case file has no cases: a test that checks nothing proves nothing".into());
    }
    if let Some(min) = min_coverage {
        if !(0.0..=100.0).contains(&min) {
            return Err(format!(
                "--min-coverage {min}: give a percent from 0 to 100"
            ));
        }
    }
    let route_names: Vec<&str> = outbound.routes.iter().map(|r| &*r.name).collect();
    let service_names: Vec<&str> = compiled.services.keys().map(|s| &**s).collect();
    let mut covered = std::collections::HashSet::new();
    let mut results = Vec::new();
    for (i, case) in cases.cases.iter().enumerate() {
        let (name, answer) = case_answer(compiled, i, case);
        let failures = match answer {
            Err(e) => vec![e],
            Ok(ex) => {
                if let Outcome::Route(m) = &ex.outcome {
                    covered.insert(m.route.clone());
                }
                let mut failures = names(&case.expect, &route_names, &service_names);
                failures.extend(check(&case.expect, &ex.outcome, &ex.path));
                failures
            }
        };
        results.push((name, failures));
    }
    let uncovered = outbound
        .routes
        .iter()
        .map(|r| r.name.to_string())
        .filter(|r| !covered.contains(r))
        .collect();
    Ok(Report {
        results,
        uncovered,
        routes: outbound.routes.len(),
        min_coverage,
    })
}

/// A case's name for reports, and what `compiled` does with its request.
fn case_answer(
    compiled: &Compiled,
    i: usize,
    case: &Case,
) -> (String, Result<Explanation, String>) {
    let req = &case.request;
    let name = case
        .name
        .clone()
        .unwrap_or_else(|| format!("#{} {} {}", i + 1, req.method, req.url));
    let Some(outbound) = &compiled.outbound else {
        return (name, Err("no outbound section".into()));
    };
    let headers: Vec<String> = req
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let answer =
        Probe::new(&req.method, &req.url, headers.iter().map(String::as_str)).map(|probe| {
            explain(
                &probe,
                &outbound.routes,
                outbound.unmatched,
                &compiled.services,
            )
        });
    (name, answer)
}

/// For each case, what `compiled` does with its request, in one line (for `remora diff`).
pub fn answers(compiled: &Compiled, cases: &CaseFile) -> Vec<(String, String)> {
    cases
        .cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let (name, answer) = case_answer(compiled, i, case);
            let line = match answer {
                Err(e) => format!("unusable request: {e}"),
                Ok(ex) => summary(&ex),
            };
            (name, line)
        })
        .collect()
}

/// An explanation in one line: the route and where the request goes.
fn summary(ex: &Explanation) -> String {
    match &ex.outcome {
        Outcome::Rejected => "no route: 404".into(),
        Outcome::Passthrough { authority } => format!("no route: passed through to {authority}"),
        Outcome::Route(m) => {
            let action = match &m.action {
                Action::Redirect { status, location } => format!("redirect {status} to {location}"),
                Action::DirectResponse { status, .. } => format!("direct response {status}"),
                Action::Forward { backends } => {
                    let to: Vec<String> = backends
                        .iter()
                        .filter(|b| b.weight > 0)
                        .map(|b| format!("{} {:.0}%", b.service, b.share_percent))
                        .collect();
                    let path = m
                        .rewritten_path
                        .as_ref()
                        .map(|p| format!(" as {p}"))
                        .unwrap_or_default();
                    format!("to {}{path}", to.join(", "))
                }
            };
            format!("route {}: {action}", m.route)
        }
    }
}

/// Expectations that cannot hold whatever the request: none at all, or a route or backend
/// the config does not have.
fn names(expect: &Expect, routes: &[&str], services: &[&str]) -> Vec<String> {
    let mut failures = Vec::new();
    let e = expect;
    if e.route.is_none()
        && e.backend.is_none()
        && e.status.is_none()
        && e.path.is_none()
        && e.location.is_none()
        && e.passthrough.is_none()
    {
        failures.push(
            "expects nothing: give route, backend, status, path, location or passthrough".into(),
        );
    }
    let unknown = |kind: &str, name: &str, known: &[&str]| {
        let hint = closest(name, known.iter().copied())
            .map(|k| format!(" (did you mean {k:?}?)"))
            .unwrap_or_default();
        format!("the config has no {kind} named {name:?}{hint}")
    };
    if let Some(r) = &e.route {
        if !routes.contains(&r.as_str()) {
            failures.push(unknown("route", r, routes));
        }
    }
    if let Some(b) = &e.backend {
        if !services.contains(&b.as_str()) {
            failures.push(unknown("service", b, services));
        }
    }
    failures
}

fn check(expect: &Expect, outcome: &Outcome, request_path: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let got_route = match outcome {
        Outcome::Route(m) => format!("route {}", m.route),
        Outcome::Passthrough { .. } => "no route (passthrough)".to_owned(),
        Outcome::Rejected => "no route (404)".to_owned(),
    };
    let matched = match outcome {
        Outcome::Route(m) => Some(m),
        _ => None,
    };
    if let Some(want) = &expect.route {
        if matched.is_none_or(|m| &m.route != want) {
            failures.push(format!("expected route {want}, got {got_route}"));
        }
    }
    if let Some(want) = expect.passthrough {
        let is = matches!(outcome, Outcome::Passthrough { .. });
        if is != want {
            failures.push(format!("expected passthrough: {want}, got {got_route}"));
        }
    }
    if let Some(want) = &expect.backend {
        match matched.map(|m| &m.action) {
            Some(Action::Forward { backends }) => {
                if !backends.iter().any(|b| &b.service == want && b.weight > 0) {
                    let have: Vec<String> = backends
                        .iter()
                        .map(|b| format!("{} ({:.0}%)", b.service, b.share_percent))
                        .collect();
                    failures.push(format!(
                        "expected backend {want}, route sends to {}",
                        have.join(", ")
                    ));
                }
            }
            _ => failures.push(format!(
                "expected backend {want}, got {got_route} which forwards nowhere"
            )),
        }
    }
    if let Some(want) = expect.status {
        let got = match (outcome, matched.map(|m| &m.action)) {
            (Outcome::Rejected, _) => Some(404),
            (_, Some(Action::Redirect { status, .. }))
            | (_, Some(Action::DirectResponse { status, .. })) => Some(*status),
            _ => None,
        };
        match got {
            Some(got) if got == want => {}
            Some(got) => failures.push(format!("expected status {want}, got {got}")),
            None => failures.push(format!(
                "expected status {want}, but the request is forwarded and its status is the upstream's"
            )),
        }
    }
    if let Some(want) = &expect.location {
        match matched.map(|m| &m.action) {
            Some(Action::Redirect { location, .. }) if location == want => {}
            Some(Action::Redirect { location, .. }) => {
                failures.push(format!("expected location {want}, got {location}"))
            }
            _ => failures.push(format!("expected a redirect to {want}, got {got_route}")),
        }
    }
    if let Some(want) = &expect.path {
        let got = match (outcome, matched) {
            (Outcome::Passthrough { .. }, _) => Some(request_path.to_owned()),
            (_, Some(m)) if matches!(m.action, Action::Forward { .. }) => Some(
                m.rewritten_path
                    .clone()
                    .unwrap_or_else(|| request_path.to_owned()),
            ),
            _ => None,
        };
        match got {
            Some(got) if &got == want => {}
            Some(got) => failures.push(format!("expected upstream path {want}, got {got}")),
            None => failures.push(format!(
                "expected upstream path {want}, but {got_route} forwards nothing"
            )),
        }
    }
    failures
}
