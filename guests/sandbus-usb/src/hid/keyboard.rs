//! A keyboard in boot protocol (HID 1.11, 7.2.5 and appendix B): switched to it with
//! SET_PROTOCOL, told with SET_IDLE to report only changes, then read report by report from
//! its interrupt IN endpoint.

use std::time::{Duration, Instant};

use super::error::KeyboardError;
use super::report::{BootReport, KeyEvent, key_events};
use super::text::TypedLine;
use crate::descriptors::{Direction, Interface, TransferType};
use crate::transfers::{CLASS_INTERFACE_OUT, Transfers, nonzero_ms, setup};
use crate::usb::UsbError;

/// HID class request SET_IDLE.
pub const SET_IDLE: u8 = 0x0a;
/// HID class request SET_PROTOCOL.
pub const SET_PROTOCOL: u8 = 0x0b;
/// SET_PROTOCOL's `wValue` for the boot protocol.
pub const BOOT_PROTOCOL: u16 = 0;

/// A boot keyboard: reports, key events, typed lines.
pub struct BootKeyboard<T> {
    transfers: T,
    interface: u8,
    endpoint: u8,
    report_length: u32,
    previous: BootReport,
    line: TypedLine,
    timeout_ms: u32,
}

impl<T: Transfers> BootKeyboard<T> {
    /// Claims the keyboard's interface (normally the one
    /// [`crate::InterfaceClass::HID_BOOT_KEYBOARD`] finds) and finds its interrupt IN
    /// endpoint. Sends nothing: call [`set_boot_protocol`](Self::set_boot_protocol) and
    /// [`set_idle`](Self::set_idle).
    pub fn open(mut transfers: T, interface: &Interface) -> Result<Self, KeyboardError> {
        let endpoint = interface
            .endpoint(TransferType::Interrupt, Direction::In)
            .ok_or(KeyboardError::MissingEndpoint {
                interface: interface.number,
            })?;
        transfers
            .claim_interface(interface.number)
            .map_err(|error| KeyboardError::Usb {
                operation: "claiming the interface",
                error,
            })?;
        Ok(Self {
            transfers,
            interface: interface.number,
            endpoint: endpoint.address,
            report_length: u32::from(endpoint.max_packet_size.max(8)),
            previous: BootReport::default(),
            line: TypedLine::new(),
            timeout_ms: 5000,
        })
    }

    /// Gives the device back.
    pub fn into_inner(self) -> T {
        self.transfers
    }

    fn class_out(
        &mut self,
        operation: &'static str,
        request: u8,
        value: u16,
    ) -> Result<(), KeyboardError> {
        let request = setup(
            CLASS_INTERFACE_OUT,
            request,
            value,
            u16::from(self.interface),
        );
        self.transfers
            .control_out(request, &[], self.timeout_ms)
            .map(|_| ())
            .map_err(|error| KeyboardError::Usb { operation, error })
    }

    /// SET_PROTOCOL(boot): the keyboard sends 8-byte boot reports whatever its report
    /// descriptor says.
    pub fn set_boot_protocol(&mut self) -> Result<(), KeyboardError> {
        self.class_out("SET_PROTOCOL(boot)", SET_PROTOCOL, BOOT_PROTOCOL)
    }

    /// SET_IDLE for all reports: `duration_4ms` is how often (in 4 ms units) the keyboard
    /// repeats an unchanged report; 0 means only on change, what reading key events wants.
    pub fn set_idle(&mut self, duration_4ms: u8) -> Result<(), KeyboardError> {
        self.class_out("SET_IDLE", SET_IDLE, u16::from(duration_4ms) << 8)
    }

    /// Waits up to `timeout_ms` for one report; `None` if none came.
    pub fn read_report(&mut self, timeout_ms: u32) -> Result<Option<BootReport>, KeyboardError> {
        let bytes =
            match self
                .transfers
                .interrupt_in(self.endpoint, self.report_length, timeout_ms.max(1))
            {
                Ok(bytes) => bytes,
                Err(UsbError::Timeout) => return Ok(None),
                Err(error) => {
                    return Err(KeyboardError::Usb {
                        operation: "reading a report",
                        error,
                    });
                }
            };
        BootReport::parse(&bytes)
            .map(Some)
            .ok_or(KeyboardError::MalformedReport { report: bytes })
    }

    /// Waits up to `timeout_ms` for one report and returns the key events since the last
    /// one (empty if none came, or if it was a roll-over report).
    pub fn read_events(&mut self, timeout_ms: u32) -> Result<Vec<KeyEvent>, KeyboardError> {
        match self.read_report(timeout_ms)? {
            Some(report) if !report.is_roll_over() => {
                let events = key_events(&self.previous, &report);
                self.previous = report;
                Ok(events)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Reads key events until Enter, for at most `timeout`, and returns the text typed
    /// (see [`TypedLine`]). On timeout the error carries what was typed so far, which stays
    /// for the next call.
    pub fn read_line(&mut self, timeout: Duration) -> Result<String, KeyboardError> {
        let started = Instant::now();
        let give_up = started + timeout;
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(KeyboardError::LineNotFinished {
                    waited_ms: started.elapsed().as_millis() as u64,
                    typed: self.line.text().to_string(),
                });
            }
            for event in self.read_events(nonzero_ms(left.as_millis()))? {
                if let Some(line) = self.line.feed(&event) {
                    return Ok(line);
                }
            }
        }
    }
}
