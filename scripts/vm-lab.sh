#!/usr/bin/env bash
# A lab host in a VM: a Debian kernel under QEMU (software emulation, no KVM) with emulated
# USB devices behind an xHCI controller, running `sandbus daemon` on the real kernel USB
# stack and joining a nats-server on this machine.
#
#   scripts/vm-lab.sh image                 build target/vm-lab/{vmlinuz,initrd.img} from
#                                            Debian's packages and target/release/sandbus
#                                            ($SANDBUS_VM_LAB_DIR, $SANDBUS_BINARY and
#                                            $SANDBUS_VM_EXTRA=PROGRAM:... change them)
#   scripts/vm-lab.sh boot [options]         boot one VM (exec's QEMU: its pid is the VM)
#   scripts/vm-lab.sh try                    a lab in a VM: nats-server, one VM with a
#                                            keyboard, a USB stick and a serial adapter
#
# boot options:
#   --dir DIR          where the VM's QMP socket (qmp.sock) and console log (console.log) go
#   --nats PORT        the nats-server port on 127.0.0.1 that the daemon joins
#   --host-id ID       the daemon's host id
#   --keyboard ID      plug a usb-kbd with this QEMU id at boot (repeatable)
#   --storage ID=IMG   plug a usb-storage (serial ID) backed by the raw image IMG
#   --serial ID=SOCK   plug a usb-serial (FTDI) whose other end is the unix socket SOCK
#                      (QEMU connects to it; the caller listens)
#   --daemon-user U    run the daemon as `root` (default) or `nobody` (no access to
#                      /dev/bus/usb: devices listed as unusable)
#   --poll             turn libusb hotplug off in the daemon (the polling fallback)
#   --scan-every DUR   how often the daemon scans its devices (default 2s)
#   --die-with-parent  QEMU is killed when the process that started this script dies
#                      (tests: no VM outlives its test binary)
#
# In DIR: qmp.sock (QEMU's QMP: plug and unplug devices, type keys), console.log (the kernel
# and daemon output) and shell.sock (a root shell on the VM's second serial port: one command
# a line; end each with a marker of your own, `...; echo "__done__7 $?"`, to know where its
# output ends; for tests).
#
# Network: QEMU user networking with `restrict=on`: the guest reaches nothing but one
# forwarded address, 10.0.2.100:4222, which QEMU connects to 127.0.0.1:PORT on this machine.
# Everything comes from Debian's packages (qemu-system-x86, busybox-static, linux-image-amd64).
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
out="${SANDBUS_VM_LAB_DIR:-$repo/target/vm-lab}"

die() {
  echo "vm-lab: $*" >&2
  exit 1
}

# Debian packages this script needs on the machine that builds and boots the image.
need_packages() {
  local missing=()
  command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
  [ -x /bin/busybox ] && /bin/busybox --list | grep -qx su || missing+=(busybox-static)
  command -v cpio >/dev/null || missing+=(cpio)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "vm-lab: installing ${missing[*]}" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 \
        || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2; }
    else
      die "install ${missing[*]} (Debian packages), e.g. sudo apt-get install ${missing[*]}"
    fi
  fi
}

# The kernel modules the lab needs, by name; their dependencies are found from the .ko files.
LAB_MODULES=(xhci-pci usbhid hid-generic usb-storage sd_mod ftdi_sio e1000)

