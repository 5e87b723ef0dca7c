//! A chat server a person can use with `nc`: one command per line, rooms, and messages
//! pushed to every member of a room.
//!
//! ```text
//! cargo run --example chat_server -- [--addr 127.0.0.1:7000] [--workers N] [--reactors N]
//!     [--unix PATH] [--tls-cert PEM --tls-key PEM] [--proxy-protocol]   (see support/transport.rs)
//!
//! $ nc 127.0.0.1 7000
//! WELCOME guest1; commands: NICK name, JOIN #room, MSG #room text, LEAVE #room, QUIT
//! NICK alice
//! OK you are alice
//! JOIN #rust
//! OK joined #rust
//! #rust * bob joined                   (pushed: bob joined after alice)
//! #rust bob: hi all                    (pushed: bob's message)
//! MSG #rust hello bob
//! #rust alice: hello bob               (the sender gets its own message too)
//! LEAVE #rust
//! OK left #rust
//! MSG #rust anyone?
//! ERR you are not in #rust
//! QUIT
//! BYE
//! ```
//!
//! Lines end with `\n` (`\r\n` too); commands are case-insensitive. A new connection is
//! `guest<N>` until `NICK` names it: 1 to 20 letters, digits, `-` or `_`, not taken, not
//! starting with `guest`. A room is `#` and 1 to 30 of the same characters; `JOIN` creates
//! it. `MSG #room text` reaches every member of the room, **the sender included** (its copy
//! is the confirmation, in the order every member sees), as `#room nick: text`. The other
//! members see `#room * nick joined`, `left`, and `is now known as new`. Errors are `ERR
//! ...` lines, and the connection stays open. A line over 4 KiB ends the connection.
//!
//! Deliveries are pushed to each member's connection (`Pusher::push`) with the rooms' lock
//! held, so every member of a room sees its messages in the same order. A member whose
//! pushes pile up past the push limit (1,024, it is not reading) is disconnected. There is
//! no idle timeout: people idle in chats.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::process::ExitCode;
use std::sync::{Mutex, MutexGuard, PoisonError};

#[path = "support/protocol_main.rs"]
mod protocol_main;
#[path = "support/shutdown.rs"]
mod shutdown;
#[path = "support/transport.rs"]
pub mod transport;

use reactor_pool::{CloseReason, Context, Handler, LineCodec, PushError, Pusher, Replies};

/// Each room's members, by connection id, and the nicks in use.
#[derive(Default)]
struct Rooms {
    rooms: HashMap<String, BTreeMap<u64, Pusher<Vec<u8>>>>,
    nicks: HashSet<String>,
}

/// A connection's session: who it is and where.
pub struct Member {
    nick: String,
    rooms: BTreeSet<String>,
    pusher: Pusher<Vec<u8>>,
}

struct Chat {
    state: Mutex<Rooms>,
}

/// Pushes `line` to every member but `except`; one that is not reading is disconnected.
fn broadcast(members: &BTreeMap<u64, Pusher<Vec<u8>>>, line: &str, except: Option<u64>) {
    for (&id, pusher) in members {
        if Some(id) == except {
            continue;
        }
        if let Err(PushError::Full(_)) = pusher.push(line.as_bytes().to_vec()) {
            log::warn!("disconnecting {id}: it is not reading its messages");
            let _ = pusher.close();
        }
    }
}

