//! `dak chat +91...`: a full-screen conversation with one number.
//!
//! The screen is a title bar, the message list (the last messages from the
//! profile, then live ones, with ticks on outgoing messages), a status line
//! and an input line. One task owns the `Client`: a `select!` waits on
//! either a key (read by a std thread, since crossterm's blocking `read`
//! must not run on the runtime) or a push from the server. A push is then
//! handled to completion outside the `select!`, because `handle_push` is not
//! cancel-safe. Incoming messages shown here are marked read at once, which
//! turns the sender's ticks blue.
//!
//! The terminal is put back (raw mode off, main screen, cursor shown) on
//! every way out: a normal quit, an error, or a panic.

use std::io::Stdout;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::terminal::{EnterAlternateScreen, LeaveAlternateScreen};
use dak_client::{Client, ClientError, Event, MessageView, Profile, TickState};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use tokio::sync::mpsc;

/// How many messages of history are shown when the chat opens.
const HISTORY: usize = 200;

/// Opens the chat with `peer` (a number or a group key) and runs it until the user
/// quits (Ok) or the connection is lost (Err, after the terminal is restored).
pub async fn run(mut client: dak_client::Client, peer: String) -> anyhow::Result<()> {
    let mut chat = Chat::new(client.phone().to_string(), peer);
    if let Ok(info) = dak_client::groups::group_info(client.profile(), &chat.peer) {
        chat.title = format!("{} ({} members)", info.title, info.members.len());
    }
    let unread = chat.load_history(client.profile())?;
    let mut tui = Tui::enter()?;
    let (tx, mut rx) = mpsc::channel(256);
    spawn_input_reader(tx);
    let result = async {
        mark_read(&mut client, &unread).await?;
        chat_loop(&mut client, &mut chat, &mut tui, &mut rx).await
    }
    .await;
    drop(rx); // the input thread notices and ends
    drop(tui); // restores the terminal before main prints any error
    if result.is_ok() {
        client.close().await;
    }
    result
}

// ---------------------------------------------------------------- state ----

/// One row of the message list.
enum Item {
    Message(Shown),
    /// A dim line: an undecodable message, a failed send.
    Notice(String),
}

/// A message as this screen shows it.
struct Shown {
    /// None while an outgoing message is still being handed to the server.
    id: Option<Vec<u8>>,
    at_ms: i64,
    /// None for messages from this number (any of its devices).
    from: Option<String>,
    text: String,
    /// Some for outgoing messages.
    tick: Option<TickState>,
    failed: bool,
}

impl Shown {
    fn from_view(m: &MessageView, profile: &Profile) -> Shown {
        let tick = m.outgoing.then(|| tick_state(profile, &m.id));
        Shown {
            id: Some(m.id.clone()),
            at_ms: if m.sent_at_ms > 0 {
                m.sent_at_ms
            } else {
                m.server_time_ms
            },
            from: (!m.outgoing).then(|| m.from.clone()),
            text: crate::show::message_text(m),
            tick,
            failed: false,
        }
    }
}

/// The tick the profile records; Pending if it cannot say.
fn tick_state(profile: &Profile, id: &[u8]) -> TickState {
    dak_client::tick_of(profile, id)
        .map(|t| t.state)
        .unwrap_or(TickState::Pending)
}

struct Chat {
    me: String,
    peer: String,
    /// What the top bar calls the conversation.
    title: String,
    items: Vec<Item>,
    input: String,
    status: String,
    /// Whether the first QueueEmpty (all that waited is received) has come.
    synced: bool,
    /// Lines scrolled up from the bottom of the message list.
    scroll: usize,
}

impl Chat {
    fn new(me: String, peer: String) -> Chat {
        Chat {
            me,
            title: peer.clone(),
            peer,
            items: Vec::new(),
            input: String::new(),
            status: "syncing…".into(),
            synced: false,
            scroll: 0,
        }
    }

    /// Loads the recent history; returns the ids of incoming messages not yet read.
    fn load_history(&mut self, profile: &Profile) -> Result<Vec<Vec<u8>>> {
        let history = profile
            .conversation(&self.peer, HISTORY)
            .context("cannot read the conversation")?;
        let unread = history
            .iter()
            .filter(|m| !m.outgoing && m.read_ms == 0)
            .map(|m| m.id.clone())
            .collect();
        self.items.extend(
            history
                .iter()
                .map(|m| Item::Message(Shown::from_view(m, profile))),
        );
        Ok(unread)
    }