# Prints the load order of a module and its dependencies (dependencies first).
module_order() {
  local kdir="$1" name="$2"
  local file
  file="$(find "$kdir/kernel" -name "${name}.ko" -o -name "${name//-/_}.ko" -o -name "${name//_/-}.ko" | head -n 1)"
  [ -n "$file" ] || die "kernel module $name is not in $kdir"
  local deps
  deps="$(strings "$file" | sed -n 's/^depends=//p' | head -n 1)"
  local dep
  for dep in ${deps//,/ }; do
    module_order "$kdir" "$dep"
  done
  echo "${file#"$kdir"/}"
}

build_image() {
  need_packages
  local binary="${SANDBUS_BINARY:-$repo/target/release/sandbus}"
  [ -x "$binary" ] || die "$binary is missing: build it with cargo build --release -p sandbus"
  mkdir -p "$out/debs"
  # The kernel: linux-image-amd64 is a meta package naming the current image package.
  local meta image
  (cd "$out/debs" && apt-get download -q linux-image-amd64 >/dev/null 2>&1) \
    || die "apt-get download linux-image-amd64 failed (is Debian's package index there? apt-get update)"
  meta="$(ls -t "$out"/debs/linux-image-amd64_*.deb | head -n 1)"
  image="$(dpkg-deb -f "$meta" Depends | sed 's/ .*//; s/,.*//')"
  if ! ls "$out"/debs/"${image}"_*.deb >/dev/null 2>&1; then
    (cd "$out/debs" && apt-get download -q "$image" >/dev/null 2>&1) || die "apt-get download $image failed"
  fi
  local kernel_deb
  kernel_deb="$(ls "$out"/debs/"${image}"_*.deb | head -n 1)"
  local kernel_root="$out/kernel"
  if [ ! -f "$kernel_root/.from" ] || [ "$(cat "$kernel_root/.from")" != "$kernel_deb" ]; then
    rm -rf "$kernel_root"
    mkdir -p "$kernel_root"
    dpkg-deb -x "$kernel_deb" "$kernel_root"
    echo "$kernel_deb" >"$kernel_root/.from"
  fi
  local kver
  kver="$(ls "$kernel_root/lib/modules" | head -n 1)"
  local kdir="$kernel_root/lib/modules/$kver"

  local root="$out/root"
  rm -rf "$root"
  mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,var,lib/modules,lib64,lib/x86_64-linux-gnu,data}
  cp /bin/busybox "$root/bin/busybox"
  local applet
  for applet in sh mount umount mkdir insmod ip sleep cat echo ls su chmod chown grep sed \
    sync poweroff reboot hexdump dd dmesg ps kill cut tr head tail lsusb find wc stty readlink \
    setsid basename dirname test [ true false printf; do
    ln -sf busybox "$root/bin/$applet"
  done
  # Modules, in load order, each once.
  local order=() module entry
  for module in "${LAB_MODULES[@]}"; do
    while read -r entry; do
      local seen=0 existing
      for existing in "${order[@]}"; do [ "$existing" = "$entry" ] && seen=1; done
      [ $seen = 1 ] || order+=("$entry")
    done < <(module_order "$kdir" "$module")
  done
  : >"$root/etc/modules"
  for entry in "${order[@]}"; do
    mkdir -p "$root/lib/modules/$(dirname "$entry")"
    cp "$kdir/$entry" "$root/lib/modules/$entry"
    echo "/lib/modules/$entry" >>"$root/etc/modules"
  done
  # The daemon, stripped, with the shared libraries it links; and the extra programs named
  # in SANDBUS_VM_EXTRA (colon-separated; a benchmark's native half), under their own names.
  objcopy --strip-debug "$binary" "$root/bin/sandbus"
  local program lib
  local programs=("$binary")
  IFS=: read -r -a extra <<<"${SANDBUS_VM_EXTRA:-}"
  for program in "${extra[@]}"; do
    [ -n "$program" ] || continue
    [ -x "$program" ] || die "extra program $program is missing"
    objcopy --strip-debug "$program" "$root/bin/$(basename "$program")"
    programs+=("$program")
  done
  for program in "${programs[@]}"; do
    for lib in $(ldd "$program" | grep -o '/[^ ]*'); do
      cp -L "$lib" "$root$lib"
    done
  done
  echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/nonexistent:/bin/sh' >>"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  cp "$repo/scripts/vm-lab-init.sh" "$root/init"
  chmod +x "$root/init"
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initrd.img.new"
  mv "$out/initrd.img.new" "$out/initrd.img"
  cp "$kernel_root/boot/vmlinuz-$kver" "$out/vmlinuz"
  rm -rf "$root"
  echo "$out/vmlinuz"
  echo "$out/initrd.img"
}

boot() {
  local dir="" nats="" host_id="" user=root poll=0 scan=2s
  local wrap=()
  local devices=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) dir="$2"; shift 2 ;;
      --nats) nats="$2"; shift 2 ;;
      --host-id) host_id="$2"; shift 2 ;;
      --daemon-user) user="$2"; shift 2 ;;
      --poll) poll=1; shift ;;
      --scan-every) scan="$2"; shift 2 ;;
      --die-with-parent) wrap=(setpriv --pdeathsig KILL --); shift ;;
      --keyboard)
        devices+=(-device "usb-kbd,bus=xhci.0,id=$2,serial=$2"); shift 2 ;;
      --storage)
        local id="${2%%=*}" img="${2#*=}"
        devices+=(-blockdev "driver=file,node-name=$id-file,filename=$img"
          -blockdev "driver=raw,node-name=$id-disk,file=$id-file"
          -device "usb-storage,bus=xhci.0,id=$id,drive=$id-disk,serial=$id,removable=on")
        shift 2 ;;
      --serial)
        local id="${2%%=*}" sock="${2#*=}"
        devices+=(-chardev "socket,id=$id-chr,path=$sock,reconnect=1"
          -device "usb-serial,bus=xhci.0,id=$id,serial=$id,chardev=$id-chr,always-plugged=on")
        shift 2 ;;
      *) die "unknown boot option $1 (see the top of scripts/vm-lab.sh)" ;;
    esac
  done
  [ -n "$dir" ] && [ -n "$nats" ] && [ -n "$host_id" ] || die "boot needs --dir, --nats and --host-id"
  case "$user" in root | nobody) ;; *) die "--daemon-user is root or nobody, not $user" ;; esac
  [ -f "$out/initrd.img" ] || die "no image in $out: run scripts/vm-lab.sh image"
  mkdir -p "$dir"
  rm -f "$dir/qmp.sock" "$dir/shell.sock"
  [[ "$scan" =~ ^[0-9]+(ms|s|m)$ ]] || die "--scan-every takes a duration such as 2s, not $scan"
  exec "${wrap[@]}" qemu-system-x86_64 \
    -accel tcg -machine q35 -cpu max -smp 1 -m "${SANDBUS_VM_MEMORY:-1536}" \
    -nodefaults -no-user-config -display none \
    -kernel "$out/vmlinuz" -initrd "$out/initrd.img" \
    -append "console=ttyS0 quiet loglevel=4 panic=-1 sandbus.host=$host_id sandbus.user=$user sandbus.poll=$poll sandbus.scan=$scan" \
    -serial "file:$dir/console.log" \
    -serial "unix:$dir/shell.sock,server=on,wait=off" \
    -qmp "unix:$dir/qmp.sock,server=on,wait=off" \
    -nic "user,model=e1000,restrict=on,guestfwd=tcp:10.0.2.100:4222-cmd:$repo/scripts/vm-lab-forward.sh $nats" \
    -device qemu-xhci,id=xhci \
    "${devices[@]}" \
    -no-reboot
}

