# bitmap-add
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img bitmap --add a.qcow2 b0
qemu-img info a.qcow2 | grep -A6 bitmaps
