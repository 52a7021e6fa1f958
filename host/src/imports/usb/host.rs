//! `impl usb::Host` and the two resources: the lease check, and transfers on blocking
//! threads bounded by the call's deadline.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::component::Resource;

use super::{UsbDevice, UsbDeviceHandle, UsbState};
use crate::bindings::script::sandbus::host::usb::{
    ControlSetup as WitSetup, Device as WitDevice, DeviceHandle as WitHandle,
    DeviceInfo as WitInfo, Host, HostDevice, HostDeviceHandle, UsbError as WitError,
};
use crate::devices::{
    ControlSetup, DeviceHandle, DeviceInfo, TransferKind, UsbError, UsbErrorKind,
};

/// Most bytes one transfer may move: a guest's `length` is allocated by the host.
pub const MAX_TRANSFER: u32 = 1 << 20;

/// Longest a bulk or interrupt transfer waits in one go before checking that its run is
/// still alive. A slice that times out with nothing moved is simply waited again (libusb
/// reports a transfer that moved some bytes before timing out as a short transfer).
pub const TRANSFER_SLICE: Duration = Duration::from_millis(200);

/// Longest timeout a control transfer gets (it cannot be sliced: repeating it would repeat
/// the request).
pub const MAX_CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

impl From<UsbError> for WitError {
    fn from(e: UsbError) -> Self {
        match e.kind {
            UsbErrorKind::Timeout => WitError::Timeout,
            UsbErrorKind::Stall => WitError::Stall,
            UsbErrorKind::Disconnected | UsbErrorKind::NotFound => WitError::Disconnected,
            UsbErrorKind::NotClaimed => WitError::NotClaimed,
            UsbErrorKind::Busy => WitError::Busy,
            UsbErrorKind::InvalidArgument => WitError::InvalidArgument(e.message),
            UsbErrorKind::Overflow => WitError::Overflow,
            UsbErrorKind::Access | UsbErrorKind::Unavailable | UsbErrorKind::Io => {
                WitError::Io(e.message)
            }
        }
    }
}

// The guest's resources are the generated (empty) `Device` / `DeviceHandle` types; the table
// holds ours under the same index.
fn ours_device(r: &Resource<WitDevice>) -> Resource<UsbDevice> {
    Resource::new_own(r.rep())
}

fn ours_handle(r: &Resource<WitHandle>) -> Resource<UsbDeviceHandle> {
    Resource::new_own(r.rep())
}

fn guest_device(r: Resource<UsbDevice>) -> Resource<WitDevice> {
    Resource::new_own(r.rep())
}

fn guest_handle(r: Resource<UsbDeviceHandle>) -> Resource<WitHandle> {
    Resource::new_own(r.rep())
}

fn wit_info(info: &DeviceInfo) -> WitInfo {
    WitInfo {
        vendor_id: info.vendor_id,
        product_id: info.product_id,
        serial: info.serial.clone(),
        manufacturer: info.manufacturer.clone(),
        product: info.product.clone(),
        location: info.location.clone(),
        device_class: info.class,
    }
}

fn setup(s: WitSetup) -> ControlSetup {
    ControlSetup {
        request_type: s.request_type,
        request: s.request,
        value: s.value,
        index: s.index,
    }
}

/// What a transfer asked for after its run was stopped gets.
fn run_ended() -> WitError {
    WitError::Io("the run ended".to_owned())
}

/// Runs blocking device work: on this thread when the call has a thread of its own
/// (`inline`), else off the async executor, on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    inline: bool,
    work: impl FnOnce() -> Result<T, UsbError> + Send + 'static,
) -> Result<T, WitError> {
    if inline {
        return work().map_err(WitError::from);
    }
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(WitError::from),
        Err(e) => Err(WitError::Io(format!("the transfer thread failed: {e}"))),
    }
}