# A lab in a VM for a person: nats-server (this machine's on 127.0.0.1:4222 if one answers,
# else a private one), one VM with a keyboard and a USB stick, until Ctrl-C.
try_lab() {
  cd "$repo"
  scripts/setup.sh >/dev/null
  cargo build --release --locked -p sandbus
  build_image >/dev/null
  local dir="$out/try"
  mkdir -p "$dir"
  local pids=()
  trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
  trap 'exit 130' INT TERM
  local port=4222
  if ! (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    source scripts/nats-server-path.sh
    "${SANDBUS_NATS_SERVER:-nats-server}" -a 127.0.0.1 -p "$port" -js -sd "$dir/nats" \
      >"$dir/nats.log" 2>&1 &
    pids+=($!)
    echo "started a private nats-server on 127.0.0.1:$port (log: $dir/nats.log)"
  fi
  if [ ! -f "$dir/stick.img" ]; then
    truncate -s 64M "$dir/stick.img"
    printf 'hello from the sandbus lab stick' |
      dd of="$dir/stick.img" bs=512 seek=100 conv=notrunc status=none
  fi
  rm -f "$dir/console.log"
  "$0" boot --dir "$dir" --nats "$port" --host-id vm-lab --keyboard kbd1 \
    --storage "stick1=$dir/stick.img" &
  local vm=$!
  pids+=("$vm")
  echo "booting the lab VM (console: $dir/console.log) ..."
  local i
  for i in $(seq 1 180); do
    grep -q "daemon ready" "$dir/console.log" 2>/dev/null && break
    kill -0 "$vm" 2>/dev/null || die "the VM stopped; see $dir/console.log"
    sleep 1
  done
  grep -q "daemon ready" "$dir/console.log" || die "the VM's daemon did not start; see $dir/console.log"
  cat <<EOF

The lab host 'vm-lab' runs in a VM with a QEMU keyboard and a USB stick. Try:

  target/release/sandbus devices
  target/release/sandbus upload --name smoke target/guests/usb-smoke.wasm
  target/release/sandbus run smoke --device 0627:0001 --arg vendor=0627 --arg product=0001 --follow

Plug and unplug devices through QEMU's QMP socket, $dir/qmp.sock (device_add, device_del).
Ctrl-C stops the VM (and the private nats-server, if this started one).
EOF
  wait "$vm"
}

case "${1:-}" in
  image) shift; build_image "$@" ;;
  try) shift; need_packages; try_lab "$@" ;;
  boot) shift; need_packages; boot "$@" ;;
  *) die "usage: scripts/vm-lab.sh image | boot [options] | try (see the top of the script)" ;;
esac
