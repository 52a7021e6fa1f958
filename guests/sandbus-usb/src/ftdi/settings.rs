//! What the FTDI vendor requests carry: the baud rate divisor, the data format, flow control,
//! and the two status bytes the chip puts at the start of every packet it sends.

use std::fmt;

/// The clock the FT232B/R family divides to make its baud rate: 3 MHz, in eighths of a
/// divisor (AN232B-05, "Configuring FT232R, FT2232 and FT232B Baud Rates").
const BAUD_CLOCK_EIGHTHS: u64 = 24_000_000;

/// How far off the chip's nearest rate may be from the one asked (UARTs tolerate ~3 %).
const BAUD_TOLERANCE_PERCENT: u64 = 3;

/// The encoding of a divisor's fractional eighths (0/8 .. 7/8) in bits 14-16.
const FRACTION_CODES: [u32; 8] = [0, 3, 2, 4, 1, 5, 6, 7];

/// A baud rate as the SET_BAUD_RATE request carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaudDivisor {
    /// `wValue`: the divisor's low 16 bits.
    pub value: u16,
    /// `wIndex`: bit 16 of the divisor (single-port chips).
    pub index: u16,
    /// The rate the chip will actually run at.
    pub actual: u32,
}

impl BaudDivisor {
    /// The divisor nearest to `baud` for an FT232B/R-class chip (3 MHz clock, divisor
    /// `n + x/8` with a 14-bit `n`): 183 baud to 3 Mbaud. `None` when the nearest rate the
    /// chip can make is more than 3 % off.
    pub fn for_baud(baud: u32) -> Option<Self> {
        if baud == 0 {
            return None;
        }
        let baud = u64::from(baud);
        let eighths = (BAUD_CLOCK_EIGHTHS + baud / 2) / baud;
        // Divisors below 2 are only 1 (3 Mbaud) and 1.5 (2 Mbaud), with codes of their own.
        let (encoded, eighths) = match eighths {
            0..=9 => (0, 8),
            10..=13 => (1, 12),
            16..=131_071 => {
                let whole = (eighths / 8) as u32;
                let fraction = FRACTION_CODES[(eighths % 8) as usize];
                (whole | (fraction << 14), eighths)
            }
            14..=15 => (2, 16),
            _ => return None,
        };
        let actual = BAUD_CLOCK_EIGHTHS / eighths;
        if actual.abs_diff(baud) * 100 > baud * BAUD_TOLERANCE_PERCENT {
            return None;
        }
        Some(Self {
            value: (encoded & 0xffff) as u16,
            index: (encoded >> 16) as u16,
            actual: actual as u32,
        })
    }
}

/// Data bits per character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataBits {
    /// 7 bits.
    Seven,
    /// 8 bits.
    Eight,
}

/// Parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    /// None.
    None,
    /// Odd.
    Odd,
    /// Even.
    Even,
    /// Always 1.
    Mark,
    /// Always 0.
    Space,
}

/// Stop bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopBits {
    /// 1.
    One,
    /// 1.5.
    OneAndHalf,
    /// 2.
    Two,
}

/// Flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowControl {
    /// None: what a console on three wires needs.
    None,
    /// RTS/CTS hardware handshake.
    RtsCts,
    /// DTR/DSR hardware handshake.
    DtrDsr,
    /// XON (0x11) / XOFF (0x13) in band.
    XonXoff,
}

/// The serial line's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSettings {
    /// Bits per second.
    pub baud: u32,
    /// Data bits.
    pub data_bits: DataBits,
    /// Parity.
    pub parity: Parity,
    /// Stop bits.
    pub stop_bits: StopBits,
    /// Flow control.
    pub flow_control: FlowControl,
}

impl LineSettings {
    /// 8N1 without flow control at `baud`: what a board's console uses.
    pub fn console(baud: u32) -> Self {
        Self {
            baud,
            data_bits: DataBits::Eight,
            parity: Parity::None,
            stop_bits: StopBits::One,
            flow_control: FlowControl::None,
        }
    }

    /// SET_DATA's `wValue`: data bits in bits 0-7, parity in 8-10, stop bits in 11-12.
    pub fn data_value(&self) -> u16 {
        let bits = match self.data_bits {
            DataBits::Seven => 7,
            DataBits::Eight => 8,
        };
        let parity = match self.parity {
            Parity::None => 0,
            Parity::Odd => 1,
            Parity::Even => 2,
            Parity::Mark => 3,
            Parity::Space => 4,
        };
        let stop = match self.stop_bits {
            StopBits::One => 0,
            StopBits::OneAndHalf => 1,
            StopBits::Two => 2,
        };
        bits | (parity << 8) | (stop << 11)
    }

