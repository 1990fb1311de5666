//! `evenflow top`: a live terminal view of every member's share of new
//! connections against its expected share, refreshed each interval.

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

/// Width of the share bar, in cells.
const BAR: usize = 30;

/// The bar for `observed` with a `|` marking `expected` (both 0..1), scaled
/// so the larger of the two (or 1/members * 2) fills the bar.
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

/// One line per member: name, bar, share vs expected, rates, CPU, verdict.
pub fn member_lines(p: &v1::Pool) -> Vec<(String, i32)> {
    let scale = p
        .members
        .iter()
        .map(|m| {
            let v = render::main_view(m);
            v.observed_share.max(v.expected_share)
        })
        .fold(0.0f64, f64::max)
        .max(1e-9);
    p.members
        .iter()
        .map(|m| {
            let v = render::main_view(m);
            (
                format!(
                    "{:<24} {} {:>6.1}% / {:>5.1}%  {:>7.1} conn/s  {:>4.0}% cpu  {:<9} {}{}",
                    render::member_name(m),
                    share_bar(v.observed_share, v.expected_share, scale),
                    v.observed_share * 100.0,
                    v.expected_share * 100.0,
                    v.new_conns_per_sec,
                    m.cpu_utilization * 100.0,
                    render::member_state(m.state),
                    render::verdict(m.verdict),
                    if m.pod.is_empty() {
                        String::new()
                    } else {
                        format!("  {}", m.pod)
                    },
                ),
                m.verdict,
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
            | v1::Verdict::Concentration,
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
            "evenflow top · {collector} · {} pools · share of new connections (█) vs expected (|) · q to quit",
            pools.len()
        )),
    };
    f.render_widget(Paragraph::new(header), chunks[0]);
    for (i, p) in pools.iter().enumerate() {
        let mut lines = vec![Line::from(Span::styled(
            format!(
                "{:<24} {:<width$} {:>15}  {:>7.1} conn/s  eff. members {:.1}/{:.1}",
                "MEMBER",
                "SHARE",
                "OBSERVED/EXPECT",
                p.server_conns_per_sec.max(p.lb_conns_per_sec),
                p.effective_members,
                p.expected_effective_members,
                width = BAR
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
    let found: Vec<v1::Pool> = crate::names::matching(&pools, name)
        .into_iter()
        .cloned()
        .collect();
    if found.is_empty() {
        return Err(format!(
            "no pool or Kubernetes Service {name:?} (evenflow status lists them)"
        ));
    }
    Ok(found)
}

/// Runs the live view until q, Esc or Ctrl-C.
pub async fn run(collector: &str, pool: Option<String>, interval: Duration) -> Result<()> {
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
                .draw(|f| draw(f, &pools, collector, error.as_deref()))
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
        let b = share_bar(0.5, 0.25, 1.0);
        assert_eq!(b.chars().count(), BAR);
        assert_eq!(b.chars().filter(|c| *c == '█').count(), 14);
        assert_eq!(b.chars().position(|c| c == '|'), Some(8));
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
}