impl UsbState {
    /// The timeout a transfer gets: what the guest asked for (0: no limit of its own), cut
    /// to what is left of the call's deadline. `None` when the deadline has passed.
    fn transfer_timeout(&self, timeout_ms: u32) -> Option<Duration> {
        let left = self.deadline.checked_duration_since(Instant::now())?;
        let asked = match timeout_ms {
            0 => left,
            ms => Duration::from_millis(u64::from(ms)),
        };
        // libusb reads a zero timeout as "wait forever": never pass one.
        Some(asked.min(left).max(Duration::from_millis(1)))
    }

    fn device(&self) -> Result<UsbDevice, WitError> {
        match &self.leased {
            Some(leased) => Ok(UsbDevice {
                info: leased.info.clone(),
            }),
            None => Err(WitError::NoDevice),
        }
    }

    /// Runs `op` once on the open handle (see [`blocking`]), within the deadline and at most
    /// [`MAX_CONTROL_TIMEOUT`].
    async fn transfer<T: Send + 'static>(
        &mut self,
        handle: &Resource<WitHandle>,
        timeout_ms: u32,
        op: impl FnOnce(&mut dyn DeviceHandle, Duration) -> Result<T, UsbError> + Send + 'static,
    ) -> wasmtime::Result<Result<T, WitError>> {
        let shared = self.table.get(&ours_handle(handle))?.handle.clone();
        if self.ended.is_cancelled() {
            return Ok(Err(run_ended()));
        }
        let Some(timeout) = self.transfer_timeout(timeout_ms) else {
            return Ok(Err(WitError::Timeout));
        };
        let timeout = timeout.min(MAX_CONTROL_TIMEOUT);
        Ok(blocking(self.inline, move || {
            let mut guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
            op(guard.as_mut(), timeout)
        })
        .await)
    }

    /// Runs `op` on the open handle in slices of [`TRANSFER_SLICE`] until it completes,
    /// fails otherwise than by timing out, the timeout is spent, or the call ended.
    async fn sliced<T: Send + 'static>(
        &mut self,
        handle: &Resource<WitHandle>,
        timeout_ms: u32,
        mut op: impl FnMut(&mut dyn DeviceHandle, Duration) -> Result<T, UsbError> + Send + 'static,
    ) -> wasmtime::Result<Result<T, WitError>> {
        let shared = self.table.get(&ours_handle(handle))?.handle.clone();
        let Some(timeout) = self.transfer_timeout(timeout_ms) else {
            return Ok(Err(WitError::Timeout));
        };
        let ended = self.ended.clone();
        Ok(blocking(self.inline, move || {
            let give_up = Instant::now() + timeout;
            let mut guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if ended.is_cancelled() {
                    return Err(UsbError::new(UsbErrorKind::Io, "the run ended"));
                }
                let left = give_up.saturating_duration_since(Instant::now());
                let slice = left.min(TRANSFER_SLICE).max(Duration::from_millis(1));
                match op(guard.as_mut(), slice) {
                    Err(e) if e.kind == UsbErrorKind::Timeout && Instant::now() < give_up => {}
                    result => return result,
                }
            }
        })
        .await)
    }

    /// A bulk or interrupt read, in slices (see [`Self::sliced`]).
    async fn read(
        &mut self,
        handle: &Resource<WitHandle>,
        kind: TransferKind,
        endpoint: u8,
        length: u32,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, WitError>> {
        let length = match check_length(length) {
            Ok(length) => length,
            Err(e) => return Ok(Err(e)),
        };
        self.sliced(handle, timeout_ms, move |h, t| {
            h.read(kind, endpoint, length, t)
        })
        .await
    }

    /// A bulk or interrupt write, in slices (see [`Self::sliced`]).
    async fn write(
        &mut self,
        handle: &Resource<WitHandle>,
        kind: TransferKind,
        endpoint: u8,
        data: Vec<u8>,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<u32, WitError>> {
        if let Err(e) = check_data(&data) {
            return Ok(Err(e));
        }
        self.sliced(handle, timeout_ms, move |h, t| {
            h.write(kind, endpoint, &data, t).map(sent)
        })
        .await
    }
}

fn check_length(length: u32) -> Result<usize, WitError> {
    if length > MAX_TRANSFER {
        return Err(WitError::InvalidArgument(format!(
            "a transfer moves at most {MAX_TRANSFER} bytes, not {length}"
        )));
    }
    Ok(length as usize)
}

fn check_data(data: &[u8]) -> Result<(), WitError> {
    if data.len() > MAX_TRANSFER as usize {
        return Err(WitError::InvalidArgument(format!(
            "a transfer moves at most {MAX_TRANSFER} bytes, not {}",
            data.len()
        )));
    }
    Ok(())
}

fn sent(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Host for UsbState {
    async fn leased_device(&mut self) -> wasmtime::Result<Result<Resource<WitDevice>, WitError>> {
        match self.device() {
            Ok(device) => Ok(Ok(guest_device(self.table.push(device)?))),
            Err(e) => Ok(Err(e)),
        }
    }

    async fn find_device(
        &mut self,
        vendor_id: u16,
        product_id: u16,
        serial: Option<String>,
    ) -> wasmtime::Result<Result<Resource<WitDevice>, WitError>> {
        let asked = match &serial {
            Some(serial) => format!("{vendor_id:04x}:{product_id:04x} serial {serial}"),
            None => format!("{vendor_id:04x}:{product_id:04x}"),
        };
        let Some(leased) = &self.leased else {
            return Ok(Err(WitError::NotLeased(asked)));
        };
        let info = &leased.info;
        let matches = info.vendor_id == vendor_id
            && info.product_id == product_id
            && serial
                .as_deref()
                .is_none_or(|s| info.serial.as_deref() == Some(s));
        if !matches {
            // The same answer whether or not such a device exists on this host.
            return Ok(Err(WitError::NotLeased(asked)));
        }
        match self.device() {
            Ok(device) => Ok(Ok(guest_device(self.table.push(device)?))),
            Err(e) => Ok(Err(e)),
        }
    }
}

impl HostDevice for UsbState {
    async fn info(&mut self, device: Resource<WitDevice>) -> wasmtime::Result<WitInfo> {
        Ok(wit_info(&self.table.get(&ours_device(&device))?.info))
    }

    async fn device_descriptor(
        &mut self,
        device: Resource<WitDevice>,
    ) -> wasmtime::Result<Result<Vec<u8>, WitError>> {
        let id = self.table.get(&ours_device(&device))?.info.id.clone();
        let Some(leased) = &self.leased else {
            return Ok(Err(WitError::NoDevice));
        };
        let backend = leased.backend.clone();
        Ok(blocking(self.inline, move || {
            backend.descriptors(&id).map(|d| d.device)
        })
        .await)
    }

    async fn configuration_descriptors(
        &mut self,
        device: Resource<WitDevice>,
    ) -> wasmtime::Result<Result<Vec<Vec<u8>>, WitError>> {
        let id = self.table.get(&ours_device(&device))?.info.id.clone();
        let Some(leased) = &self.leased else {
            return Ok(Err(WitError::NoDevice));
        };
        let backend = leased.backend.clone();
        Ok(blocking(self.inline, move || {
            backend.descriptors(&id).map(|d| d.configurations)
        })
        .await)
    }

    async fn open(
        &mut self,
        device: Resource<WitDevice>,
    ) -> wasmtime::Result<Result<Resource<WitHandle>, WitError>> {
        let id = self.table.get(&ours_device(&device))?.info.id.clone();
        let Some(leased) = &self.leased else {
            return Ok(Err(WitError::NoDevice));
        };
        if self.open {
            return Ok(Err(WitError::Busy));
        }
        if self.ended.is_cancelled() {
            return Ok(Err(run_ended()));
        }
        let backend = leased.backend.clone();
        match blocking(self.inline, move || backend.open(&id)).await {
            Ok(handle) => {
                let handle = UsbDeviceHandle {
                    handle: Arc::new(Mutex::new(handle)),
                };
                let resource = guest_handle(self.table.push(handle)?);
                self.open = true;
                Ok(Ok(resource))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    async fn drop(&mut self, device: Resource<WitDevice>) -> wasmtime::Result<()> {
        self.table.delete(ours_device(&device))?;
        Ok(())
    }
}

impl HostDeviceHandle for UsbState {
    async fn claim_interface(
        &mut self,
        handle: Resource<WitHandle>,
        interface: u8,
    ) -> wasmtime::Result<Result<(), WitError>> {
        self.transfer(&handle, 0, move |h, _| h.claim_interface(interface))
            .await
    }

    async fn release_interface(
        &mut self,
        handle: Resource<WitHandle>,
        interface: u8,
    ) -> wasmtime::Result<Result<(), WitError>> {
        self.transfer(&handle, 0, move |h, _| h.release_interface(interface))
            .await
    }

    async fn control_in(
        &mut self,
        handle: Resource<WitHandle>,
        s: WitSetup,
        length: u16,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, WitError>> {
        let s = setup(s);
        if !s.is_in() {
            return Ok(Err(WitError::InvalidArgument(
                "control-in needs bit 7 (device-to-host) set in request-type".into(),
            )));
        }
        self.transfer(&handle, timeout_ms, move |h, t| h.control_in(s, length, t))
            .await
    }

    async fn control_out(
        &mut self,
        handle: Resource<WitHandle>,
        s: WitSetup,
        data: Vec<u8>,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<u32, WitError>> {
        let s = setup(s);
        if s.is_in() {
            return Ok(Err(WitError::InvalidArgument(
                "control-out needs bit 7 (device-to-host) clear in request-type".into(),
            )));
        }
        if let Err(e) = check_data(&data) {
            return Ok(Err(e));
        }
        self.transfer(&handle, timeout_ms, move |h, t| {
            h.control_out(s, &data, t).map(sent)
        })
        .await
    }

    async fn bulk_in(
        &mut self,
        handle: Resource<WitHandle>,
        endpoint: u8,
        length: u32,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, WitError>> {
        self.read(&handle, TransferKind::Bulk, endpoint, length, timeout_ms)
            .await
    }

    async fn bulk_out(
        &mut self,
        handle: Resource<WitHandle>,
        endpoint: u8,
        data: Vec<u8>,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<u32, WitError>> {
        self.write(&handle, TransferKind::Bulk, endpoint, data, timeout_ms)
            .await
    }

    async fn interrupt_in(
        &mut self,
        handle: Resource<WitHandle>,
        endpoint: u8,
        length: u32,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, WitError>> {
        self.read(
            &handle,
            TransferKind::Interrupt,
            endpoint,
            length,
            timeout_ms,
        )
        .await
    }

    async fn interrupt_out(
        &mut self,
        handle: Resource<WitHandle>,
        endpoint: u8,
        data: Vec<u8>,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<u32, WitError>> {
        self.write(&handle, TransferKind::Interrupt, endpoint, data, timeout_ms)
            .await
    }

    async fn clear_halt(
        &mut self,
        handle: Resource<WitHandle>,
        endpoint: u8,
    ) -> wasmtime::Result<Result<(), WitError>> {
        self.transfer(&handle, 0, move |h, _| h.clear_halt(endpoint))
            .await
    }

    async fn drop(&mut self, handle: Resource<WitHandle>) -> wasmtime::Result<()> {
        // The device closes when the last holder (a transfer still running on its thread)
        // lets go of it.
        self.table.delete(ours_handle(&handle))?;
        self.open = false;
        Ok(())
    }
}