    fn find(&mut self, id: &[u8]) -> Option<&mut Shown> {
        self.items.iter_mut().rev().find_map(|item| match item {
            Item::Message(m) if m.id.as_deref() == Some(id) => Some(m),
            _ => None,
        })
    }

    fn push(&mut self, item: Item) {
        self.items.push(item);
        self.scroll = 0;
    }

    /// Shows one event; incoming messages of this chat go into `to_read`.
    fn apply(&mut self, profile: &Profile, event: Event, to_read: &mut Vec<Vec<u8>>) {
        match event {
            Event::Message(m) if m.conversation == self.peer => {
                self.add_message(profile, &m, to_read)
            }
            Event::Message(m) if !m.outgoing => {
                self.status = format!("new message from {}", m.from)
            }
            Event::Message(_) => {} // sent from another of my devices to someone else
            Event::Tick { id, state } => self.set_tick(&id, state),
            // Sent after every batch that empties the mailbox: only the first one matters.
            Event::QueueEmpty if !self.synced => {
                self.synced = true;
                self.status = "connected".into();
            }
            Event::QueueEmpty => {}
            Event::Undecodable { from, reason, .. } => self.push(Item::Notice(format!(
                "⚠ a message from {from} could not be decrypted ({})",
                crate::show::undecodable_text(&reason)
            ))),
            Event::Edited { ref id, .. } | Event::Deleted { ref id, .. } => {
                if let Ok(Some(m)) = profile.message(id)
                    && let Some(shown) = self.find(id)
                {
                    shown.text = crate::show::message_text(&m);
                }
            }
            Event::SecurityNotice {
                ref conversation, ..
            }
            | Event::Group {
                ref conversation, ..
            }
            | Event::Reaction {
                ref conversation, ..
            } if *conversation == self.peer => {
                if let Some(line) = crate::show::notice_text(&event) {
                    self.push(Item::Notice(line));
                }
            }
            Event::SecurityNotice { .. } | Event::Group { .. } | Event::Reaction { .. } => {}
            Event::MessageRequest {
                ref conversation, ..
            } if *conversation == self.peer => {
                if let Some(line) = crate::show::notice_text(&event) {
                    self.push(Item::Notice(line));
                }
            }
            Event::MessageRequest { from, .. } => {
                self.status = format!("message request from {from} (dak requests)")
            }
            Event::History { .. } => {
                if let Some(line) = crate::show::notice_text(&event) {
                    self.status = line;
                }
            }
            // In the status line, which no message can write to.
            Event::OperatorNotice(n) => {
                self.status = format!(
                    "▌ NOTICE FROM THE OPERATOR ({}): {} — read it: dak notices",
                    n.kind, n.title
                )
            }
            Event::NoticeRefused { reason } => {
                self.status = format!("▌ a notice from the server was refused: {reason}")
            }
            Event::KeyTransparency { warning, .. } => {
                self.status = format!("▌ ⚠ key transparency: {warning}")
            }
        }
    }

    fn add_message(&mut self, profile: &Profile, m: &MessageView, to_read: &mut Vec<Vec<u8>>) {
        if self.find(&m.id).is_some() {
            return;
        }
        if !m.outgoing {
            to_read.push(m.id.clone());
        }
        self.push(Item::Message(Shown::from_view(m, profile)));
    }

    fn set_tick(&mut self, id: &[u8], state: TickState) {
        if let Some(m) = self.find(id) {
            m.tick = m.tick.max(Some(state));
        }
    }

    /// Shows an outgoing message with 🕓 before it is sent; returns its index.
    fn push_pending(&mut self, text: &str) -> usize {
        self.push(Item::Message(Shown {
            id: None,
            at_ms: chrono::Utc::now().timestamp_millis(),
            from: None,
            text: text.to_string(),
            tick: Some(TickState::Pending),
            failed: false,
        }));
        self.items.len() - 1
    }

    fn pending(&mut self, index: usize) -> Option<&mut Shown> {
        match self.items.get_mut(index) {
            Some(Item::Message(m)) => Some(m),
            _ => None,
        }
    }

