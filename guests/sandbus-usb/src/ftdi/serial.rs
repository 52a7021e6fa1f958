//! A serial port on an FTDI FT232-class USB adapter, driven with the chip's vendor requests
//! as Linux's `ftdi_sio` does: reset, line settings, modem lines; reads strip the two status
//! bytes the chip puts at the start of every packet it sends.

use std::time::{Duration, Instant};

use super::error::FtdiError;
use super::settings::{BaudDivisor, FtdiStatus, LineSettings};
use crate::descriptors::Interface;
use crate::transfers::{Transfers, VENDOR_DEVICE_OUT, nonzero_ms, setup};
use crate::usb::UsbError;

/// Vendor request: reset the chip or purge a buffer.
pub const FTDI_RESET: u8 = 0;
/// Vendor request: set DTR and RTS.
pub const FTDI_SET_MODEM_CONTROL: u8 = 1;
/// Vendor request: set flow control.
pub const FTDI_SET_FLOW_CONTROL: u8 = 2;
/// Vendor request: set the baud rate divisor.
pub const FTDI_SET_BAUD_RATE: u8 = 3;
/// Vendor request: set data bits, parity, stop bits.
pub const FTDI_SET_DATA: u8 = 4;

/// FTDI_RESET `wValue`: reset the chip (both buffers purged).
pub const RESET_CHIP: u16 = 0;
/// FTDI_RESET `wValue`: purge the receive buffer.
pub const PURGE_RECEIVE: u16 = 1;
/// FTDI_RESET `wValue`: purge the transmit buffer.
pub const PURGE_TRANSMIT: u16 = 2;

/// FTDI_SET_MODEM_CONTROL `wValue`: DTR and RTS both driven high (the mask in the high
/// byte says which lines to set).
pub const DTR_RTS_HIGH: u16 = 0x0303;

/// Packets asked for in one bulk read (the chip packs as many as it has, each with its own
/// status bytes).
const PACKETS_PER_READ: u32 = 8;

/// What ends a line written with [`FtdiSerial::write_line`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    /// `\n`: what a Linux tty and most simulators take as Enter (the default; `\r\n` would
    /// be two Enters to a tty that maps CR to NL).
    Lf,
    /// `\r`: what a terminal sends for Enter.
    Cr,
    /// `\r\n`.
    CrLf,
}

impl LineEnding {
    fn bytes(self) -> &'static [u8] {
        match self {
            Self::Lf => b"\n",
            Self::Cr => b"\r",
            Self::CrLf => b"\r\n",
        }
    }
}

/// A serial port on a single-port FTDI adapter (FT232B/R class: the one QEMU's `usb-serial`
/// emulates, vendor 0403 product 6001). Multi-port and high-speed chips (FT2232, FT232H) need
/// other request indexes and clocks, which this does not send.
pub struct FtdiSerial<T> {
    transfers: T,
    bulk_in: u8,
    bulk_out: u8,
    max_packet_size: u16,
    /// Received bytes not yet handed out (what followed a `read_until` match).
    pending: Vec<u8>,
    status: Option<FtdiStatus>,
    line_errors: u8,
    line_ending: LineEnding,
    timeout_ms: u32,
}

impl<T: Transfers> FtdiSerial<T> {
    /// Claims the adapter's interface and finds its bulk endpoints. Sends nothing: call
    /// [`configure`](Self::configure) (and [`reset`](Self::reset) to drop what the chip
    /// buffered before).
    pub fn open(mut transfers: T, interface: &Interface) -> Result<Self, FtdiError> {
        let (bulk_in, bulk_out) = interface
            .bulk_endpoints()
            .ok_or(FtdiError::MissingEndpoint {
                interface: interface.number,
            })?;
        transfers
            .claim_interface(interface.number)
            .map_err(|error| FtdiError::Usb {
                operation: "claiming the interface",
                error,
            })?;
        Ok(Self {
            transfers,
            bulk_in: bulk_in.address,
            bulk_out: bulk_out.address,
            // 8 is the smallest bulk packet USB allows; a descriptor saying less is broken.
            max_packet_size: bulk_in.max_packet_size.max(8),
            pending: Vec::new(),
            status: None,
            line_errors: 0,
            line_ending: LineEnding::Lf,
            timeout_ms: 5000,
        })
    }

