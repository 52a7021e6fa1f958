#!/bin/sh
# QEMU runs this once per connection the lab VM opens to 10.0.2.100:4222 (guestfwd), with the
# connection on stdin/stdout: it joins it to the nats-server on 127.0.0.1:$1, and nowhere else.
exec /bin/busybox nc 127.0.0.1 "$1"