/// Whether `name` is 1 to `max` letters, digits, `-` or `_`.
fn valid_name(name: &str, max: usize) -> bool {
    (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_room(room: &str) -> bool {
    room.strip_prefix('#')
        .is_some_and(|name| valid_name(name, 30))
}

impl Chat {
    fn lock(&self) -> MutexGuard<'_, Rooms> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves one line; `Ok` and `Err` are both the reply line (`Err` without its `ERR`).
    fn serve(
        &self,
        me: &mut Member,
        line: &str,
        replies: &mut Replies<Vec<u8>>,
    ) -> Result<String, String> {
        let (command, rest) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        let rest = rest.trim_start();
        let id = me.pusher.connection_id();
        let mut state = self.lock();
        match command.to_ascii_uppercase().as_str() {
            "NICK" => {
                if !valid_name(rest, 20) || rest.starts_with("guest") {
                    return Err(
                        "a nick is 1 to 20 letters, digits, - or _, not starting with guest".into(),
                    );
                }
                if rest == me.nick {
                    return Ok(format!("OK you are {rest}"));
                }
                if !state.nicks.insert(rest.to_string()) {
                    return Err(format!("nick {rest} is taken"));
                }
                state.nicks.remove(&me.nick);
                let old = std::mem::replace(&mut me.nick, rest.to_string());
                for room in &me.rooms {
                    let notice = format!("{room} * {old} is now known as {rest}");
                    broadcast(&state.rooms[room], &notice, Some(id));
                }
                Ok(format!("OK you are {rest}"))
            }
            "JOIN" => {
                if !valid_room(rest) {
                    return Err("a room is # and 1 to 30 letters, digits, - or _".into());
                }
                if !me.rooms.insert(rest.to_string()) {
                    return Err(format!("you are already in {rest}"));
                }
                let members = state.rooms.entry(rest.to_string()).or_default();
                broadcast(members, &format!("{rest} * {} joined", me.nick), None);
                members.insert(id, me.pusher.clone());
                Ok(format!("OK joined {rest}"))
            }
            "MSG" => {
                let (room, text) = rest.split_once(' ').unwrap_or((rest, ""));
                if room.is_empty() || text.trim().is_empty() {
                    return Err("usage: MSG #room text".into());
                }
                if !me.rooms.contains(room) {
                    return Err(format!("you are not in {room}"));
                }
                broadcast(
                    &state.rooms[room],
                    &format!("{room} {}: {text}", me.nick),
                    None,
                );
                // The sender's own copy is its answer.
                Ok(String::new())
            }
            "LEAVE" => {
                if !me.rooms.remove(rest) {
                    return Err(format!("you are not in {rest}"));
                }
                leave(&mut state, rest, id, &me.nick);
                Ok(format!("OK left {rest}"))
            }
            "QUIT" => {
                replies.close();
                Ok("BYE".into())
            }
            "" => Err("empty line; commands: NICK, JOIN, MSG, LEAVE, QUIT".into()),
            _ => Err(format!("unknown command '{command}'")),
        }
    }
}

/// Takes member `id` out of `room`, telling the others; an empty room goes.
fn leave(state: &mut Rooms, room: &str, id: u64, nick: &str) {
    if let Some(members) = state.rooms.get_mut(room) {
        members.remove(&id);
        broadcast(members, &format!("{room} * {nick} left"), None);
        if members.is_empty() {
            state.rooms.remove(room);
        }
    }
}

impl Handler for Chat {
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    type Session = Member;

    fn open(&self, ctx: &Context, greeting: &mut Replies<Vec<u8>>) -> Member {
        let nick = format!("guest{}", ctx.connection_id());
        greeting.send(
            format!("WELCOME {nick}; commands: NICK name, JOIN #room, MSG #room text, LEAVE #room, QUIT")
                .into_bytes(),
        );
        self.lock().nicks.insert(nick.clone());
        Member {
            nick,
            rooms: BTreeSet::new(),
            pusher: greeting.pusher(),
        }
    }

    fn call(&self, me: &mut Member, line: Vec<u8>, _: &Context, replies: &mut Replies<Vec<u8>>) {
        let line = String::from_utf8_lossy(&line);
        match self.serve(me, &line, replies) {
            Ok(reply) if reply.is_empty() => {}
            Ok(reply) => replies.send(reply.into_bytes()),
            Err(why) => replies.send(format!("ERR {why}").into_bytes()),
        }
    }

    fn close(&self, me: Member, _: &Context, _: CloseReason) {
        let mut state = self.lock();
        for room in &me.rooms {
            leave(&mut state, room, me.pusher.connection_id(), &me.nick);
        }
        state.nicks.remove(&me.nick);
    }
}

/// Starts the chat server on `listen` with `workers` and `reactors` threads (the
/// framework's defaults for `None`).
pub fn start(
    listen: impl Into<transport::Listen>,
    workers: Option<usize>,
    reactors: Option<usize>,
) -> std::io::Result<reactor_pool::ServerHandle> {
    let builder = listen.into().builder()?.idle_timeout(None);
    let chat = Chat {
        state: Mutex::default(),
    };
    protocol_main::with_threads(builder, workers, reactors)
        .start(LineCodec::with_max_frame(4096), chat)
}

fn main() -> ExitCode {
    protocol_main::run_example(
        "chat_server",
        "127.0.0.1:7000",
        ("", ""),
        |_| Ok(()),
        |listen, (workers, reactors), ()| start(listen.clone(), workers, reactors),
    )
}