    fn mark_sent(&mut self, index: usize, id: Vec<u8>, state: TickState) {
        if let Some(m) = self.pending(index) {
            m.id = Some(id);
            m.tick = m.tick.max(Some(state.max(TickState::Sent)));
        }
    }

    fn mark_failed(&mut self, index: usize, why: &str) {
        if let Some(m) = self.pending(index) {
            m.failed = true;
        }
        self.push(Item::Notice(format!("✗ not sent: {why}")));
    }
}

// ----------------------------------------------------------------- loop ----

/// What one turn of the loop woke up for.
enum Wake {
    Input(Option<std::io::Result<TermEvent>>),
    Push(std::result::Result<dak_proto::v1::server_frame::Body, ClientError>),
}

/// What a key asks for.
enum Action {
    Nothing,
    Redraw,
    Send(String),
    Quit,
}

async fn chat_loop(
    client: &mut Client,
    chat: &mut Chat,
    tui: &mut Tui,
    rx: &mut mpsc::Receiver<std::io::Result<TermEvent>>,
) -> Result<()> {
    loop {
        tui.draw(chat)?;
        let wake = tokio::select! {
            input = rx.recv() => Wake::Input(input),
            push = client.recv_push() => Wake::Push(push),
        };
        match wake {
            Wake::Input(None) => return Err(anyhow!("the terminal stopped sending input")),
            Wake::Input(Some(Err(e))) => return Err(e).context("cannot read the terminal"),
            Wake::Input(Some(Ok(event))) => match on_terminal_event(chat, tui, event)? {
                Action::Quit => return Ok(()),
                Action::Send(text) => send(client, chat, tui, &text).await?,
                Action::Nothing | Action::Redraw => {}
            },
            Wake::Push(push) => on_push(client, chat, tui, push.map_err(fatal)?).await?,
        }
    }
}

fn on_terminal_event(chat: &mut Chat, tui: &mut Tui, event: TermEvent) -> Result<Action> {
    match event {
        TermEvent::Key(key) if key.kind != KeyEventKind::Release => Ok(on_key(chat, tui, key)?),
        TermEvent::Resize(..) => Ok(Action::Redraw),
        _ => Ok(Action::Nothing),
    }
}

fn on_key(chat: &mut Chat, tui: &mut Tui, key: KeyEvent) -> Result<Action> {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    let action = match key.code {
        KeyCode::Esc => Action::Quit,
        KeyCode::Char('c') if ctrl => Action::Quit,
        KeyCode::Char('u') if ctrl => {
            chat.input.clear();
            Action::Redraw
        }
        KeyCode::Char('l') if ctrl => {
            tui.terminal.clear()?;
            Action::Redraw
        }
        KeyCode::Char(_) if ctrl => Action::Nothing,
        KeyCode::Char(c) => {
            chat.input.push(c);
            Action::Redraw
        }
        KeyCode::Backspace => {
            chat.input.pop();
            Action::Redraw
        }
        KeyCode::Enter => take_input(chat),
        KeyCode::PageUp => {
            chat.scroll = chat.scroll.saturating_add(tui.page());
            Action::Redraw
        }
        KeyCode::PageDown => {
            chat.scroll = chat.scroll.saturating_sub(tui.page());
            Action::Redraw
        }
        _ => Action::Nothing,
    };
    Ok(action)
}

/// Enter: the trimmed input to send, or nothing if it is blank.
fn take_input(chat: &mut Chat) -> Action {
    let text = chat.input.trim().to_string();
    if text.is_empty() {
        return Action::Nothing;
    }
    chat.input.clear();
    Action::Send(text)
}

/// Shows the message with 🕓, sends it, then shows ✓ (or why it failed).
async fn send(client: &mut Client, chat: &mut Chat, tui: &mut Tui, text: &str) -> Result<()> {
    let index = chat.push_pending(text);
    tui.draw(chat)?;
    let peer = chat.peer.clone();
    match client.send_text(&peer, text).await {
        Ok(outcome) => {
            let state = tick_state(client.profile(), &outcome.id);
            chat.mark_sent(index, outcome.id, state);
        }
        // The server refused it for now; it stays in the outbox for the next connection.
        Err(ClientError::Server(e)) if e.retryable => chat.push(Item::Notice(format!(
            "🕓 not sent yet: {} (kept; it goes out when dak reconnects)",
            e.message
        ))),
        Err(e @ (ClientError::Server(_) | ClientError::Usage(_))) => {
            chat.mark_failed(index, &e.to_string())
        }
        Err(e) => return Err(fatal(e)),
    }
    Ok(())
}

