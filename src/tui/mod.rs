//! `coda-asr live`'s terminal monitor (ratatui over crossterm).

pub mod state;
pub mod view;

use crate::stream::source::CaptureQueue;
use crate::stream::{Control, Event};
use anyhow::Result;
use crossbeam_channel::{Receiver, Sender};
use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind};
use state::App;
use std::io::Write;
use std::time::Duration;

/// Run the monitor until the recogniser ends. Returns whether it reported an error.
pub fn run(
    events: Receiver<Event>,
    control: Sender<Control>,
    mut save: Option<&mut std::fs::File>,
    model: &str,
    queue: &CaptureQueue,
) -> Result<bool> {
    let mut terminal = ratatui::try_init()?;
    let mut app = App::new(model);
    let mut stopping = false;
    let result = (|| -> Result<()> {
        loop {
            for e in events.try_iter() {
                if let (Event::Final { text, .. }, Some(f)) = (&e, save.as_deref_mut()) {
                    writeln!(f, "{text}")?;
                }
                app.apply(e);
            }
            app.stats.dropped_samples = queue.dropped.load(std::sync::atomic::Ordering::Relaxed);
            terminal.draw(|f| view::draw(f, &app))?;
            if app.ended {
                return Ok(());
            }
            // Redraw at ~10 Hz; keys in between.
            if event::poll(Duration::from_millis(100))? {
                if let TermEvent::Key(k) = event::read()? {
                    if k.kind != KeyEventKind::Press {
                        continue;
                    }
                    match k.code {
                        KeyCode::Char('q') | KeyCode::Esc if !stopping => {
                            stopping = true;
                            app.status = "stopping: flushing finals…".into();
                            let _ = control.send(Control::Stop);
                        }
                        KeyCode::Char('c') if k.modifiers.contains(event::KeyModifiers::CONTROL) && !stopping => {
                            stopping = true;
                            let _ = control.send(Control::Stop);
                        }
                        KeyCode::Char(' ') => {
                            let paused = !app.stats.paused;
                            app.stats.paused = paused;
                            app.status = if paused { "paused".into() } else { "listening".into() };
                            let _ = control.send(Control::Pause(paused));
                        }
                        KeyCode::Char('+') => {
                            let b = (app.stats.budget + 0.1).min(2.0);
                            app.stats.budget = b;
                            let _ = control.send(Control::SetBudget(b));
                        }
                        KeyCode::Char('-') => {
                            let b = (app.stats.budget - 0.1).max(0.1);
                            app.stats.budget = b;
                            let _ = control.send(Control::SetBudget(b));
                        }
                        KeyCode::Char('r') => {
                            let choices = [1.0, 2.0, 3.0, 4.0, 6.0, 8.0];
                            app.fixed_reduction = app.next_reduction(&choices);
                            let _ = control.send(Control::SetReduction(app.fixed_reduction));
                        }
                        KeyCode::Char('s') => {
                            let name = format!(
                                "coda-asr-transcript-{}.txt",
                                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
                            );
                            app.status = match std::fs::write(&name, app.transcript() + "\n") {
                                Ok(()) => format!("saved {name}"),
                                Err(e) => format!("cannot save {name}: {e}"),
                            };
                        }
                        _ => {}
                    }
                }
            }
        }
    })();
    ratatui::restore();
    if !app.finals.is_empty() {
        println!("{}", app.transcript());
    }
    result?;
    Ok(app.error.is_some())
}