    /// SET_FLOW_CTRL's `wValue` (the XON/XOFF characters) and the handshake bits of its
    /// `wIndex` (bits 8-15).
    pub fn flow_value_and_index(&self) -> (u16, u16) {
        match self.flow_control {
            FlowControl::None => (0, 0),
            FlowControl::RtsCts => (0, 0x0100),
            FlowControl::DtrDsr => (0, 0x0200),
            FlowControl::XonXoff => (0x1311, 0x0400),
        }
    }
}

impl Default for LineSettings {
    /// 115200 8N1, no flow control.
    fn default() -> Self {
        Self::console(115_200)
    }
}

/// The two status bytes at the start of every packet the chip sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FtdiStatus {
    /// Modem status: bit 4 CTS, 5 DSR, 6 RI, 7 DCD.
    pub modem: u8,
    /// Line status: bit 1 overrun, 2 parity error, 3 framing error, 4 break, 5 transmit
    /// holding register empty, 6 transmitter empty, 7 receive FIFO error.
    pub line: u8,
}

impl FtdiStatus {
    /// The line status bits that mean received data was lost or damaged.
    pub const LINE_ERRORS: u8 = 0x02 | 0x04 | 0x08 | 0x10 | 0x80;

    /// Clear to send.
    pub fn cts(&self) -> bool {
        self.modem & 0x10 != 0
    }

    /// Data set ready.
    pub fn dsr(&self) -> bool {
        self.modem & 0x20 != 0
    }

    /// Data carrier detect.
    pub fn dcd(&self) -> bool {
        self.modem & 0x80 != 0
    }

    /// Whether the line reported overrun, parity, framing, break or FIFO errors.
    pub fn has_line_errors(&self) -> bool {
        self.line & Self::LINE_ERRORS != 0
    }
}

impl fmt::Display for FtdiStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = |set: bool, name: &'static str| if set { name } else { "" };
        write!(
            f,
            "modem {:#04x} (cts {} dsr {} dcd {}), line {:#04x}{}{}{}{}",
            self.modem,
            self.cts(),
            self.dsr(),
            self.dcd(),
            self.line,
            flag(self.line & 0x02 != 0, " overrun"),
            flag(self.line & 0x04 != 0, " parity-error"),
            flag(self.line & 0x08 != 0, " framing-error"),
            flag(self.line & 0x10 != 0, " break"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_divisor_for_common_rates_is_what_the_chip_expects() {
        // AN232B-05's examples: 9600 baud is 312.5 (0x4138), 115200 is 26.
        let rate = BaudDivisor::for_baud(9600).unwrap();
        assert_eq!((rate.value, rate.index, rate.actual), (0x4138, 0, 9600));
        let rate = BaudDivisor::for_baud(115_200).unwrap();
        assert_eq!((rate.value, rate.index), (26, 0));
        assert_eq!(rate.actual, 115_384);
        // 3 Mbaud and 2 Mbaud have codes of their own.
        assert_eq!(BaudDivisor::for_baud(3_000_000).unwrap().value, 0);
        assert_eq!(BaudDivisor::for_baud(2_000_000).unwrap().value, 1);
        // 7/8 is code 7: bit 16 goes into wIndex.
        let rate = BaudDivisor::for_baud(24_000_000 / (8 * 100 + 7)).unwrap();
        assert_eq!((rate.value, rate.index), (100 | (3 << 14), 1));
    }

    #[test]
    fn rates_the_chip_cannot_make_are_refused() {
        assert_eq!(BaudDivisor::for_baud(0), None);
        assert_eq!(BaudDivisor::for_baud(100), None, "below 183 baud");
        assert_eq!(BaudDivisor::for_baud(4_000_000), None, "above 3 Mbaud");
        assert_eq!(
            BaudDivisor::for_baud(2_500_000),
            None,
            "between 2 and 3 Mbaud nothing is within 3 %"
        );
    }

    #[test]
    fn console_settings_are_8n1_without_flow_control() {
        let settings = LineSettings::default();
        assert_eq!(settings.baud, 115_200);
        assert_eq!(settings.data_value(), 8);
        assert_eq!(settings.flow_value_and_index(), (0, 0));
        let seven_even_two = LineSettings {
            data_bits: DataBits::Seven,
            parity: Parity::Even,
            stop_bits: StopBits::Two,
            ..settings
        };
        assert_eq!(seven_even_two.data_value(), 7 | (2 << 8) | (2 << 11));
    }

    #[test]
    fn status_bytes_say_which_lines_are_up_and_what_went_wrong() {
        let status = FtdiStatus {
            modem: 0xb1,
            line: 0x60,
        };
        assert!(status.cts() && status.dsr() && status.dcd());
        assert!(!status.has_line_errors());
        let overrun = FtdiStatus {
            modem: 0x01,
            line: 0x62,
        };
        assert!(overrun.has_line_errors());
        assert!(overrun.to_string().contains("overrun"), "{overrun}");
    }
}