/// Handles one push to completion, shows its events and sends read receipts
/// for the messages of this chat it brought.
async fn on_push(
    client: &mut Client,
    chat: &mut Chat,
    tui: &mut Tui,
    body: dak_proto::v1::server_frame::Body,
) -> Result<()> {
    let events = client.handle_push(body).await.map_err(fatal)?;
    let mut to_read = Vec::new();
    let mut garbled = false;
    for event in events {
        garbled |= matches!(event, Event::Undecodable { .. });
        chat.apply(client.profile(), event, &mut to_read);
    }
    if garbled {
        // The client logs undecodable bodies; repaint whatever that wrote over.
        tui.terminal.clear()?;
    }
    tui.draw(chat)?;
    mark_read(client, &to_read).await
}

async fn mark_read(client: &mut Client, ids: &[Vec<u8>]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    client.mark_read(Some(ids)).await.map(|_| ()).map_err(fatal)
}

/// An error that ends the chat, worded for the person at the terminal.
fn fatal(e: ClientError) -> anyhow::Error {
    let why = match &e {
        ClientError::Transport(_)
        | ClientError::Closed(_)
        | ClientError::Timeout(_)
        | ClientError::Protocol(_) => {
            "lost the connection to the server; unsent messages stay queued and go out on the next `dak chat` or `dak sync`"
        }
        ClientError::Server(_) => "the server ended the chat",
        _ => "the chat stopped",
    };
    anyhow::Error::new(e).context(why)
}

// ---------------------------------------------------------------- input ----

/// Reads terminal events on a std thread and forwards them; ends when the
/// receiver is gone (checked between polls) or the terminal fails.
fn spawn_input_reader(tx: mpsc::Sender<std::io::Result<TermEvent>>) {
    std::thread::spawn(move || {
        while !tx.is_closed() {
            let event = match crossterm::event::poll(Duration::from_millis(200)) {
                Ok(false) => continue,
                Ok(true) => crossterm::event::read(),
                Err(e) => Err(e),
            };
            let failed = event.is_err();
            if tx.blocking_send(event).is_err() || failed {
                break;
            }
        }
    });
}

// ------------------------------------------------------------- terminal ----

/// The terminal in raw mode on the alternate screen; put back on drop.
struct Tui {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    _restore: RestoreOnDrop,
}

impl Tui {
    fn enter() -> Result<Tui> {
        crossterm::terminal::enable_raw_mode()
            .context("`dak chat` needs an interactive terminal")?;
        let restore = RestoreOnDrop::install();
        crossterm::execute!(std::io::stdout(), EnterAlternateScreen)
            .context("cannot switch the terminal screen")?;
        let terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))
            .context("cannot set up the terminal")?;
        Ok(Tui {
            terminal,
            _restore: restore,
        })
    }

    fn draw(&mut self, chat: &Chat) -> Result<()> {
        self.terminal
            .draw(|frame| render(frame, chat))
            .context("cannot draw on the terminal")?;
        Ok(())
    }

    /// Lines moved by PageUp/PageDown: half the screen.
    fn page(&self) -> usize {
        self.terminal
            .size()
            .map(|s| usize::from(s.height) / 2)
            .unwrap_or(10)
            .max(1)
    }
}

type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

/// Restores the terminal when dropped, and on a panic before the panic
/// message is printed (so it lands on the main screen, readable).
struct RestoreOnDrop {
    previous_hook: Arc<PanicHook>,
}

impl RestoreOnDrop {
    fn install() -> RestoreOnDrop {
        let previous_hook: Arc<PanicHook> = Arc::new(std::panic::take_hook());
        let chained = Arc::clone(&previous_hook);
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            chained(info);
        }));
        RestoreOnDrop { previous_hook }
    }
}

