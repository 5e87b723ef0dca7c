//! The seed's echo client: sends a message, reads the echo, closes.
//!
//! ```text
//! cargo run --release --example echo_client -- [--addr 127.0.0.1:20000]
//!     [--message Hello,server!] [--local-port 7500] [--count N]
//! ```
//!
//! Exits non-zero if any echo differs from what was sent.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::ExitCode;

use socket2::{Domain, Protocol, Socket, Type};

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("echo_client: {e}");
            ExitCode::from(2)
        }
    }
}

fn connect(addr: SocketAddr, local_port: Option<u16>) -> std::io::Result<TcpStream> {
    let Some(port) = local_port else {
        return TcpStream::connect(addr);
    };
    // Binding the client's own port (the seed's client used 7500) needs a socket we bind
    // before connecting; SO_REUSEADDR lets a rerun reuse it while the last one is in TIME_WAIT.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    };
    socket.bind(&local.into())?;
    socket.connect(&addr.into())?;
    Ok(socket.into())
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let mut args = pico_args::Arguments::from_env();
    let addr: SocketAddr = args
        .opt_value_from_str("--addr")?
        .unwrap_or_else(|| "127.0.0.1:20000".parse().expect("valid default"));
    let message: String = args
        .opt_value_from_str("--message")?
        .unwrap_or_else(|| "Hello,server!".to_string());
    let local_port: Option<u16> = args.opt_value_from_str("--local-port")?;
    let count: u64 = args.opt_value_from_str("--count")?.unwrap_or(1);
    let rest = args.finish();
    if !rest.is_empty() {
        return Err(format!("unknown arguments: {rest:?}").into());
    }
    if message.is_empty() {
        return Err("--message must not be empty".into());
    }

    let mut stream = connect(addr, local_port)?;
    println!(
        "connected {} -> {}",
        stream.local_addr()?,
        stream.peer_addr()?
    );
    let mut all_equal = true;
    let mut reply = vec![0u8; message.len()];
    for _ in 0..count {
        stream.write_all(message.as_bytes())?;
        stream.read_exact(&mut reply)?;
        let equal = reply == message.as_bytes();
        all_equal &= equal;
        if count == 1 || !equal {
            println!("sent:     {message}");
            println!("received: {}", String::from_utf8_lossy(&reply));
        }
    }
    if count > 1 {
        println!("{count} round trips, all echoes equal: {all_equal}");
    }
    // The seed's close: our FIN first, then we wait for the server's FIN (read() == 0).
    stream.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    if !rest.is_empty() {
        println!("unexpected {} bytes after the last echo", rest.len());
        all_equal = false;
    }
    println!("server closed the connection cleanly");
    Ok(all_equal)
}