    /// Sets what [`write_line`](Self::write_line) ends lines with (default `\n`).
    pub fn set_line_ending(&mut self, ending: LineEnding) {
        self.line_ending = ending;
    }

    /// Sets the timeout of control requests and writes (default 5 s).
    pub fn set_timeout_ms(&mut self, timeout_ms: u32) {
        self.timeout_ms = timeout_ms.max(1);
    }

    /// The status bytes of the last packet received, if any.
    pub fn status(&self) -> Option<FtdiStatus> {
        self.status
    }

    /// The line errors (overrun, parity, framing, break, FIFO: [`FtdiStatus::line`] bits)
    /// reported by any packet so far: non-zero means received text may be damaged.
    pub fn line_errors_seen(&self) -> u8 {
        self.line_errors
    }

    /// Gives the device back.
    pub fn into_inner(self) -> T {
        self.transfers
    }

    fn vendor_out(
        &mut self,
        operation: &'static str,
        request: u8,
        value: u16,
        index: u16,
    ) -> Result<(), FtdiError> {
        self.transfers
            .control_out(
                setup(VENDOR_DEVICE_OUT, request, value, index),
                &[],
                self.timeout_ms,
            )
            .map(|_| ())
            .map_err(|error| FtdiError::Usb { operation, error })
    }

    /// Resets the chip: both its buffers are purged (what `ftdi_sio` does when the port is
    /// opened). Text the device sent before is lost, so a script that waits for a prompt
    /// printed before it started must not reset.
    pub fn reset(&mut self) -> Result<(), FtdiError> {
        self.pending.clear();
        self.vendor_out("resetting the chip", FTDI_RESET, RESET_CHIP, 0)
    }

    /// Drops what the chip has received and not yet sent to the host.
    pub fn purge_receive(&mut self) -> Result<(), FtdiError> {
        self.pending.clear();
        self.vendor_out("purging the receive buffer", FTDI_RESET, PURGE_RECEIVE, 0)
    }

    /// Sets baud rate, data format and flow control, and raises DTR and RTS. Returns the
    /// baud rate the chip actually runs at (the nearest it can make).
    pub fn configure(&mut self, settings: &LineSettings) -> Result<u32, FtdiError> {
        let divisor = BaudDivisor::for_baud(settings.baud).ok_or(FtdiError::UnsupportedBaud {
            baud: settings.baud,
        })?;
        self.vendor_out(
            "setting the baud rate",
            FTDI_SET_BAUD_RATE,
            divisor.value,
            divisor.index,
        )?;
        self.vendor_out(
            "setting the data format",
            FTDI_SET_DATA,
            settings.data_value(),
            0,
        )?;
        let (flow_value, flow_index) = settings.flow_value_and_index();
        self.vendor_out(
            "setting flow control",
            FTDI_SET_FLOW_CONTROL,
            flow_value,
            flow_index,
        )?;
        self.vendor_out(
            "raising DTR and RTS",
            FTDI_SET_MODEM_CONTROL,
            DTR_RTS_HIGH,
            0,
        )?;
        Ok(divisor.actual)
    }

    /// Reads what arrives within `timeout_ms` (at least 1): the bytes buffered from an
    /// earlier [`read_until`](Self::read_until) first, else one bulk read with the status
    /// bytes stripped. Empty when nothing arrived (the chip sends status-only packets while
    /// idle, and an emulated one may send nothing).
    pub fn read(&mut self, timeout_ms: u32) -> Result<Vec<u8>, FtdiError> {
        if !self.pending.is_empty() {
            return Ok(std::mem::take(&mut self.pending));
        }
        self.read_packets(timeout_ms)
    }

