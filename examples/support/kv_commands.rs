//! The commands of examples/kv_server.rs: their names, their arity, and the checks
//! redis-server makes before a command runs or is queued (it exists, it has a number of
//! arguments it can take; in subscribed mode, it is one of the few allowed).

use super::pubsub::Kind;
use super::resp::{arity, error, Value};

/// Commands about the connection's transaction or its end: never queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Multi,
    Exec,
    Discard,
    Quit,
    Reset,
}

/// Commands that run now, or at EXEC when queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    Ping,
    Echo,
    Get,
    Set,
    Del,
    Exists,
    Incr,
    MGet,
    MSet,
    Command,
    Config,
    Auth,
    Select,
    ClientSetName,
    ClientGetName,
    Subscribe(Kind),
    Unsubscribe(Kind),
    Publish,
    PubSubChannels,
    PubSubNumSub,
    PubSubNumPat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Flow(Flow),
    Run(Run),
}

/// Whether `argc` (the name included) fits `arity`, redis-server's convention: `n` exactly
/// n, `-n` at least n.
fn fits(argc: usize, arity: i32) -> bool {
    match usize::try_from(arity) {
        Ok(exact) => argc == exact,
        Err(_) => argc >= arity.unsigned_abs() as usize,
    }
}

/// `name` in upper case, if it is short enough to be a command (no allocation).
fn upper<'b>(name: &[u8], buf: &'b mut [u8; 16]) -> &'b [u8] {
    if name.len() > buf.len() {
        return &[];
    }
    let buf = &mut buf[..name.len()];
    buf.copy_from_slice(name);
    buf.make_ascii_uppercase();
    buf
}

/// The command `args` names, if it exists and has a number of arguments it can take: what
/// redis-server checks before `NOAUTH` and before queueing. Other argument errors are the
/// command's own, met when it runs.
pub fn command(args: &[Vec<u8>]) -> Result<Cmd, Value> {
    use {Flow::*, Run::*};
    let mut buf = [0u8; 16];
    let (cmd, arity) = match upper(&args[0], &mut buf) {
        b"PING" => (Cmd::Run(Ping), -1),
        b"ECHO" => (Cmd::Run(Echo), 2),
        b"GET" => (Cmd::Run(Get), 2),
        b"SET" => (Cmd::Run(Set), -3),
        b"DEL" => (Cmd::Run(Del), -2),
        b"EXISTS" => (Cmd::Run(Exists), -2),
        b"INCR" => (Cmd::Run(Incr), 2),
        b"MGET" => (Cmd::Run(MGet), -2),
        b"MSET" => (Cmd::Run(MSet), -3),
        b"COMMAND" => (Cmd::Run(Command), -1),
        b"CONFIG" => (Cmd::Run(Config), -2),
        b"AUTH" => (Cmd::Run(Auth), -2),
        b"SELECT" => (Cmd::Run(Select), 2),
        b"CLIENT" => {
            return subcommand(
                args,
                &[
                    (b"SETNAME", ClientSetName, 3),
                    (b"GETNAME", ClientGetName, 2),
                ],
            )
        }
        b"SUBSCRIBE" => (Cmd::Run(Subscribe(Kind::Channel)), -2),
        b"PSUBSCRIBE" => (Cmd::Run(Subscribe(Kind::Pattern)), -2),
        b"UNSUBSCRIBE" => (Cmd::Run(Unsubscribe(Kind::Channel)), -1),
        b"PUNSUBSCRIBE" => (Cmd::Run(Unsubscribe(Kind::Pattern)), -1),
        b"PUBLISH" => (Cmd::Run(Publish), 3),
        b"PUBSUB" => {
            return subcommand(
                args,
                &[
                    (b"CHANNELS", PubSubChannels, -2),
                    (b"NUMSUB", PubSubNumSub, -2),
                    (b"NUMPAT", PubSubNumPat, 2),
                ],
            )
        }
        b"RESET" => (Cmd::Flow(Reset), 1),
        b"MULTI" => (Cmd::Flow(Multi), 1),
        b"EXEC" => (Cmd::Flow(Exec), 1),
        b"DISCARD" => (Cmd::Flow(Discard), 1),
        b"QUIT" => (Cmd::Flow(Quit), -1),
        _ => {
            let name = String::from_utf8_lossy(&args[0]);
            return Err(error(format!("ERR unknown command '{name}'")));
        }
    };
    if !fits(args.len(), arity) {
        return Err(arity_of(&args[0]));
    }
    Ok(cmd)
}

pub fn arity_of(name: &[u8]) -> Value {
    arity(&String::from_utf8_lossy(name))
}

/// A command with subcommands (`CLIENT SETNAME name`, `PUBSUB NUMPAT`): the one `args[1]`
/// names in `table` (name, command, arity), if it has a number of arguments it can take.
fn subcommand(args: &[Vec<u8>], table: &[(&[u8], Run, i32)]) -> Result<Cmd, Value> {
    let Some(sub) = args.get(1) else {
        return Err(arity_of(&args[0]));
    };
    let mut buf = [0u8; 16];
    let upper_sub = upper(sub, &mut buf);
    let Some(&(_, run, arity_of_sub)) = table.iter().find(|(name, ..)| *name == upper_sub) else {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        let sub = String::from_utf8_lossy(sub);
        return Err(error(format!(
            "ERR unknown subcommand '{sub}'. Try {name} HELP."
        )));
    };
    if !fits(args.len(), arity_of_sub) {
        return Err(arity(&full_name(args)));
    }
    Ok(Cmd::Run(run))
}

/// The command's name as redis-server writes it in errors: in lower case, with the
/// subcommand of a command that has some (`client|getname`).
pub fn full_name(args: &[Vec<u8>]) -> String {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let mut buf = [0u8; 16];
    match (upper(&args[0], &mut buf), args.get(1)) {
        (b"CLIENT" | b"CONFIG" | b"PUBSUB" | b"COMMAND", Some(sub)) => {
            format!(
                "{name}|{}",
                String::from_utf8_lossy(sub).to_ascii_lowercase()
            )
        }
        _ => name,
    }
}

/// Whether a connection in subscribed mode may run `cmd` (redis-server's RESP2 rule).
pub fn allowed_when_subscribed(cmd: Cmd) -> bool {
    matches!(
        cmd,
        Cmd::Run(Run::Subscribe(_) | Run::Unsubscribe(_) | Run::Ping)
            | Cmd::Flow(Flow::Quit | Flow::Reset)
    )
}
