//! `evenflow top`: a live terminal view of every member's share of new
//! connections (the balancer's choices), of open connections and of bytes
//! (the load it carries) against its expected share, refreshed each
//! interval.

use std::time::Duration;

use anyhow::{Context as _, Result};
use evenflow_proto::v1;
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Paragraph},
};

use crate::render;

/// Width of a share bar, in cells: three bars and the numbers fit a
/// 180-column terminal, pods' names included.
const BAR: usize = 10;

/// The bar for `observed` with a `|` marking `expected` (both 0..1), scaled
/// so that `scale` fills the bar.
pub fn share_bar(observed: f64, expected: f64, scale: f64) -> String {
    let cells = |x: f64| ((x / scale) * BAR as f64).round().clamp(0.0, BAR as f64) as usize;
    let filled = cells(observed);
    let mark = cells(expected).min(BAR - 1);
    (0..BAR)
        .map(|i| match (i < filled, i == mark) {
            (_, true) => '|',
            (true, false) => '█',
            (false, false) => '·',
        })
        .collect()
}

/// One line per member: name; new connections, open connections and
/// bytes, each a bar with its share against the expected share; rates,
/// CPU, the new-connection verdict and the load verdict. The line's colour
/// is the worse of the two.
pub fn member_lines(p: &v1::Pool) -> Vec<(String, i32)> {
    let views: Vec<v1::MemberView> = p.members.iter().map(render::main_view).collect();
    // One scale for every bar, so bars compare across signals.
    let scale = views
        .iter()
        .flat_map(|v| {
            [
                v.observed_share,
                render::load_share(&v.active),
                render::load_share(&v.bytes),
                v.expected_share,
            ]
        })
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let bar = |observed: f64, expected: f64| {
        format!(
            "{} {:>5.1}%",
            share_bar(observed, expected, scale),
            observed * 100.0
        )
    };
    // Kubernetes members are known by their Pods: right after the address.
    let pods = p.members.iter().map(|m| m.pod.len()).max().unwrap_or(0);
    let pod_col = if pods > 0 { pods + 1 } else { 0 };
    p.members
        .iter()
        .zip(&views)
        .map(|(m, v)| {
            let load = m.load.as_ref().and_then(|l| l.share.as_ref());
            let worst = match load {
                Some(l) if l.page || m.verdict == v1::Verdict::Ok as i32 => l.verdict,
                _ => m.verdict,
            };
            (
                format!(
                    "{:<21} {:<pod_col$}{} {} {} /{:>5.1}% {:>6.1}/s {:>5} open {:>3.0}% {:<18} {}",
                    render::member_name(m),
                    m.pod,
                    bar(v.observed_share, v.expected_share),
                    bar(render::load_share(&v.active), v.expected_share),
                    bar(render::load_share(&v.bytes), v.expected_share),
                    v.expected_share * 100.0,
                    v.new_conns_per_sec,
                    v.active_connections,
                    m.cpu_utilization * 100.0,
                    match v1::MemberState::try_from(m.state) {
                        Ok(v1::MemberState::Draining | v1::MemberState::NotReady) => format!(
                            "{} ({})",
                            render::verdict(m.verdict),
                            render::member_state(m.state)
                        ),
                        _ => render::verdict(m.verdict).to_owned(),
                    },
                    render::load_word(m),
                ),
                worst,
            )
        })
        .collect()
}

fn color(verdict: i32) -> Color {
    match v1::Verdict::try_from(verdict) {
        Ok(v1::Verdict::Ok) => Color::Green,
        Ok(
            v1::Verdict::Zero
            | v1::Verdict::SkewLow
            | v1::Verdict::SkewHigh
            | v1::Verdict::Concentration
            | v1::Verdict::Down
            | v1::Verdict::Failing,
        ) => Color::Red,
        Ok(
            v1::Verdict::NoData
            | v1::Verdict::Hot
            | v1::Verdict::Mismatch
            | v1::Verdict::DrainingViolation,
        ) => Color::Yellow,
        _ => Color::Gray,
    }
}

