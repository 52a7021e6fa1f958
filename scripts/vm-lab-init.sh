#!/bin/sh
# /init of a lab VM (see scripts/vm-lab.sh): mounts the kernel's file systems, loads the USB,
# storage, serial and network drivers, brings up the network and runs `sandbus daemon` joined
# to the nats-server forwarded at 10.0.2.100:4222. Powers the VM off when the daemon exits.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /data
while read -r module; do
  insmod "$module" 2>/dev/null || echo "vm-lab: could not load $module"
done </etc/modules

arg() { sed -n "s/.*sandbus\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
host_id="$(arg host)"
user="$(arg user)"
poll="$(arg poll)"
scan="$(arg scan)"

ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

chmod 0777 /data /tmp
# A shell for tests on the second serial port: one command a line (a test ends each with
# its own marker, e.g. `...; echo "__done__7 $?"`). Each line runs in a subshell: probes the
# test wrote before this port was opened arrive cut (the UART's FIFO is cleared on open), and
# a cut line with a syntax error would end a shell that evaluated it itself. Should the loop
# end anyway (end of input), it starts again.
stty -F /dev/ttyS1 raw -echo
setsid sh -c 'while :; do while read -r line; do (eval "$line"); done; sleep 1; done' \
  </dev/ttyS1 >/dev/ttyS1 2>&1 &
echo "vm-lab: ready, starting sandbus daemon as $user (host $host_id)"
if [ "$poll" = 1 ]; then export SANDBUS_NO_HOTPLUG=true; fi
printf '[devices]\nscan_every = "%s"\n' "${scan:-2s}" >/tmp/sandbus.toml
chmod 0644 /tmp/sandbus.toml
export SANDBUS_DATA_DIR=/data SANDBUS_CONFIG=/tmp/sandbus.toml RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1
if [ "$user" = root ]; then
  /bin/sandbus daemon --nats nats://10.0.2.100:4222 --host-id "$host_id"
else
  su -p -s /bin/sh nobody -c \
    "exec /bin/sandbus daemon --nats nats://10.0.2.100:4222 --host-id $host_id"
fi
echo "vm-lab: sandbus daemon exited with $?"
sync
poweroff -f