impl Drop for RestoreOnDrop {
    fn drop(&mut self) {
        restore_terminal();
        // The hook cannot be changed while panicking; the chained one is harmless then.
        if !std::thread::panicking() {
            let previous = Arc::clone(&self.previous_hook);
            std::panic::set_hook(Box::new(move |info| previous(info)));
        }
    }
}

/// Idempotent: safe to run from both the panic hook and `Drop`.
fn restore_terminal() {
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

// --------------------------------------------------------------- render ----

fn render(frame: &mut ratatui::Frame<'_>, chat: &Chat) {
    let [title, list, status, input] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
        Constraint::Length(3),
    ])
    .areas(frame.area());
    render_title(frame, title, chat);
    render_messages(frame, list, chat);
    let status_line = Line::from(Span::styled(
        format!(" {}", chat.status),
        Style::new().fg(Color::DarkGray),
    ));
    frame.render_widget(Paragraph::new(status_line), status);
    render_input(frame, input, chat);
}

fn render_title(frame: &mut ratatui::Frame<'_>, area: Rect, chat: &Chat) {
    let bar = Style::new()
        .bg(Color::Blue)
        .fg(Color::White)
        .add_modifier(Modifier::BOLD);
    let me = format!("you: {} ", chat.me);
    let [left, right] = Layout::horizontal([
        Constraint::Fill(1),
        Constraint::Length(text_width(&me) as u16),
    ])
    .areas(area);
    frame.render_widget(
        Paragraph::new(format!(" Dak — chat with {}", chat.title)).style(bar),
        left,
    );
    frame.render_widget(Paragraph::new(me).style(bar).right_aligned(), right);
}

fn render_messages(frame: &mut ratatui::Frame<'_>, area: Rect, chat: &Chat) {
    let width = usize::from(area.width).max(1);
    let lines: Vec<Line<'static>> = chat
        .items
        .iter()
        .flat_map(|item| wrap(item_spans(item), width))
        .collect();
    let height = usize::from(area.height);
    let bottom = lines
        .len()
        .saturating_sub(chat.scroll.min(lines.len().saturating_sub(height)));
    let top = bottom.saturating_sub(height);
    frame.render_widget(Paragraph::new(lines[top..bottom].to_vec()), area);
}

fn render_input(frame: &mut ratatui::Frame<'_>, area: Rect, chat: &Chat) {
    let block = Block::default()
        .borders(Borders::ALL)
        .title(" message — Enter sends, Esc quits ");
    let inner = block.inner(area);
    let room = usize::from(inner.width).saturating_sub(3);
    let shown = tail_fitting(&chat.input, room);
    frame.render_widget(Paragraph::new(format!(" > {shown}")).block(block), area);
    let x = inner.x.saturating_add((3 + text_width(shown)) as u16);
    frame.set_cursor_position(Position::new(
        x.min(inner.right().saturating_sub(1)),
        inner.y,
    ));
}

/// The end of `text` that fits in `room` columns.
fn tail_fitting(text: &str, room: usize) -> &str {
    let mut start = 0;
    let mut chars = text.char_indices();
    while text_width(&text[start..]) > room {
        match chars.next() {
            Some((i, c)) => start = i + c.len_utf8(),
            None => break,
        }
    }
    &text[start..]
}

fn text_width(s: &str) -> usize {
    Span::raw(s).width()
}

fn item_spans(item: &Item) -> Vec<Span<'static>> {
    match item {
        Item::Notice(text) => vec![Span::styled(
            text.clone(),
            Style::new().fg(Color::DarkGray).add_modifier(Modifier::DIM),
        )],
        Item::Message(m) => message_spans(m),
    }
}

fn message_spans(m: &Shown) -> Vec<Span<'static>> {
    let who = match &m.from {
        None => Span::styled(
            "you",
            Style::new().fg(Color::Green).add_modifier(Modifier::BOLD),
        ),
        Some(number) => Span::styled(
            number.clone(),
            Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
        ),
    };
    let mut spans = vec![
        Span::styled(local_time(m.at_ms), Style::new().fg(Color::DarkGray)),
        Span::raw(" "),
        who,
        Span::raw(": "),
        Span::raw(m.text.clone()),
    ];
    if m.failed {
        spans.push(Span::styled("  ✗", Style::new().fg(Color::Red)));
    } else if let Some(state) = m.tick {
        spans.push(Span::raw("  "));
        spans.push(tick_span(state));
    }
    spans
}