fn draw(f: &mut Frame<'_>, pools: &[v1::Pool], collector: &str, error: Option<&str>) {
    let area = f.area();
    let mut constraints: Vec<Constraint> = vec![Constraint::Length(1)];
    constraints.extend(
        pools
            .iter()
            .map(|p| Constraint::Length(p.members.len() as u16 + 3)),
    );
    constraints.push(Constraint::Min(0));
    let chunks = Layout::vertical(constraints).split(area);
    let header = match error {
        Some(e) => Line::from(Span::styled(
            format!("evenflow top · {collector} · {e}"),
            Style::default().fg(Color::Red),
        )),
        None => Line::from(format!(
            "evenflow top · {collector} · {} pools · shares of new connections, open connections, bytes (█) vs expected (|) · q to quit",
            pools.len()
        )),
    };
    f.render_widget(Paragraph::new(header), chunks[0]);
    for (i, p) in pools.iter().enumerate() {
        let mut lines = vec![Line::from(Span::styled(
            format!(
                "{:<21} {:<width$} {:<width$} {:<width$} {:>7} {:>6.1}/s {:>5} open  eff. members {:.1}/{:.1}   CPU VERDICT / LOAD",
                "MEMBER",
                "NEW CONNECTIONS",
                "OPEN CONNECTIONS",
                "BYTES",
                "EXPECT",
                p.server_conns_per_sec.max(p.lb_conns_per_sec),
                p.server_active_connections.max(p.lb_active_connections),
                p.effective_members,
                p.expected_effective_members,
                width = BAR + 7
            ),
            Style::default().add_modifier(Modifier::BOLD),
        ))];
        lines.extend(
            member_lines(p)
                .into_iter()
                .map(|(text, v)| Line::from(Span::styled(text, Style::default().fg(color(v))))),
        );
        let title = format!(
            " {} · {} {} ",
            crate::names::title(p),
            render::verdict(p.verdict),
            p.reason
        );
        f.render_widget(
            Paragraph::new(lines).block(Block::bordered().title(title)),
            chunks[i + 1],
        );
    }
}

/// Every pool, or the pools `pool` names (a pool name, or a Kubernetes
/// Service: see [`crate::names::matching`]).
async fn fetch(
    client: &mut v1::distribution_client::DistributionClient<tonic::transport::Channel>,
    pool: Option<&str>,
) -> Result<Vec<v1::Pool>, String> {
    let pools = client
        .list_pools(v1::ListPoolsRequest {})
        .await
        .map(|r| r.into_inner().pools)
        .map_err(|s| s.message().to_owned())?;
    let Some(name) = pool else {
        return Ok(pools);
    };
    Ok(crate::names::resolve(&pools, name)?
        .into_iter()
        .cloned()
        .collect())
}

