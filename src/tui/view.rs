//! Drawing the live monitor: transcript (finals, then the partial dimmed), input level and
//! voice state, and what the model is spending. Fits an 80×24 terminal.

use super::state::App;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Borders, Gauge, Paragraph, Wrap};
use ratatui::Frame;

pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Min(6), Constraint::Length(9), Constraint::Length(1)])
        .split(area);
    draw_transcript(f, app, rows[0]);
    let cols = Layout::default().direction(Direction::Horizontal).constraints([Constraint::Length(28), Constraint::Min(30)]).split(rows[1]);
    draw_input(f, app, cols[0]);
    draw_compute(f, app, cols[1]);
    let help = "q quit · space pause · +/- budget · r cycle r/auto · s save";
    let status = app.error.as_deref().map(|e| format!("error: {e}")).unwrap_or_else(|| app.status.clone());
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(status, Style::default().fg(Color::Yellow)),
            Span::raw("  "),
            Span::styled(help, Style::default().add_modifier(Modifier::DIM)),
        ])),
        rows[2],
    );
}

fn draw_transcript(f: &mut Frame, app: &App, area: Rect) {
    let mut spans = vec![Span::raw(app.transcript())];
    if !app.partial.is_empty() {
        spans.push(Span::raw(" "));
        spans.push(Span::styled(app.partial.clone(), Style::default().add_modifier(Modifier::DIM | Modifier::ITALIC)));
    }
    let text = Text::from(Line::from(spans));
    let inner_width = area.width.saturating_sub(2).max(1) as usize;
    // Keep the newest text in view: scroll past what no longer fits.
    let chars = app.transcript().len() + app.partial.len() + 1;
    let lines_needed = chars / inner_width + 1;
    let visible = area.height.saturating_sub(2) as usize;
    let scroll = lines_needed.saturating_sub(visible) as u16;
    let p = Paragraph::new(text)
        .wrap(Wrap { trim: true })
        .scroll((scroll, 0))
        .block(Block::default().borders(Borders::ALL).title(" transcript "));
    f.render_widget(p, area);
}

fn draw_input(f: &mut Frame, app: &App, area: Rect) {
    let block = Block::default().borders(Borders::ALL).title(" input ");
    let inner = block.inner(area);
    f.render_widget(block, area);
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Length(1), Constraint::Length(1), Constraint::Min(1)])
        .split(inner);
    // −60 dBFS … 0 dBFS on the meter.
    let level = ((app.stats.level_db + 60.0) / 60.0).clamp(0.0, 1.0);
    f.render_widget(
        Gauge::default()
            .ratio(level)
            .label(format!("{:.0} dBFS", app.stats.level_db.max(-120.0)))
            .gauge_style(Style::default().fg(Color::Green)),
        rows[0],
    );
    let vad = if app.stats.paused {
        Span::styled("paused", Style::default().fg(Color::Yellow))
    } else if app.stats.speech {
        Span::styled("speech", Style::default().fg(Color::Green).add_modifier(Modifier::BOLD))
    } else {
        Span::styled("silence", Style::default().add_modifier(Modifier::DIM))
    };
    f.render_widget(Paragraph::new(Line::from(vec![Span::raw("voice: "), vad])), rows[1]);
    let s = &app.stats;
    f.render_widget(
        Paragraph::new(vec![
            Line::from(format!("audio {:.1} s", s.audio_s)),
            Line::from(format!("buffer {:.1} s", s.buffer_s)),
            Line::from(format!("dropped {}", s.dropped_samples)),
        ]),
        rows[2],
    );
}

fn draw_compute(f: &mut Frame, app: &App, area: Rect) {
    let s = &app.stats;
    let heavy = if s.heavy_fraction.is_empty() {
        "-".to_string()
    } else {
        s.heavy_fraction.iter().map(|h| format!("{:.0}", h * 100.0)).collect::<Vec<_>>().join("/")
    };
    let mode = match (s.can_adapt, app.fixed_reduction) {
        (false, _) => "dense encoder: cannot adapt".to_string(),
        (true, None) => "auto".to_string(),
        (true, Some(_)) => "fixed".to_string(),
    };
    let lines = vec![
        Line::from(format!("model {}   r = {} ({mode})", app.model, s.reduction)),
        Line::from(format!("heavy frames % per layer: {heavy}")),
        Line::from(format!("encoder FLOPs saved vs dense: {:.0}%", s.flops_saved_pct)),
        Line::from(format!("step compute {:.0} ms", s.step_compute_ms)),
        Line::from(vec![
            Span::raw(format!("compute/audio {:.2} ", s.load)),
            Span::styled(
                format!("(budget {:.2})", s.budget),
                if s.load > s.budget { Style::default().fg(Color::Red) } else { Style::default() },
            ),
        ]),
        Line::from(format!("latency {:.2} s   device cpu", s.last_latency_s)),
    ];
    f.render_widget(Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" compute ")), area);
}
