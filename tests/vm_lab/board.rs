//! A board on the other end of a VM's FTDI serial adapter: what a test rig's console looks
//! like to a script. QEMU's `usb-serial` connects its character device to the unix socket
//! this listens on; the board prints a banner and `login: `, takes a user name, then answers
//! commands at a `$ ` prompt, echoing what it receives as a terminal does.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The banner the board prints when a console connects (and again at each empty line before
/// login).
pub const BANNER: &str = "sandbus board simulator 1.0";
/// The board's answer to `uname -a`.
pub const UNAME: &str = "Linux sandbus-board 6.1.0 armv7l GNU/Linux";

/// The board's console, serving one connection at a time on its own thread.
pub struct BoardConsole {
    path: PathBuf,
    /// Every line the board received, in order.
    pub received: Arc<Mutex<Vec<String>>>,
}

impl BoardConsole {
    /// Listens on `path` (before the VM starts: QEMU connects at boot and reconnects).
    pub fn listen(path: &Path) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&received);
        std::thread::Builder::new()
            .name("board-console".to_owned())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    serve(stream, &lines);
                }
            })?;
        Ok(Self {
            path: path.to_owned(),
            received,
        })
    }

    /// The socket QEMU connects to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One console session: until the connection closes.
fn serve(mut stream: impl Read + Write, received: &Mutex<Vec<String>>) {
    let greet = format!("\r\n{BANNER}\r\nlogin: ");
    if stream.write_all(greet.as_bytes()).is_err() {
        return;
    }
    let mut user: Option<String> = None;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(1) = stream.read(&mut byte) {
        let reply = match byte[0] {
            b'\r' | b'\n' => {
                let text = String::from_utf8_lossy(&line).trim().to_owned();
                line.clear();
                if let Ok(mut lines) = received.lock() {
                    lines.push(text.clone());
                }
                match (&user, text.as_str()) {
                    (None, "") => greet.clone(),
                    (None, name) => {
                        user = Some(name.to_owned());
                        "\r\n$ ".to_owned()
                    }
                    (Some(_), "") => "\r\n$ ".to_owned(),
                    (Some(_), "uname -a") => format!("\r\n{UNAME}\r\n$ "),
                    (Some(_), "exit") => {
                        user = None;
                        greet.clone()
                    }
                    (Some(_), command) => {
                        let name = command.split_whitespace().next().unwrap_or(command);
                        format!("\r\nsh: {name}: not found\r\n$ ")
                    }
                }
            }
            other => {
                line.push(other);
                // A terminal echoes what it receives.
                String::from_utf8_lossy(&[other]).into_owned()
            }
        };
        if stream.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
