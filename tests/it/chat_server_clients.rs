//! examples/chat_server with several people at once: raw sockets as `nc` would use them,
//! and the real `nc`. Rooms, nicks, messages pushed to the members of a room only, and
//! members leaving (by LEAVE, or by going away). The example's source is included, so its
//! server runs in this process.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};

use crate::chat_server;
use crate::common::{connect, expect_clean_eof, send};
use crate::line_client::LineClient;
use reactor_pool::ServerHandle;

/// The chat server in this process; shut down on drop.
struct Chat(ServerHandle);

impl Chat {
    fn start() -> Self {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        Chat(chat_server::start(addr, None, None).expect("start chat_server"))
    }

    fn addr(&self) -> SocketAddr {
        self.0.local_addr().tcp().expect("a TCP server")
    }

    /// A person who connected, read the greeting, and took `nick`.
    fn join_as(&self, nick: &str) -> Person {
        let mut person = Person {
            reader: BufReader::new(connect(self.addr())),
        };
        let greeting = person.line();
        assert!(
            greeting.starts_with("WELCOME guest") && greeting.contains("NICK name"),
            "{greeting}"
        );
        person.says(&format!("NICK {nick}"), &[&format!("OK you are {nick}")]);
        person
    }
}

/// One connection, typed into line by line.
struct Person {
    reader: BufReader<TcpStream>,
}

impl Person {
    /// The next line from the server (read timeouts fail the test).
    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read a line");
        assert!(n > 0, "the server closed the connection");
        line.strip_suffix('\n').expect("a whole line").to_string()
    }

    /// The next lines must be `expected`.
    fn hears(&mut self, expected: &[&str]) {
        for want in expected {
            assert_eq!(&self.line(), want);
        }
    }

    /// Sends `line`; the next lines must be `expected`.
    fn says(&mut self, line: &str, expected: &[&str]) {
        send(self.reader.get_mut(), format!("{line}\n").as_bytes());
        self.hears(expected);
    }
}

#[test]
fn messages_reach_the_members_of_the_room_only() {
    let chat = Chat::start();
    let mut alice = chat.join_as("alice");
    let mut bob = chat.join_as("bob");
    let mut carol = chat.join_as("carol");
    alice.says("JOIN #rust", &["OK joined #rust"]);
    bob.says("join #rust", &["OK joined #rust"]);
    alice.hears(&["#rust * bob joined"]);
    carol.says("JOIN #other", &["OK joined #other"]);

    // The sender gets its own message too: every member sees the same order.
    bob.says("MSG #rust hi all", &["#rust bob: hi all"]);
    alice.hears(&["#rust bob: hi all"]);
    alice.says("msg #rust hello bob", &["#rust alice: hello bob"]);
    bob.hears(&["#rust alice: hello bob"]);
    // Carol, in another room, got neither: her next line is her own message.
    carol.says("MSG #other anyone?", &["#other carol: anyone?"]);
    carol.says("MSG #rust sneaky", &["ERR you are not in #rust"]);
    alice.says("MSG #other hi", &["ERR you are not in #other"]);
    bob.says("PING", &["ERR unknown command 'PING'"]);
}

#[test]
fn leave_stops_delivery() {
    let chat = Chat::start();
    let mut alice = chat.join_as("alice");
    let mut bob = chat.join_as("bob");
    alice.says("JOIN #rust", &["OK joined #rust"]);
    bob.says("JOIN #rust", &["OK joined #rust"]);
    alice.hears(&["#rust * bob joined"]);
    bob.says("LEAVE #rust", &["OK left #rust"]);
    alice.hears(&["#rust * bob left"]);
    alice.says("MSG #rust still there?", &["#rust alice: still there?"]);
    // Bob's next line answers his own command: alice's message never reached him.
    bob.says("MSG #rust back", &["ERR you are not in #rust"]);
    bob.says("LEAVE #rust", &["ERR you are not in #rust"]);
    bob.says("JOIN #rust", &["OK joined #rust"]);
    alice.hears(&["#rust * bob joined"]);
    alice.says("MSG #rust welcome back", &["#rust alice: welcome back"]);
    bob.hears(&["#rust alice: welcome back"]);
}