    /// One bulk read of up to [`PACKETS_PER_READ`] packets, status bytes stripped.
    fn read_packets(&mut self, timeout_ms: u32) -> Result<Vec<u8>, FtdiError> {
        let packet = usize::from(self.max_packet_size);
        let length = u32::from(self.max_packet_size) * PACKETS_PER_READ;
        let raw = match self
            .transfers
            .bulk_in(self.bulk_in, length, timeout_ms.max(1))
        {
            Ok(raw) => raw,
            Err(UsbError::Timeout) => return Ok(Vec::new()),
            Err(error) => {
                return Err(FtdiError::Usb {
                    operation: "reading",
                    error,
                });
            }
        };
        let mut data = Vec::with_capacity(raw.len());
        for chunk in raw.chunks(packet) {
            let [modem, line, text @ ..] = chunk else {
                return Err(FtdiError::MalformedPacket {
                    length: chunk.len(),
                });
            };
            let status = FtdiStatus {
                modem: *modem,
                line: *line,
            };
            self.line_errors |= status.line & FtdiStatus::LINE_ERRORS;
            self.status = Some(status);
            data.extend_from_slice(text);
        }
        Ok(data)
    }

    /// Reads until `pattern` arrives, for at most `timeout`. Returns everything read up to
    /// and including it (lossy UTF-8); what came after stays for the next read.
    ///
    /// On timeout the error carries what was read, and the bytes stay buffered.
    pub fn read_until(&mut self, pattern: &str, timeout: Duration) -> Result<String, FtdiError> {
        let started = Instant::now();
        let give_up = started + timeout;
        let needle = pattern.as_bytes();
        let mut seen = std::mem::take(&mut self.pending);
        let mut searched_from = 0;
        loop {
            if let Some(at) = find(&seen[searched_from..], needle) {
                let end = searched_from + at + needle.len();
                self.pending = seen.split_off(end);
                return Ok(String::from_utf8_lossy(&seen).into_owned());
            }
            // A match may straddle two reads: search again from just before the new bytes.
            searched_from = seen.len().saturating_sub(needle.len().saturating_sub(1));
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let error = FtdiError::PatternNotSeen {
                    pattern: pattern.to_string(),
                    waited_ms: started.elapsed().as_millis() as u64,
                    seen: String::from_utf8_lossy(&seen).into_owned(),
                };
                self.pending = seen;
                return Err(error);
            }
            match self.read_packets(nonzero_ms(left.as_millis())) {
                Ok(bytes) => seen.extend(bytes),
                Err(error) => {
                    self.pending = seen;
                    return Err(error);
                }
            }
        }
    }

    /// Like [`read_until`](Self::read_until), but sends an empty line every `every` (at
    /// least 1 ms) while `pattern` has not arrived: what a person does at a quiet console.
    /// A prompt printed before anyone listened is gone (a USB reset of the adapter drops
    /// what it buffered), and a login prompt (getty) is printed again on an empty line.
    /// Returns what was read up to and including `pattern`, and how many empty lines were
    /// sent.
    pub fn read_until_nudging(
        &mut self,
        pattern: &str,
        timeout: Duration,
        every: Duration,
    ) -> Result<(String, u32), FtdiError> {
        let started = Instant::now();
        let give_up = started + timeout;
        let every = every.max(Duration::from_millis(1));
        let mut nudges = 0;
        loop {
            let wait = give_up.saturating_duration_since(Instant::now()).min(every);
            match self.read_until(pattern, wait) {
                Ok(seen) => return Ok((seen, nudges)),
                Err(FtdiError::PatternNotSeen { seen, .. }) if Instant::now() >= give_up => {
                    return Err(FtdiError::PatternNotSeen {
                        pattern: pattern.to_string(),
                        waited_ms: started.elapsed().as_millis() as u64,
                        seen,
                    });
                }
                Err(FtdiError::PatternNotSeen { .. }) => {
                    self.write(self.line_ending.bytes())?;
                    nudges += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Writes all of `data`.
    pub fn write(&mut self, data: &[u8]) -> Result<(), FtdiError> {
        let mut sent = 0;
        while sent < data.len() {
            let n = self
                .transfers
                .bulk_out(self.bulk_out, &data[sent..], self.timeout_ms)
                .map_err(|error| FtdiError::Usb {
                    operation: "writing",
                    error,
                })?;
            if n == 0 {
                return Err(FtdiError::ShortWrite {
                    sent,
                    expected: data.len(),
                });
            }
            sent += n as usize;
        }
        Ok(())
    }

    /// Writes `line` and the line ending (see [`set_line_ending`](Self::set_line_ending)).
    pub fn write_line(&mut self, line: &str) -> Result<(), FtdiError> {
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend_from_slice(self.line_ending.bytes());
        self.write(&bytes)
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}