/// 🕓 pending, ✓ sent, ✓✓ delivered, blue ✓✓ read.
fn tick_span(state: TickState) -> Span<'static> {
    match state {
        TickState::Pending => Span::raw("🕓"),
        TickState::Sent => Span::styled("✓", Style::new().fg(Color::Gray)),
        TickState::Delivered => Span::styled("✓✓", Style::new().fg(Color::Gray)),
        TickState::Read => Span::styled(
            "✓✓",
            Style::new()
                .fg(Color::LightBlue)
                .add_modifier(Modifier::BOLD),
        ),
    }
}

/// HH:MM in local time.
fn local_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.with_timezone(&chrono::Local).format("%H:%M").to_string())
        .unwrap_or_else(|| "--:--".into())
}

/// Wraps styled text to `width` columns, breaking after a space where it can.
fn wrap(spans: Vec<Span<'static>>, width: usize) -> Vec<Line<'static>> {
    let glyphs: Vec<(char, Style, usize)> = spans
        .iter()
        .flat_map(|s| {
            s.content
                .chars()
                .map(move |c| (c, s.style, text_width(c.encode_utf8(&mut [0; 4]))))
        })
        .collect();
    let mut lines = Vec::new();
    let mut line: Vec<(char, Style, usize)> = Vec::new();
    let mut used = 0;
    for g in glyphs {
        while used + g.2 > width && !line.is_empty() {
            let rest = split_at_space(&mut line);
            lines.push(to_line(&line));
            used = rest.iter().map(|g| g.2).sum();
            line = rest;
        }
        used += g.2;
        line.push(g);
    }
    lines.push(to_line(&line));
    lines
}

/// Cuts `line` after its last space (if any but the very first glyph) and
/// returns what follows, to start the next line.
fn split_at_space(line: &mut Vec<(char, Style, usize)>) -> Vec<(char, Style, usize)> {
    match line.iter().rposition(|g| g.0 == ' ') {
        Some(i) if i > 0 => line.split_off(i + 1),
        _ => Vec::new(),
    }
}

/// Groups glyphs into spans of one style.
fn to_line(glyphs: &[(char, Style, usize)]) -> Line<'static> {
    let mut spans: Vec<Span<'static>> = Vec::new();
    for &(c, style, _) in glyphs {
        match spans.last_mut() {
            Some(last) if last.style == style => last.content.to_mut().push(c),
            _ => spans.push(Span::styled(c.to_string(), style)),
        }
    }
    Line::from(spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(line: &Line<'_>) -> String {
        line.spans.iter().map(|s| s.content.as_ref()).collect()
    }

    #[test]
    fn wrap_breaks_after_spaces_and_hard_breaks_long_words() {
        let lines = wrap(vec![Span::raw("hello there world")], 12);
        assert_eq!(
            lines.iter().map(plain).collect::<Vec<_>>(),
            ["hello there ", "world"]
        );
        let lines = wrap(vec![Span::raw("abcdefghij")], 4);
        assert_eq!(
            lines.iter().map(plain).collect::<Vec<_>>(),
            ["abcd", "efgh", "ij"]
        );
    }

    #[test]
    fn wrap_keeps_styles_apart() {
        let blue = Style::new().fg(Color::LightBlue);
        let lines = wrap(vec![Span::raw("hi "), Span::styled("✓✓", blue)], 40);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].spans.len(), 2);
        assert_eq!(lines[0].spans[1].style, blue);
    }

    #[test]
    fn tail_fitting_keeps_the_end() {
        assert_eq!(tail_fitting("hello", 10), "hello");
        assert_eq!(tail_fitting("hello", 3), "llo");
        assert_eq!(tail_fitting("", 0), "");
    }

    #[test]
    fn ticks_update_and_never_go_back() {
        let mut chat = Chat::new("+911".into(), "+912".into());
        let i = chat.push_pending("hi");
        chat.mark_sent(i, vec![7], TickState::Sent);
        chat.set_tick(&[7], TickState::Read);
        chat.set_tick(&[7], TickState::Delivered);
        assert!(matches!(&chat.items[0], Item::Message(m) if m.tick == Some(TickState::Read)));
    }
}