#[test]
fn a_member_that_goes_away_leaves_its_rooms_and_its_nick() {
    let chat = Chat::start();
    let mut alice = chat.join_as("alice");
    let mut bob = chat.join_as("bob");
    alice.says("JOIN #a", &["OK joined #a"]);
    alice.says("JOIN #b", &["OK joined #b"]);
    bob.says("JOIN #a", &["OK joined #a"]);
    bob.says("JOIN #b", &["OK joined #b"]);
    alice.hears(&["#a * bob joined", "#b * bob joined"]);
    drop(bob);
    alice.hears(&["#a * bob left", "#b * bob left"]);
    alice.says("MSG #a alone", &["#a alice: alone"]);
    // The nick is free again.
    let mut carol = chat.join_as("bob");
    carol.says("QUIT", &["BYE"]);
    assert_eq!(expect_clean_eof(carol.reader.get_mut(), "after QUIT"), b"");
    alice.says("MSG #b still alone", &["#b alice: still alone"]);
}

#[test]
fn nicks_are_checked_and_changes_shown() {
    let chat = Chat::start();
    let mut alice = chat.join_as("alice");
    let mut bob = chat.join_as("bob");
    bob.says("NICK alice", &["ERR nick alice is taken"]);
    for bad in ["", "has space", "guest7", "x".repeat(21).as_str(), "é"] {
        bob.says(
            &format!("NICK {bad}"),
            &["ERR a nick is 1 to 20 letters, digits, - or _, not starting with guest"],
        );
    }
    bob.says("NICK bob", &["OK you are bob"]);
    alice.says("JOIN #r", &["OK joined #r"]);
    bob.says("JOIN #r", &["OK joined #r"]);
    alice.hears(&["#r * bob joined"]);
    bob.says("NICK robert", &["OK you are robert"]);
    alice.hears(&["#r * bob is now known as robert"]);
    bob.says("MSG #r it is me", &["#r robert: it is me"]);
    alice.hears(&["#r robert: it is me"]);
    // The old nick is free, and errors keep the connection open.
    alice.says("NICK bob", &["OK you are bob"]);
    bob.hears(&["#r * alice is now known as bob"]);
    alice.says(
        "JOIN r",
        &["ERR a room is # and 1 to 30 letters, digits, - or _"],
    );
    alice.says("JOIN #r", &["ERR you are already in #r"]);
    alice.says("MSG #r", &["ERR usage: MSG #room text"]);
    alice.says(
        "",
        &["ERR empty line; commands: NICK, JOIN, MSG, LEAVE, QUIT"],
    );
}

/// Two people chatting with the real `nc` (OpenBSD netcat), as the example's doc shows.
#[test]
fn chat_with_nc() {
    let chat = Chat::start();
    let port = chat.addr().port().to_string();
    let nc = || LineClient::spawn("nc.openbsd", &["127.0.0.1", &port]);
    let (mut alice, mut bob) = (nc(), nc());
    for person in [&mut alice, &mut bob] {
        assert!(person.next_line().starts_with("WELCOME guest"));
    }
    alice.write_line("NICK alice");
    alice.write_line("JOIN #nc");
    alice.expect_lines(&["OK you are alice", "OK joined #nc"]);
    bob.write_line("NICK bob");
    bob.write_line("JOIN #nc");
    bob.expect_lines(&["OK you are bob", "OK joined #nc"]);
    alice.expect_lines(&["#nc * bob joined"]);
    alice.write_line("MSG #nc hello from nc");
    alice.expect_lines(&["#nc alice: hello from nc"]);
    bob.expect_lines(&["#nc alice: hello from nc"]);
    bob.write_line("QUIT");
    bob.expect_lines(&["BYE"]);
    alice.expect_lines(&["#nc * bob left"]);
}