/// Runs the live view until q, Esc or Ctrl-C.
pub async fn run(
    collector: &crate::client::Collector,
    pool: Option<String>,
    interval: Duration,
) -> Result<()> {
    let mut client = crate::client::connect(collector).await?;
    let mut terminal =
        ratatui::try_init().context("opening the terminal (evenflow top needs a TTY)")?;
    let result = async {
        let mut pools = Vec::new();
        loop {
            let error = match fetch(&mut client, pool.as_deref()).await {
                Ok(p) => {
                    pools = p;
                    None
                }
                Err(e) => Some(e),
            };
            terminal
                .draw(|f| draw(f, &pools, collector.url(), error.as_deref()))
                .context("drawing")?;
            let deadline = std::time::Instant::now() + interval;
            while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
                let ready = tokio::task::block_in_place(|| {
                    event::poll(left.min(Duration::from_millis(100)))
                })?;
                if !ready {
                    continue;
                }
                if let Event::Key(k) = tokio::task::block_in_place(event::read)? {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok::<(), anyhow::Error>(());
                    }
                }
            }
        }
    }
    .await;
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_marks_expected_and_fills_observed() {
        let b = share_bar(0.5, 0.2, 1.0);
        assert_eq!(b.chars().count(), BAR);
        // Half the bar filled, the expected mark a fifth in (over a fill).
        assert_eq!(b.chars().filter(|c| *c == '█').count(), BAR / 2 - 1);
        assert_eq!(b.chars().position(|c| c == '|'), Some(BAR / 5));
        let zero = share_bar(0.0, 0.25, 1.0);
        assert!(!zero.contains('█'));
    }

    #[test]
    fn one_line_per_member() {
        let p = v1::Pool {
            name: "web".into(),
            members: vec![v1::Member::default(); 4],
            ..Default::default()
        };
        assert_eq!(member_lines(&p).len(), 4);
    }

    /// A member with its share of new connections and none of the open
    /// ones shows three bars that say so, and the load verdict's colour.
    #[test]
    fn load_bars_beside_the_new_connection_bar() {
        let share = |observed: f64| v1::LoadShare {
            observed_share: observed,
            expected_share: 0.5,
            ..Default::default()
        };
        let m = v1::Member {
            address: "10.0.0.2".into(),
            port: 80,
            verdict: v1::Verdict::Ok as i32,
            server_view: Some(v1::MemberView {
                fresh: true,
                observed_share: 0.5,
                expected_share: 0.5,
                active_connections: 0,
                active: Some(share(0.0)),
                bytes: Some(share(0.0)),
                ..Default::default()
            }),
            load: Some(v1::LoadFinding {
                signal: v1::Signal::ActiveConnections as i32,
                view: v1::View::Server as i32,
                share: Some(v1::LoadShare {
                    verdict: v1::Verdict::Zero as i32,
                    page: true,
                    cause: v1::Cause::Pinned as i32,
                    ..share(0.0)
                }),
            }),
            ..Default::default()
        };
        let p = v1::Pool {
            name: "grpc".into(),
            members: vec![m],
            ..Default::default()
        };
        let (line, verdict) = &member_lines(&p)[0];
        let bars: Vec<&str> = line
            .split_whitespace()
            .filter(|w| w.contains('|'))
            .collect();
        assert_eq!(bars.len(), 3, "{line}");
        assert!(bars[0].contains('█') && !bars[1].contains('█') && !bars[2].contains('█'));
        assert!(line.contains("ZERO! conns pinned"), "{line}");
        assert_eq!(*verdict, v1::Verdict::Zero as i32);
    }

    /// The widest line a Kubernetes member makes fits the 180 columns the
    /// tests' terminal has, borders included.
    #[test]
    fn a_pod_line_fits_180_columns() {
        let m = v1::Member {
            address: "10.244.100.200".into(),
            port: 8080,
            pod: "default/svc-b-5f9c-abcde".into(),
            verdict: v1::Verdict::DrainingViolation as i32,
            server_view: Some(v1::MemberView {
                new_conns_per_sec: 12345.6,
                active_connections: 99999,
                observed_share: 1.0,
                expected_share: 1.0,
                ..Default::default()
            }),
            load: Some(v1::LoadFinding {
                signal: v1::Signal::ActiveConnections as i32,
                share: Some(v1::LoadShare {
                    verdict: v1::Verdict::SkewHigh as i32,
                    page: true,
                    cause: v1::Cause::Routing as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            cpu_utilization: 1.0,
            ..Default::default()
        };
        let p = v1::Pool {
            name: "default/svc-b:http".into(),
            members: vec![m],
            ..Default::default()
        };
        let (line, _) = &member_lines(&p)[0];
        assert!(
            line.chars().count() <= 176,
            "{} columns: {line}",
            line.chars().count()
        );
        assert!(line.contains("default/svc-b-5f9c-abcde"));
    }
}
